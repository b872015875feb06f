"""The judge's strengths from its comparisons: the Bradley-Terry GLM with a position effect,
logit P(first shown chosen) = c + s_first - s_second, binomial with the quasi-likelihood scale (as statsmodels fits
it). Its dispersion (Pearson chi2 / df) is what actually varies between readings of the judge (the two presentation
orders disagreeing, intransitive triads), so s has a covariance from the comparisons themselves, whatever the
design. Used by pipeline/confounds.py (what a preference tracks), pipeline/active.py (where to compare next) and
pipeline/estimates.py (the active design's estimate).
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
    cov = dispersion * _inverse(_information(first, second, mu * (1 - mu), n, basis))
    return StrengthFit(s=s, cov=basis @ cov[1:, 1:] @ basis.T, position=float(theta[0]), dispersion=dispersion,
                       comparisons=len(keys))


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
