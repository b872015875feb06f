"""pipeline/metrics.py: agreement with human ratings (scipy), bootstrap and paired-difference intervals, P@k."""

import numpy as np
import pytest
from scipy import stats

from pipeline.metrics import agreement, paired_difference, precision_at_k


def correlated(n, rho=0.5, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    return x, rho * x + np.sqrt(1 - rho ** 2) * rng.normal(size=n)


def test_agreement_matches_scipy():
    x, y = correlated(40)
    a = agreement(x, y, k=5, n_resamples=500, seed=0)
    assert a["pearson_r"] == pytest.approx(stats.pearsonr(x, y).statistic)
    assert a["pearson_p"] == pytest.approx(stats.pearsonr(x, y).pvalue)
    assert a["spearman_r"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert a["kendall_tau"] == pytest.approx(stats.kendalltau(x, y).statistic)
    assert a["n_items"] == 40


def test_bootstrap_ci_contains_estimate_and_shrinks():
    small = agreement(*correlated(20), k=5, n_resamples=1000, seed=0)
    large = agreement(*correlated(400), k=5, n_resamples=1000, seed=0)
    for a in (small, large):
        assert a["pearson_ci_low"] <= a["pearson_r"] <= a["pearson_ci_high"]
        assert a["spearman_ci_low"] <= a["spearman_r"] <= a["spearman_ci_high"]
    width = lambda a: a["pearson_ci_high"] - a["pearson_ci_low"]  # noqa: E731
    assert width(large) < width(small) / 2


def test_precision_at_k_and_constant_scores():
    human = np.arange(10.0)
    assert precision_at_k(human, human, 3) == 1.0 and precision_at_k(-human, human, 3) == 0.0
    const = agreement(np.ones(10), human, k=3, n_resamples=200, seed=0)
    assert const["pearson_r"] is None and const["spearman_r"] is None
    assert const["precision_at_k"] is None and const["top1_in_human_topk"] is None  # no ranking to take a top k of


def test_paired_difference():
    x, h = correlated(80, rho=0.8)
    noise = np.random.default_rng(5).normal(size=80)
    better = paired_difference(x, noise, h, "spearman", 500, 0)
    assert better["ci_low"] > 0 and better["p"] < 0.01
    same = paired_difference(x, x, h, "spearman", 200, 0)
    assert same["diff"] == 0.0


