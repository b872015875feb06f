"""The judge's strengths from its comparisons: the Bradley-Terry GLM with a position effect,
logit P(first shown chosen) = c + s_first - s_second, binomial with the quasi-likelihood scale (as statsmodels fits
it). A judge errs per unordered pair: an intransitive deviation from Bradley–Terry appears in both presentation
orders, so the two readings of a pair are one unit of evidence, not two independent ones. The dispersion of s is
therefore estimated from the pairs (each pair's two readings combined) and tests on s use an F reference with the
pairs' residual degrees of freedom (`resid_df`); tests/test_calibration.py checks the size and coverage against
judges with per-pair deviations and position bias. Used by pipeline/confounds.py (what a preference tracks),
pipeline/active.py (where to compare next) and pipeline/estimates.py (the active design's estimate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class StrengthFit:
    """The judge's log-strengths (mean 0) with their covariance, from the GLM on the comparisons."""
    s: np.ndarray
    cov: np.ndarray
    position: float  # c: log-odds of choosing the first shown answer between equal ones
    dispersion: float  # Pearson chi2 / residual df (quasi-binomial scale)
    comparisons: int
    resid_df: int  # clusters (unordered pairs) - parameters: the denominator df of the F tests on s


def fit_strengths(probs: dict, n: int, tol: float = 1e-10) -> StrengthFit | None:
    """logit P(first chosen) = c + s_first - s_second over every comparison in `probs` ({(first, second): p});
    s sums to 0. The binomial GLM with the quasi-likelihood scale, fitted by IRLS on the design's structure.

    statsmodels' GLM(Binomial).fit(scale="X2") gives the same fit (tests/test_confounds.py checks it), but
    builds the dense comparisons x candidates design: 38 s at N = 237 with every comparison, where this
    uses its two non-zeros per row (a weighted graph Laplacian) and takes milliseconds. None with fewer
    comparisons than parameters + 1."""
    from scipy.linalg import null_space

    with np.errstate(over="ignore"):  # exp(-eta) overflows to inf for a near-certain choice: mu is then 0, as it should be
        return _fit(probs, n, tol, null_space)


def strengths_on_subsets(probs: dict, n: int, masks: np.ndarray, tol: float = 1e-10) -> np.ndarray:
    """fit_strengths' s on each subset of `probs`' comparisons at once: `masks` (S x comparisons, in `probs`' order)
    says which each fit uses, and the S Newton fits run as one stacked solve (split-half consistency fits 20 of
    them per prompt, which one at a time cost ~1 ms each). A subset with fewer than n + 1 comparisons gives
    zeros: no preference."""
    from scipy.linalg import null_space

    masks = np.asarray(masks, dtype=bool)
    out = np.zeros((len(masks), n))
    enough = masks.sum(1) >= n + 1
    if n < 2 or not enough.any():
        return out
    k = np.array(list(probs))
    y = np.clip(np.array(list(probs.values()), dtype=float), 0.0, 1.0)
    basis = null_space(np.ones((1, n)))
    with np.errstate(over="ignore"):
        theta = _newton(k[:, 0], k[:, 1], y, masks[enough].astype(float), n, basis, tol)
    out[enough] = theta[:, 1:] @ basis.T
    return out


def _fit(probs: dict, n: int, tol: float, null_space) -> StrengthFit | None:
    keys = list(probs)
    if n < 2 or len(keys) < n + 1:
        return None
    k = np.array(keys)
    first, second = k[:, 0], k[:, 1]
    y = np.clip(np.array([probs[key] for key in keys], dtype=float), 0.0, 1.0)
    basis = null_space(np.ones((1, n)))  # N x (N-1): s = basis @ gamma sums to 0
    theta = _newton(first, second, y, np.ones((1, len(y))), n, basis, tol)[0]
    s = basis @ theta[1:]
    eta = theta[0] + s[first] - s[second]
    mu = np.clip(1.0 / (1.0 + np.exp(-eta)), 1e-12, 1 - 1e-12)
    dispersion = float(np.sum((y - mu) ** 2 / (mu * (1 - mu))) / (len(y) - n))  # Pearson chi2 / residual df
    info = _information(first, second, (mu * (1 - mu))[None], n, basis)[0]
    phi, clusters = _pair_dispersions(first, second, y - mu, mu * (1 - mu), n)
    scale = np.sqrt(phi)
    bread = _inverse(info)
    cov = bread @ (scale[:, None] * info * scale[None, :]) @ bread
    return StrengthFit(s=s, cov=basis @ cov[1:, 1:] @ basis.T, position=float(theta[0]), dispersion=dispersion,
                       comparisons=len(keys), resid_df=max(clusters - n, 1))


