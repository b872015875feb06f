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


def _fit(probs: dict, n: int, tol: float, null_space) -> StrengthFit | None:
    keys = list(probs)
    if n < 2 or len(keys) < n + 1:
        return None
    k = np.array(keys)
    first, second = k[:, 0], k[:, 1]
    y = np.clip(np.array([probs[key] for key in keys], dtype=float), 0.0, 1.0)
    basis = null_space(np.ones((1, n)))  # N x (N-1): s = basis @ gamma sums to 0
    theta, s = np.zeros(n), np.zeros(n)  # theta = [c, gamma]
    for _ in range(100):
        eta = theta[0] + s[first] - s[second]
        mu = np.clip(1.0 / (1.0 + np.exp(-eta)), 1e-12, 1 - 1e-12)
        w = mu * (1 - mu)
        info = _information(first, second, w, n, basis)
        score = np.concatenate([[np.sum(y - mu)], basis.T @ (np.bincount(first, y - mu, n) - np.bincount(second, y - mu, n))])
        step = _solve(info, score)  # Newton = IRLS for the canonical link
        theta = theta + step
        s = basis @ theta[1:]
        if np.abs(step).max() < tol:
            break
    eta = theta[0] + s[first] - s[second]
    mu = np.clip(1.0 / (1.0 + np.exp(-eta)), 1e-12, 1 - 1e-12)
    dispersion = float(np.sum((y - mu) ** 2 / (mu * (1 - mu))) / (len(y) - n))  # Pearson chi2 / residual df
    info = _information(first, second, mu * (1 - mu), n, basis)
    phi, clusters = _pair_dispersions(first, second, y - mu, mu * (1 - mu), n)
    scale = np.sqrt(phi)
    bread = _inverse(info)
    cov = bread @ (scale[:, None] * info * scale[None, :]) @ bread
    return StrengthFit(s=s, cov=basis @ cov[1:, 1:] @ basis.T, position=float(theta[0]), dispersion=dispersion,
                       comparisons=len(keys), resid_df=max(clusters - n, 1))


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
    """a x = b for the (symmetric) information matrix: a direct solve, least squares where it is singular (a
    design whose graph falls apart). lstsq's SVD costs ~30x a solve at N = 237."""
    try:
        return np.linalg.solve(a, b)
    except np.linalg.LinAlgError:
        return np.linalg.lstsq(a, b, rcond=None)[0]


def _inverse(a: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.inv(a)
    except np.linalg.LinAlgError:
        return np.linalg.pinv(a, hermitian=True)


def _information(first, second, w, n: int, basis: np.ndarray) -> np.ndarray:
    """X'WX for the design [1, e_first - e_second] in the basis [c, gamma]."""
    off = np.bincount(first * n + second, w, n * n).reshape(n, n)
    lap = np.diag(np.bincount(first, w, n) + np.bincount(second, w, n)) - off - off.T
    cross = basis.T @ (np.bincount(first, w, n) - np.bincount(second, w, n))
    out = np.empty((n, n))
    out[0, 0], out[0, 1:], out[1:, 0], out[1:, 1:] = w.sum(), cross, cross, basis.T @ lap @ basis
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
