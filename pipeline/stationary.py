"""Three views of one judge, and whether the chains agree: the exact stationary distribution of the
spMCMC chain, a Bradley–Terry fit, and convergence diagnostics (R-hat, ESS, between-chain TV).

With a symmetric proposal and Barker acceptance a(i->j) = P(j chosen over i), the chain's
transition matrix is T[i,j] = a(i->j)/(N-1) for j != i and T[i,i] = 1 - sum_j T[i,j]. Its
stationary distribution is what the chains converge to, whether or not the choices are transitive.
"""

from __future__ import annotations

import warnings

import numpy as np


def p_first_matrix(probs: dict, n: int) -> np.ndarray:
    """pf[i, j] = P(i chosen | i shown first, j second); NaN where not computed."""
    pf = np.full((n, n), np.nan)
    if probs:
        keys = np.array(list(probs.keys()), dtype=np.int64)
        pf[keys[:, 0], keys[:, 1]] = list(probs.values())
    return pf


def acceptance_matrix(pf: np.ndarray, order: str) -> np.ndarray:
    """A[i, j] = P(the chain at i accepts a proposal j). `random` has the same law as `both`:
    each order is shown half the time."""
    if order == "fixed":
        a = 1.0 - pf  # current (i) shown first
    else:
        a = 0.5 * ((1.0 - pf) + pf.T)
    np.fill_diagonal(a, 0.0)
    return a


def transition_matrix(accept: np.ndarray) -> np.ndarray:
    n = accept.shape[0]
    t = accept / (n - 1)
    np.fill_diagonal(t, 0.0)
    np.fill_diagonal(t, 1.0 - t.sum(axis=1))
    return t


def stationary_distribution(t: np.ndarray) -> np.ndarray:
    """pi with pi T = pi, sum(pi) = 1 (one linear solve; T is irreducible when all a(i->j) > 0)."""
    from scipy.linalg import solve

    n = t.shape[0]
    m = t.T - np.eye(n)
    m[-1, :] = 1.0  # replace one (redundant) balance equation by the normalisation
    b = np.zeros(n)
    b[-1] = 1.0
    pi = solve(m, b)
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def exact_stationary(probs: dict, n: int, order: str) -> np.ndarray:
    pf = p_first_matrix(probs, n)
    off = ~np.eye(n, dtype=bool)
    if np.isnan(pf[off]).any():
        raise ValueError("exact stationary distribution needs every ordered comparison")
    return stationary_distribution(transition_matrix(acceptance_matrix(pf, order)))


def bradley_terry(probs: dict, n: int, alpha: float) -> np.ndarray:
    """Bradley–Terry strengths (normalised to sum 1) from soft wins: each computed comparison
    adds P(first chosen) to first-beats-second and the rest to second-beats-first (choix, ILSR)."""
    import choix

    wins = np.zeros((n, n))
    for (f, s), p in probs.items():
        wins[f, s] += p
        wins[s, f] += 1.0 - p
    params = choix.ilsr_pairwise_dense(wins, alpha=alpha)
    w = np.exp(params - params.max())
    return w / w.sum()


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
