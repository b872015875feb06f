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
    """R-hat and bulk ESS (ArviZ) of indicator series 1[x_t = k] for the top-k visited candidates,
    and the largest total-variation distance between two chains' visit histograms."""
    hist = np.stack([np.bincount(row, minlength=n) / len(row) for row in states])
    top = np.argsort(-np.bincount(states.ravel(), minlength=n), kind="stable")[:top_k]
    per = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ's refactor notice, constant-series warnings
        import arviz

        for k in top:
            series = (states == k).astype(float)
            rhat = float(arviz.rhat(series)) if states.shape[0] > 1 else float("nan")
            per.append({"id": int(k), "rhat": rhat, "ess_bulk": float(arviz.ess(series, method="bulk"))})
    pair_tv = [total_variation(hist[a], hist[b]) for a in range(len(hist)) for b in range(a + 1, len(hist))]
    return {"per_candidate": per, "max_rhat": float(np.nanmax([p["rhat"] for p in per])) if per else None,
            "min_ess_bulk": float(min(p["ess_bulk"] for p in per)) if per else None,
            "max_between_chain_tv": max(pair_tv) if pair_tv else None}


def mixing_warnings(diag: dict, rhat_max: float = 1.1, ess_min: float = 100.0, tv_max: float = 0.5) -> list[str]:
    out = []
    if diag["max_rhat"] is not None and np.isfinite(diag["max_rhat"]) and diag["max_rhat"] > rhat_max:
        out.append(f"R-hat {diag['max_rhat']:.3f} > {rhat_max}")
    if diag["min_ess_bulk"] is not None and diag["min_ess_bulk"] < ess_min:
        out.append(f"ESS {diag['min_ess_bulk']:.0f} < {ess_min:.0f}")
    if diag["max_between_chain_tv"] is not None and diag["max_between_chain_tv"] > tv_max:
        out.append(f"between-chain TV {diag['max_between_chain_tv']:.2f} > {tv_max}")
    return out
