"""Agreement with people within each prompt of a human-rated prompt set, pooled over prompts.

A correlation across prompts would mostly measure which prompt is easier to be funny about; the paper's
question (does an evaluator order one prompt's answers as people do?) is asked within each prompt, then pooled:
the mean within-prompt correlation with a Student t interval over prompts (pipeline/metrics.py: mean_ci_t; a
percentile bootstrap over a handful of units covers too rarely).

The human noise ceiling of a prompt is the correlation the item's true mean rating would reach with the observed
means: √reliability, the reliability being the Spearman–Brown corrected split-half correlation of the means. With
per-rater data it is measured (raters split at random, pipeline/ratings.py: noise_ceiling); with only means and
vote counts it is parametric: each vote is taken as binomial on the rating scale [lo, hi] around the item's mean,
Var(vote) = (m - lo)(hi - m) / (hi - lo) (on 1-3, SD 0.5 at a mean of 1.3), so the mean's error variance is
Var(vote) / n and reliability = 1 - mean(error variance) / Var(means): the expected split-half, Spearman–Brown
corrected, without drawing splits (tests/test_within_prompts.py checks it against simulated votes).
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.metrics import _corr, mean_ci_t, mean_of
from pipeline.ratings import noise_ceiling

KINDS = ("pearson", "spearman", "kendall")


def rating_scale(items, given: list[float] | None) -> tuple[float, float]:
    """The rating scale's ends: as set, else the whole numbers around the observed means (1-3 for the captions)."""
    if given:
        return float(given[0]), float(given[1])
    r = items["rating"].to_numpy(dtype=float)
    return float(math.floor(r.min())), float(math.ceil(r.max()))


