import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.metrics import agreement, paired_difference, precision_at_k
from pipeline.ratings import load_ratings, noise_ceiling, select_items
from pipeline.tables import TableError


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


def test_noise_ceiling_on_synthetic_raters():
    """Item means of m raters with noise sd s have reliability var(t) / (var(t) + s^2 / m)."""
    rng = np.random.default_rng(0)
    n_items, n_raters, s = 60, 40, 3.0
    truth = rng.normal(size=n_items)
    long = pd.DataFrame([(str(i), r, truth[i] + s * rng.normal()) for i in range(n_items) for r in range(n_raters)],
                        columns=["item", "rater", "rating"])
    expected = truth.var() / (truth.var() + s ** 2 / n_raters)
    got = noise_ceiling(long, [str(i) for i in range(n_items)], seed=0)
    assert got["spearman_brown"] == pytest.approx(expected, abs=0.06)


def write(tmp_path, frame, name="r.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_json(path, orient="records", lines=True)
    return str(path)


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"text": ["a"] * 3}), "lacks column(s) ['rating']"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(12)], "rating": ["x"] + [1] * 11}), "must be numeric, found 'x'"),
    (pd.DataFrame({"text": ["same"] * 12, "rating": range(12)}), "duplicate item 'same'"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(5)], "rating": range(5)}), "has 5 items; at least 10"),
])
def test_ratings_file_validation(tmp_path, frame, message):
    with pytest.raises(TableError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_ratings(write(tmp_path, frame))


def test_missing_and_unreadable_ratings_files(tmp_path):
    with pytest.raises(TableError, match="does not exist"):
        load_ratings(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(TableError, match="could not be read"):
        load_ratings(str(tmp_path / "bad.parquet"))


def test_long_ratings_are_averaged(tmp_path):
    rows = [{"item": f"joke {i}", "rater": r, "rating": i + r} for i in range(12) for r in range(3)]
    ratings = load_ratings(write(tmp_path, pd.DataFrame(rows), "long.jsonl"))
    item = ratings.items.set_index("id").loc["joke 4"]
    assert item["rating"] == 5.0 and item["n_ratings"] == 3 and item["text"] == "joke 4"
    assert ratings.long is not None


def test_jester_bundle_and_subset():
    jester = load_ratings("jester")
    assert len(jester.items) == 100 and "Eigentaste" in jester.citation
    subset = select_items(jester.items, max_items=20, max_chars=200)
    assert len(subset) == 20 and subset["text"].str.len().max() <= 200
    assert subset["rating"].max() - subset["rating"].min() > 4  # spread over the range
    assert subset.equals(select_items(jester.items, max_items=20, max_chars=200))
