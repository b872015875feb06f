"""Diagnostics of the judge and the chains: intransitivity (cyclic triads), whether the chains agree (R-hat, ESS,
between-chain TV) and the distance between two distributions. The estimates themselves, the stationary
solvers among them: estimates.py."""

from __future__ import annotations

import warnings

import numpy as np

from pipeline.estimates import p_first_matrix


def intransitivity(probs: dict, n: int) -> dict:
    """Share of cyclic triads among fully compared triples, on the order-averaged majority choice."""
    pf = p_first_matrix(probs, n)
    both = np.where(np.isnan(pf), np.nan, pf)
    # P(i over j) averaged over the orders computed: i first (pf[i,j]) and i second (1 - pf[j,i])
    views = np.stack([both, 1.0 - both.T])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        p_over = np.nanmean(views, axis=0)
    known = ~np.isnan(p_over)
    np.fill_diagonal(known, False)
    beats = (np.nan_to_num(p_over) > 0.5) & known
    k = known.astype(float)
    a = beats.astype(float)
    triples = np.trace(k @ k @ k) / 6.0
    cycles = np.trace(a @ a @ a) / 3.0
    return {"compared_triples": int(round(triples)), "cyclic_triads": int(round(cycles)),
            "intransitive_share": float(cycles / triples) if triples else None}


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(np.asarray(p) - np.asarray(q)).sum())


def chain_diagnostics(states: np.ndarray, n: int, top_k: int) -> dict:
    """R-hat and bulk ESS (ArviZ's, rank_rhat_and_bulk_ess) of indicator series 1[x_t = k] for the top-k visited
    candidates, and the largest total-variation distance between two chains' visit histograms."""
    hist = np.stack([np.bincount(row, minlength=n) / len(row) for row in states])
    top = np.argsort(-np.bincount(states.ravel(), minlength=n), kind="stable")[:top_k]
    rhat, ess = rank_rhat_and_bulk_ess((states[None] == top[:, None, None]).astype(float))
    per = [{"id": int(k), "rhat": float(r), "ess_bulk": float(e)} for k, r, e in zip(top, rhat, ess)]
    pair_tv = [total_variation(hist[a], hist[b]) for a in range(len(hist)) for b in range(a + 1, len(hist))]
    return {"per_candidate": per, "max_rhat": float(np.nanmax(rhat)) if per else None,
            "min_ess_bulk": float(min(ess)) if per else None,
            "max_between_chain_tv": max(pair_tv) if pair_tv else None}


def rank_rhat_and_bulk_ess(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """arviz.rhat (rank-normalised split R-hat, the larger of bulk and tail) and arviz.ess(method="bulk") of each
    of K series (K x chains x draws) at once. ArviZ takes one series per call, ~1 ms each (its rank and normal
    quantile machinery), 16 calls a prompt; this is its arithmetic (arviz/stats/diagnostics.py: _rhat_rank,
    _ess_bulk) on the stack, and tests/test_diagnostics.py holds it to arviz's values. NaN where ArviZ gives NaN:
    fewer than 4 draws, a single chain for R-hat, a constant series' R-hat."""
    k, chains, draws = series.shape
    if draws < 4:
        return np.full(k, np.nan), np.full(k, np.nan)
    half = draws // 2
    split = np.concatenate([series[:, :, :half], series[:, :, -half:]], axis=1)  # K x 2 chains x half
    folded = np.abs(split - np.median(split.reshape(k, -1), axis=1)[:, None, None])
    bulk, tail = _rhat(_z_scale(split)), _rhat(_z_scale(folded))
    rhat = np.where(tail > bulk, tail, bulk) if chains > 1 else np.full(k, np.nan)  # Python's max(bulk, tail)
    return rhat, _ess(_z_scale(split))


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Each series' values replaced by the normal quantiles of their pooled ranks (Blom's offset 3/8)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    flat = x.reshape(len(x), -1)
    return ndtri((rankdata(flat, axis=1) - 3 / 8) / (flat.shape[1] - 2 * 3 / 8 + 1)).reshape(x.shape)


def _rhat(x: np.ndarray) -> np.ndarray:
    draws = x.shape[2]
    between = draws * np.var(x.mean(2), axis=1, ddof=1)
    within = np.var(x, axis=2, ddof=1).mean(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((between / within + draws - 1) / draws)


def _ess(x: np.ndarray) -> np.ndarray:
    """Bulk ESS of each z-scaled split series: the autocovariances of all at once, then Geyer's initial positive
    and monotone sequences per series."""
    from scipy.fftpack import next_fast_len  # ArviZ's FFT length

    k, chains, draws = x.shape
    length = next_fast_len(2 * draws)
    spec = np.fft.rfft(x - x.mean(2, keepdims=True), n=length, axis=2)
    acov = np.fft.irfft(spec * np.conjugate(spec), n=length, axis=2)[:, :, :draws] / draws
    mean_var = acov[:, :, 0].mean(1) * draws / (draws - 1.0)
    var_plus = mean_var * (draws - 1.0) / draws + (np.var(x.mean(2), axis=1, ddof=1) if chains > 1 else 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var[:, None] - acov.mean(1)) / var_plus[:, None]  # K x lags
    constant = np.ptp(x.reshape(k, -1), axis=1) < np.finfo(float).resolution
    return np.array([chains * draws if flat else _geyer(r.tolist(), chains * draws) for r, flat in zip(rho, constant)])


def _geyer(rho: list[float], size: int) -> float:
    """ESS from one series' autocorrelations (ArviZ's _ess after its autocovariances, step for step)."""
    draws = len(rho)
    out = [0.0] * draws
    even, odd = 1.0, rho[1]
    out[0], out[1] = even, odd
    t = 1
    while t < draws - 3 and even + odd > 0.0:  # the initial positive sequence
        even, odd = rho[t + 1], rho[t + 2]
        if even + odd >= 0:
            out[t + 1], out[t + 2] = even, odd
        t += 2
    max_t = t - 2
    if even > 0:
        out[max_t + 1] = even
    t = 1
    while t <= max_t - 2:  # the initial monotone sequence
        if out[t + 1] + out[t + 2] > out[t - 1] + out[t]:
            out[t + 1] = out[t + 2] = (out[t - 1] + out[t]) / 2.0
        t += 2
    tau = -1.0 + 2.0 * sum(out[:max_t + 1]) + sum(out[max_t + 1:max_t + 2])
    return float("nan") if np.isnan(out).any() else size / max(tau, 1 / np.log10(size))


def mixing_warnings(diag: dict, rhat_max: float = 1.1, ess_min: float = 100.0, tv_max: float = 0.5) -> list[str]:
    out = []
    if diag["max_rhat"] is not None and np.isfinite(diag["max_rhat"]) and diag["max_rhat"] > rhat_max:
        out.append(f"R-hat {diag['max_rhat']:.3f} > {rhat_max}")
    if diag["min_ess_bulk"] is not None and diag["min_ess_bulk"] < ess_min:
        out.append(f"ESS {diag['min_ess_bulk']:.0f} < {ess_min:.0f}")
    if diag["max_between_chain_tv"] is not None and diag["max_between_chain_tv"] > tv_max:
        out.append(f"between-chain TV {diag['max_between_chain_tv']:.2f} > {tv_max}")
    return out
