"""Agreement between a model's scores and human ratings (scipy.stats), with bootstrap intervals."""

from __future__ import annotations

import math
import warnings

import numpy as np


def _corr(kind: str):
    """corr(x, y) along the last axis: a batch of resamples in one call (rows of x and y), nan where a row is
    constant. Pearson and Spearman are vectorised (ranks, then Pearson); scipy's per-call overhead was most of
    evaluate's time on small item sets (thousands of resamples)."""
    from scipy import stats

    if kind == "kendall":
        def kendall(x, y, axis=-1):
            x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # constant resamples: nan, dropped below
                out = [stats.kendalltau(a, b).statistic for a, b in zip(x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1]))]
            return np.array(out).reshape(x.shape[:-1]) if x.ndim > 1 else float(out[0])
        return kendall

    def statistic(x, y, axis=-1):
        x, y = np.moveaxis(np.asarray(x, float), axis, -1), np.moveaxis(np.asarray(y, float), axis, -1)
        if kind == "spearman":
            x, y = stats.rankdata(x, axis=-1), stats.rankdata(y, axis=-1)
        x, y = x - x.mean(-1, keepdims=True), y - y.mean(-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (x * y).sum(-1) / np.sqrt((x * x).sum(-1) * (y * y).sum(-1))
        r = np.clip(r, -1.0, 1.0)
        return r if r.ndim else float(r)
    return statistic


def _bootstrap_ci(x, y, kind: str, n_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile interval over items resampled with replacement (paired)."""
    from scipy.stats import bootstrap

    res = bootstrap((x, y), _corr(kind), paired=True, vectorized=True, n_resamples=n_resamples,
                    method="percentile", random_state=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def precision_at_k(scores, human, k: int) -> float:
    k = min(k, len(human))
    top_model = set(np.argsort(-np.asarray(scores), kind="stable")[:k].tolist())
    top_human = set(np.argsort(-np.asarray(human), kind="stable")[:k].tolist())
    return len(top_model & top_human) / k


def agreement(scores, human, k: int, n_resamples: int, seed: int) -> dict:
    """Pearson r, Spearman rho, Kendall tau with p-values, 95% bootstrap CIs (Pearson, Spearman),
    precision@k against the human top-k, and whether the model's top item is in the human top-k."""
    from scipy import stats

    x, y = np.asarray(scores, dtype=float), np.asarray(human, dtype=float)
    out = {"n_items": len(x), "k": k}
    if np.ptp(x) == 0:  # a constant score carries no ranking: no correlation, and its "top k" is item order
        return {**out, "precision_at_k": None, "top1_in_human_topk": None, "kendall_tau": None, "kendall_p": None,
                **{f"{m}_{s}": None for m in ("pearson", "spearman") for s in ("r", "p", "ci_low", "ci_high")}}
    out.update({"precision_at_k": precision_at_k(x, y, k),
                "top1_in_human_topk": bool(int(np.argmax(x)) in set(np.argsort(-y, kind="stable")[:k].tolist()))})
    for kind, fn in (("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        res = fn(x, y)
        low, high = _bootstrap_ci(x, y, kind, n_resamples, seed)
        out.update({f"{kind}_r": float(res.statistic), f"{kind}_p": float(res.pvalue),
                    f"{kind}_ci_low": low, f"{kind}_ci_high": high})
    tau = stats.kendalltau(x, y)
    out.update({"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue)})
    return out


def mean_of(values) -> float | None:
    """The mean of the values that are known (None skipped); None when none is."""
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def mean_ci(values, n_resamples: int, seed: int) -> dict:
    """The mean of per-unit values (e.g. one win rate per held-out prompt) with a 95% percentile bootstrap
    interval over the units."""
    v = np.asarray(values, dtype=float)
    if not v.size:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(len(v), size=(n_resamples, len(v)))].mean(1)
    return {"mean": float(v.mean()), "ci_low": float(np.percentile(means, 2.5)),
            "ci_high": float(np.percentile(means, 97.5)), "n": int(len(v))}


def two_sample_ci(row_means, col_means) -> dict:
    """The mean of W[i, j] over every pair of two independent samples (the answers i of one policy, j of another;
    the mean of the row means) with a 95% t interval whose variance has both samples' parts, Var(row means) / m +
    Var(column means) / n (the two-sample U-statistic's Hoeffding decomposition, as in DeLong's AUC interval), and
    Welch-Satterthwaite degrees of freedom: holding either sample fixed would leave its noise out."""
    from scipy import stats

    r, c = np.asarray(row_means, float), np.asarray(col_means, float)
    mean = float(r.mean()) if r.size else None
    if r.size < 2 or c.size < 2:
        return {"mean": mean, "ci_low": None, "ci_high": None, "n": int(r.size)}
    a, b = r.var(ddof=1) / r.size, c.var(ddof=1) / c.size
    if a + b == 0:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": int(r.size)}
    df = (a + b) ** 2 / ((a * a / (r.size - 1) if a else 0) + (b * b / (c.size - 1) if b else 0))
    half = stats.t.ppf(0.975, df) * math.sqrt(a + b)
    return {"mean": mean, "ci_low": mean - half, "ci_high": mean + half, "n": int(r.size)}


def mean_ci_t(values) -> dict:
    """The mean of per-unit values (prompts, answers) with a 95% Student t interval: with few units a percentile
    bootstrap covers too rarely (5 prompts: ~84% for a nominal 95%, tests/test_winrate.py)."""
    from scipy import stats

    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    if v.size == 1:
        return {"mean": float(v.mean()), "ci_low": None, "ci_high": None, "n": 1}
    if np.ptp(v) == 0:  # every unit agrees: the interval is that value
        return {"mean": float(v[0]), "ci_low": float(v[0]), "ci_high": float(v[0]), "n": int(v.size)}
    low, high = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
    return {"mean": float(v.mean()), "ci_low": float(low), "ci_high": float(high), "n": int(v.size)}


def paired_difference(a, b, human, kind: str, n_resamples: int, seed: int) -> dict:
    """Bootstrap (items resampled jointly) of corr(a, human) - corr(b, human): the difference, a
    95% percentile interval, and a two-sided bootstrap p-value for 'no difference'."""
    corr = _corr(kind)
    a, b, h = (np.asarray(v, dtype=float) for v in (a, b, human))
    i = np.random.default_rng(seed).integers(len(h), size=(n_resamples, len(h)))
    diffs = corr(a[i], h[i]) - corr(b[i], h[i])
    diffs = diffs[np.isfinite(diffs)]
    point = corr(a, h) - corr(b, h)
    if not diffs.size or not np.isfinite(point):
        return {"diff": None, "ci_low": None, "ci_high": None, "p": None}
    p = 2 * min((diffs <= 0).mean(), (diffs >= 0).mean())
    return {"diff": float(point), "ci_low": float(np.percentile(diffs, 2.5)),
            "ci_high": float(np.percentile(diffs, 97.5)), "p": float(min(1.0, p))}