def vote_variance(means: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """One vote's variance under binomial votes on the scale, given the item's mean."""
    lo, hi = scale
    m = np.clip(means, lo, hi)
    return (m - lo) * (hi - m) / max(hi - lo, 1e-12)


def item_se(items, long, scale: tuple[float, float]) -> np.ndarray | None:
    """The standard error of each item's mean rating, never 0: the votes' variance over n, with one prior vote at
    each end of the scale added to the variance (an add-one floor: a caption every voter called unfunny still has
    rating noise). From the raters' own ratings in a long file (an item with one rating gets NaN: it is left out
    of pair agreement), else from per-category vote counts (`votes_<rating>`, or the caption contests' funny /
    somewhat_funny / unfunny), else parametric from the mean and the vote count; None when none is known."""
    from pipeline.ratings import vote_columns

    lo, hi = scale
    if long is not None:
        g = long.groupby("item")["rating"]
        n, total, squares = (v.reindex(items["id"]).to_numpy(dtype=float) for v in (g.size(), g.sum(),
                                                                                    g.apply(lambda r: (r ** 2).sum())))
        se = np.sqrt(_floored(n, total + lo + hi, squares + lo ** 2 + hi ** 2) / n)
        return np.where(n >= 2, se, np.nan)
    votes = vote_columns(items.columns)
    if votes:
        values = np.array(list(votes.values()))
        counts = items[list(votes)].to_numpy(dtype=float) + 1.0  # one prior vote per category
        m = counts.sum(1)
        var = (counts @ values ** 2 - (counts @ values) ** 2 / m) / (m - 1)
        return np.sqrt(var / (m - len(values)))
    counts = items["n_ratings"].to_numpy(dtype=float)
    if np.isnan(counts).any():
        return None
    means = (items["rating"].to_numpy(dtype=float) * counts + lo + hi) / (counts + 2)  # the two prior votes
    return np.sqrt(vote_variance(means, scale) / counts)


def _floored(n, total, squares) -> np.ndarray:
    """The variance of n votes together with the two prior votes already in `total` and `squares` (n + 2 values)."""
    m = n + 2
    return np.maximum(squares - total ** 2 / m, 0.0) / (m - 1)


def parametric_reliability(means: np.ndarray, counts: np.ndarray, scale: tuple[float, float]) -> float | None:
    """The expected Spearman–Brown split-half reliability of the means, from means and vote counts alone."""
    means, counts = np.asarray(means, float), np.asarray(counts, float)
    if len(means) < 3 or np.isnan(counts).any():
        return None
    error = float(np.mean(vote_variance(means, scale) / counts))
    return 1.0 - error / float(np.var(means, ddof=1))


def prompt_ceiling(items, long, scale: tuple[float, float], seed: int) -> dict:
    """One prompt's ceiling: kind (split-half over raters, parametric from vote counts, or unknown), reliability
    and the ceiling √max(reliability, 0) on a correlation with the human means."""
    if long is not None:
        measured = noise_ceiling(long, items["id"].tolist(), seed)
        rel, kind = (measured["spearman_brown"] if measured else None), "split-half over raters"
    else:
        rel = parametric_reliability(items["rating"], items["n_ratings"], scale)
        kind = "parametric split-half from vote counts" if rel is not None else "unknown (no vote counts)"
    ceiling = None if rel is None else math.sqrt(max(rel, 0.0))
    # Kendall's tau has its own scale: for a bivariate normal tau = (2 / pi) arcsin(r), so its ceiling is lower
    return {"ceiling_kind": kind, "reliability": rel, "ceiling": ceiling,
            "kendall_ceiling": None if ceiling is None else 2 / math.pi * math.asin(ceiling)}


def correlations(score, human) -> dict:
    """Pearson, Spearman and Kendall of one prompt's scores with its human means (None for a constant score)."""
    x, y = np.asarray(score, float), np.asarray(human, float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return {k: None for k in KINDS}
    return {k: float(_corr(k)(x, y)) for k in KINDS}


def pair_agreement(score, human, se) -> tuple[float, int]:
    """Among the item pairs whose human means differ by more than their noise (|difference| > 1.96 × the
    difference's standard error; every pair with different means when the noise is unknown), how many the score
    orders the same way (a tie counts half): (agreements, pairs)."""
    x, y = np.asarray(score, float), np.asarray(human, float)
    i, j = np.triu_indices(len(y), 1)
    dh = y[i] - y[j]
    noise = 0.0 if se is None else 1.96 * np.sqrt(np.asarray(se)[i] ** 2 + np.asarray(se)[j] ** 2)
    resolved = np.abs(dh) > noise  # False where an SE is NaN (an item with one rating: no noise estimate)
    ds = np.sign(x[i] - x[j])[resolved]
    agree = np.where(ds == 0, 0.5, (ds == np.sign(dh[resolved])).astype(float))
    return float(agree.sum()), int(resolved.sum())


def prompt_rows(prompts: list[dict], scores: dict) -> list[dict]:
    """Per (model, evaluator, prompt): n_items, the three correlations and the pair agreement. `prompts` holds each
    prompt's prompt_id, rows (item positions), human means, se, ceiling figures and in_training flag."""
    rows = []
    for model, per in scores.items():
        for evaluator, s in per.items():
            for p in prompts:
                x = np.asarray(s)[p["rows"]]
                agree, pairs = pair_agreement(x, p["human"], p["se"])
                rows.append({"model": model, "evaluator": evaluator, "prompt_id": p["prompt_id"],
                             "n_items": len(x), **correlations(x, p["human"]),
                             "pair_agreement": agree / pairs if pairs else None, "resolved_pairs": pairs,
                             "ceiling": p["ceiling"], "kendall_ceiling": p.get("kendall_ceiling"),
                             "in_training": p["in_training"]})
    return rows


def pooled(rows: list[dict], top_k: int) -> list[dict]:
    """One row per (model, evaluator): each correlation's mean over prompts with its t interval and one-sample
    t-test p against 0, the mean pair agreement with its interval, and the mean ceiling. Shaped as
    pipeline/metrics.py: agreement's rows (the report, W&B and the rounds table read either)."""
    out = []
    for key in dict.fromkeys((r["model"], r["evaluator"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["evaluator"]) == key]
        row = {"model": key[0], "evaluator": key[1], "n_items": sum(r["n_items"] for r in mine), "k": top_k,
               "n_prompts": len(mine), "precision_at_k": None, "top1_in_human_topk": None}
        for kind in KINDS:
            ci = correlation_ci([r[kind] for r in mine])
            name = "kendall_tau" if kind == "kendall" else f"{kind}_r"
            row.update({name: ci["mean"], f"{kind}_p": _t_p([r[kind] for r in mine]),
                        f"{kind}_ci_low": ci["ci_low"], f"{kind}_ci_high": ci["ci_high"]})
        agree = mean_ci_t([r["pair_agreement"] for r in mine])
        ceilings = [r["ceiling"] for r in mine if r["ceiling"] is not None]
        row["mean_kendall_ceiling"] = mean_of([r["kendall_ceiling"] for r in mine if r.get("kendall_ceiling") is not None])
        row.update({"pair_agreement": agree["mean"], "pair_agreement_ci_low": agree["ci_low"],
                    "pair_agreement_ci_high": agree["ci_high"], "mean_ceiling": mean_of(ceilings)})
        out.append(row)
    return out


MIN_PROMPTS_FOR_CI = 3  # the t interval on 1 df is 12.7 standard errors wide: it says nothing


def correlation_ci(values) -> dict:
    """The mean of per-prompt correlations with its 95% t interval over prompts, kept within [-1, 1] (the mean of
    correlations cannot leave it, so clipping loses no coverage); no interval from fewer than MIN_PROMPTS_FOR_CI."""
    ci = mean_ci_t(values)
    if ci["n"] < MIN_PROMPTS_FOR_CI:
        return {**ci, "ci_low": None, "ci_high": None}
    return {**ci, "ci_low": max(ci["ci_low"], -1.0), "ci_high": min(ci["ci_high"], 1.0)}


def paired_differences(rows: list[dict], a: str, b: str, model_a: str, model_b: str, kind: str = "spearman",
                       keep=lambda r: True) -> dict:
    """The mean over prompts of corr(a) - corr(b) within each prompt, with its t interval and t-test p: prompts are
    the units, so the interval holds for the prompts given (items are not independent across evaluators)."""
    per = {}
    for r in rows:
        if keep(r) and r[kind] is not None and ((r["evaluator"], r["model"]) in ((a, model_a), (b, model_b))):
            per.setdefault(r["prompt_id"], {})[r["evaluator"], r["model"]] = r[kind]
    both = [v for v in per.values() if len(v) == 2]
    diffs = [v[a, model_a] - v[b, model_b] for v in both]
    ci = mean_ci_t(diffs)
    return {"mean_a": mean_of([v[a, model_a] for v in both]), "mean_b": mean_of([v[b, model_b] for v in both]),
            "diff": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"], "p": _t_p(diffs),
            "n_prompts": len(diffs)}


def _t_p(values) -> float | None:
    from scipy import stats

    v = np.array([x for x in values if x is not None], dtype=float)
    if v.size < 2 or np.ptp(v) == 0:
        return None
    return float(stats.ttest_1samp(v, 0.0).pvalue)