def _newton(first, second, y, weights: np.ndarray, n: int, basis: np.ndarray, tol: float) -> np.ndarray:
    """theta = [c, gamma] (S x n) for each row of `weights` (S x comparisons; 0 leaves a comparison out): Newton,
    which is IRLS for the canonical link. A fit stops moving once its largest step is below tol."""
    theta = np.zeros((len(weights), n))
    moving = np.ones(len(weights), dtype=bool)
    for _ in range(100):
        s = theta[:, 1:] @ basis.T
        eta = theta[:, :1] + s[:, first] - s[:, second]
        mu = np.clip(1.0 / (1.0 + np.exp(-eta)), 1e-12, 1 - 1e-12)
        resid = weights * (y - mu)
        info = _information(first, second, weights * mu * (1 - mu), n, basis)
        score = np.concatenate([resid.sum(1, keepdims=True),
                                (_row_bincount(first, resid, n) - _row_bincount(second, resid, n)) @ basis], axis=1)
        step = np.where(moving[:, None], _solve(info, score), 0.0)
        theta = theta + step
        moving &= np.abs(step).max(1) >= tol
        if not moving.any():
            break
    return theta


def _row_bincount(index: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
    """np.bincount(index, row, size) for each row of `weights` (S x len(index)): S x size."""
    rows = len(weights)
    flat = (np.arange(rows)[:, None] * size + index[None, :]).ravel()
    return np.bincount(flat, weights.ravel(), rows * size).reshape(rows, size)


def _pair_dispersions(first, second, resid, w, n: int) -> tuple[np.ndarray, int]:
    """([phi_c, phi_s, ..., phi_s], the number of pairs): the dispersions of the position and of the strengths,
    each estimated from the unordered pairs (clusters), not from the rows. A pair's two readings (a first, b first)
    share the judge's deviation for that pair, so the strengths' residual is the pair's difference u_ab - u_ba and the position's
    its sum u_ab + u_ba; phi = sum of squares / sum of the pair's weights w_ab + w_ba, with the clusters' residual
    degrees of freedom. The covariance is then bread (D^1/2 info D^1/2) bread: the quasi-likelihood form with one
    dispersion per direction, which an unstructured clustered sandwich (a variance per candidate from its own few
    pairs) only approximates, with a Wald test far above its size at N = 20."""
    lo, hi = np.minimum(first, second), np.maximum(first, second)
    _, g = np.unique(lo * n + hi, return_inverse=True)
    clusters = int(g.max()) + 1
    sign = np.where(first == lo, 1.0, -1.0)
    diff, total, weight = (np.bincount(g, v, clusters) for v in (sign * resid, resid, w))
    phi_s = float(diff @ diff / weight.sum() * clusters / max(clusters - (n - 1), 1))
    phi_c = float(total @ total / weight.sum() * clusters / max(clusters - 1, 1))
    return np.array([phi_c] + [phi_s] * (n - 1)), clusters


def _solve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a x = b for each (symmetric) information matrix in the stack a (S x n x n; b: S x n): a direct solve, least
    squares for a singular one (a design whose graph falls apart). lstsq's SVD costs ~30x a solve at N = 237."""
    try:
        return np.linalg.solve(a, b[..., None])[..., 0]
    except np.linalg.LinAlgError:  # one singular matrix fails the stack: each on its own
        return np.stack([_solve_one(m, v) for m, v in zip(a, b)])


def _solve_one(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def _inverse(a: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a, hermitian=True)


def _information(first, second, w: np.ndarray, n: int, basis: np.ndarray) -> np.ndarray:
    """X'WX for the design [1, e_first - e_second] in the basis [c, gamma], for each row of w (S x comparisons):
    S x n x n."""
    rows = len(w)
    off = _row_bincount(first * n + second, w, n * n).reshape(rows, n, n)
    out_deg, in_deg = _row_bincount(first, w, n), _row_bincount(second, w, n)
    lap = (out_deg + in_deg)[:, :, None] * np.eye(n) - off - off.transpose(0, 2, 1)
    cross = (out_deg - in_deg) @ basis
    out = np.empty((rows, n, n))
    out[:, 0, 0], out[:, 0, 1:], out[:, 1:, 0], out[:, 1:, 1:] = w.sum(1), cross, cross, basis.T @ lap @ basis
    return out


def log_share_sd(cov: np.ndarray, pi: np.ndarray) -> np.ndarray:
    """The SD of log pi_i = s_i - log sum exp(s), to first order s_i - pi.s, from the strengths' covariance."""
    cp = cov @ pi
    return np.sqrt(np.clip(np.diag(cov) - 2 * cp + pi @ cp, 0.0, None))


def softmax_se(q: np.ndarray, cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """p = softmax(q) (a preference distribution, like the other scores) and its delta-method SE."""
    p = np.exp(q - q.max())
    p /= p.sum()
    jac = np.diag(p) - np.outer(p, p)
    return p, np.sqrt(np.clip(np.diag(jac @ cov @ jac.T), 0.0, None))
