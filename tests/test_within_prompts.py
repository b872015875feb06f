"""pipeline/within_prompts.py and the evaluate stage on a human-rated prompt set: every evaluator scored within each
prompt against planted per-prompt truth, pooled over prompts; the parametric noise ceiling against simulated votes;
the ratings file's prompt columns; the real command end to end."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import TOPICS, run_main, stage_paths
from pipeline import within_prompts as wp
from pipeline.ratings import load_ratings, select_prompt_items
from pipeline.tables import TableError

SCALE = (1.0, 3.0)


def simulated_prompt(rng, n_items=30, spread=(1.05, 2.2), votes=(20, 80)):
    """One contest: true mean ratings, binomial votes on 1-3 from per-rater data (rater k rates every item with
    more than k votes), the observed means and counts."""
    truth = rng.uniform(*spread, n_items)
    counts = rng.integers(*votes, n_items)
    long = [{"item": str(i), "rater": k, "rating": 1.0 + rng.binomial(2, (t - 1) / 2)}
            for i, (t, n) in enumerate(zip(truth, counts)) for k in range(n)]
    long = pd.DataFrame(long)
    means = long.groupby("item")["rating"].mean().reindex([str(i) for i in range(n_items)]).to_numpy()
    items = pd.DataFrame({"id": [str(i) for i in range(n_items)], "rating": means, "n_ratings": counts.astype(float)})
    return truth, items, long


def prompts_of(rng, n_prompts, **kw):
    out, lo = [], 0
    for k in range(n_prompts):
        truth, items, long = simulated_prompt(rng, **kw)
        se = wp.item_se(items, None, SCALE)
        out.append({"prompt_id": str(k), "rows": list(range(lo, lo + len(items))), "human": items["rating"].to_numpy(),
                    "se": se, "truth": truth, "in_training": False, **wp.prompt_ceiling(items, None, SCALE, 0)})
        lo += len(items)
    return out


def test_parametric_ceiling_matches_simulated_votes():
    """From means and vote counts alone, the ceiling is the one the votes give: the true means' correlation with
    the observed means, and the split-half over raters of the same votes."""
    rng = np.random.default_rng(1)
    parametric, split_half, true = [], [], []
    for _ in range(30):
        truth, items, long = simulated_prompt(rng, spread=(1.05, 1.6), votes=(15, 40))  # noisy: ceilings ~0.8-0.9
        parametric.append(wp.prompt_ceiling(items, None, SCALE, 0)["ceiling"])
        split_half.append(wp.prompt_ceiling(items, long, SCALE, 0)["ceiling"])
        true.append(np.corrcoef(truth, items["rating"])[0, 1])
    assert 0.6 < np.mean(true) < 0.95  # a regime where the ceiling matters
    assert abs(np.mean(parametric) - np.mean(true)) < 0.03
    assert abs(np.mean(parametric) - np.mean(split_half)) < 0.03
    assert wp.prompt_ceiling(items, long, SCALE, 0)["ceiling_kind"] == "split-half over raters"
    assert wp.prompt_ceiling(items.assign(n_ratings=np.nan), None, SCALE, 0)["ceiling"] is None


def test_vote_variance_is_binomial_on_the_scale():
    assert wp.vote_variance(np.array([1.0, 2.0, 3.0]), SCALE).tolist() == [0.0, 0.5, 0.0]
    assert wp.vote_variance(np.array([1.3]), SCALE)[0] == pytest.approx(0.255)  # SD 0.5, as the data's README says


def test_an_evaluator_that_knows_the_truth_reaches_the_ceiling_and_random_is_zero():
    rng = np.random.default_rng(2)
    prompts = prompts_of(rng, 16, spread=(1.05, 1.6), votes=(15, 40))
    truth = np.concatenate([p["truth"] for p in prompts])
    scores = {"base": {"truth": truth, "random": rng.random(len(truth))}}
    pooled = {r["evaluator"]: r for r in wp.pooled(wp.prompt_rows(prompts, scores), 5)}
    t, r = pooled["truth"], pooled["random"]
    assert t["n_prompts"] == 16 and t["mean_ceiling"] < 0.95
    assert t["pearson_ci_low"] <= t["mean_ceiling"] <= t["pearson_ci_high"]
    assert abs(t["pearson_r"] - t["mean_ceiling"]) < 0.03
    assert r["spearman_ci_low"] < 0 < r["spearman_ci_high"] and r["pearson_ci_low"] < 0 < r["pearson_ci_high"]
    assert t["pair_agreement"] > 0.97  # the pairs people resolve, the truth orders right
    assert r["pair_agreement_ci_low"] < 0.5 < r["pair_agreement_ci_high"]
    d = wp.paired_differences(wp.prompt_rows(prompts, scores), "truth", "random", "base", "base")
    assert d["n_prompts"] == 16 and d["ci_low"] > 0 and d["p"] < 0.001


def test_the_pooled_interval_covers_the_mean_within_prompt_correlation():
    """With 6 prompts the t interval over prompts covers the expected within-prompt Spearman about 95% of the time
    (the expectation taken from 4,000 simulated prompts)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)

    def prompt_rho():
        human = rng.normal(size=12)
        return spearmanr(human + rng.normal(scale=1.5, size=12), human).statistic

    expected = np.mean([prompt_rho() for _ in range(4000)])
    covered = []
    for _ in range(400):
        rows = [{"model": "base", "evaluator": "e", "prompt_id": str(k), "n_items": 12, "spearman": prompt_rho(),
                 "pearson": 0.0, "kendall": 0.0, "pair_agreement": 0.5, "ceiling": None} for k in range(6)]
        p = wp.pooled(rows, 5)[0]
        covered.append(p["spearman_ci_low"] <= expected <= p["spearman_ci_high"])
    assert 0.91 <= np.mean(covered) <= 0.99


@pytest.mark.parametrize("rhos", [[0.95, 0.2, 0.9], [0.9, -0.6, 0.99, 0.1]])
def test_the_pooled_interval_stays_within_minus_one_and_one(rhos):
    """A t interval over a few prompts whose correlations differ much reaches past +-1 (it read [-1.27, +1.63]);
    the mean of correlations cannot, so the interval is clipped there, and from 2 prompts there is none."""
    def rows(values):
        return [{"model": "base", "evaluator": "e", "prompt_id": str(k), "n_items": 12, "spearman": r,
                 "pearson": r, "kendall": r, "pair_agreement": 0.5, "ceiling": None} for k, r in enumerate(values)]

    p = wp.pooled(rows(rhos), 5)[0]
    for kind in ("spearman", "pearson", "kendall"):
        assert -1.0 <= p[f"{kind}_ci_low"] <= p[f"{kind}_ci_high"] <= 1.0
    assert p["spearman_ci_low"] == -1.0 or p["spearman_ci_high"] == 1.0  # it was clipped: these rows reach past
    two = wp.pooled(rows(rhos[:2]), 5)[0]
    assert two["spearman_r"] == pytest.approx(np.mean(rhos[:2])) and two["spearman_ci_low"] is None


def test_pair_agreement_counts_only_pairs_people_resolve():
    human, se = np.array([1.0, 1.05, 2.0]), np.array([0.1, 0.1, 0.1])
    assert wp.pair_agreement([3, 2, 1], human, se) == (0.0, 2)  # (0, 1) is within the noise: left out
    assert wp.pair_agreement([1, 1, 2], human, None) == (2.5, 3)  # noise unknown: every pair; a tie counts half


def test_item_errors_come_from_vote_counts_and_are_never_zero():
    """The bundled captions' SEs from their vote counts: the 46 all-"unfunny" captions get a small SE, not 0; the
    counts' SE is the votes' sample variance over n (with the floor's prior votes); a long file's item with one
    rating has no SE and leaves pair agreement."""
    r = load_ratings("caption_contests")
    se = wp.item_se(r.items, None, SCALE)
    assert (r.items["rating"] == 1.0).sum() == 46 and se.min() > 0
    big = r.items["n_ratings"].idxmax()
    votes = np.repeat([1.0, 2.0, 3.0], r.items.loc[big, ["unfunny", "somewhat_funny", "funny"]].astype(int))
    assert se[big] == pytest.approx(votes.std(ddof=1) / np.sqrt(len(votes)), rel=0.01)  # the floor is negligible here
    means = pd.DataFrame({"id": ["a", "b"], "rating": [1.0, 3.0], "n_ratings": [30, 30]})
    assert (wp.item_se(means, None, SCALE) > 0).all()  # at the scale's ends, parametric: not 0 either
    long = pd.DataFrame({"item": ["a", "a", "b", "c", "c"], "rater": [1, 2, 1, 1, 2], "rating": [1, 1, 3, 2, 2]})
    long_se = wp.item_se(pd.DataFrame({"id": ["a", "b", "c"]}), long, SCALE)
    assert long_se[0] > 0 and np.isnan(long_se[1])
    assert wp.pair_agreement([3, 2, 1], np.array([1.0, 3.0, 2.0]), long_se)[1] == 0  # only (a, c): within noise


def test_kendalls_ceiling_is_on_its_own_scale():
    c = wp.prompt_ceiling(pd.DataFrame({"rating": [1.0, 1.5, 2.0, 2.5], "n_ratings": [1e6] * 4}), None, SCALE, 0)
    assert c["ceiling"] == pytest.approx(1.0, abs=1e-3) and c["kendall_ceiling"] == pytest.approx(1.0, abs=0.03)
    c = wp.prompt_ceiling(pd.DataFrame({"rating": [1.0, 1.1, 1.2, 1.3], "n_ratings": [20] * 4}), None, SCALE, 0)
    assert c["kendall_ceiling"] == pytest.approx(2 / np.pi * np.arcsin(c["ceiling"]))


def write_prompt_set(path, prompts: dict[str, int], with_ids=True):
    rows = [{"prompt_id": f"p{k}", "prompt": prompt, "text": f"caption {i} for {prompt}", "rating": 1 + 0.1 * i,
             "n_ratings": 20 + i} for k, (prompt, n) in enumerate(prompts.items()) for i in range(n)]
    frame = pd.DataFrame(rows)
    (frame if with_ids else frame.drop(columns="prompt_id")).to_csv(path, index=False)
    return str(path)


def test_ratings_with_prompts_are_grouped(tmp_path):
    r = load_ratings(write_prompt_set(tmp_path / "r.csv", {"A cat.": 8, "A dog.": 8}, with_ids=False))
    assert r.has_prompts and r.items["prompt_id"].tolist() == ["0"] * 8 + ["1"] * 8
    frame = pd.read_csv(tmp_path / "r.csv")
    frame.loc[8:, "text"] = frame["text"][:8].to_numpy()  # the same captions answer both prompts: allowed
    frame.to_csv(tmp_path / "same.csv", index=False)
    assert len(load_ratings(str(tmp_path / "same.csv")).items) == 16
    assert not load_ratings("jester").has_prompts


@pytest.mark.parametrize("change, message", [
    (lambda f: f.assign(text="same"), "duplicate item 'same'"),
    (lambda f: f.drop(columns="prompt"), "has `prompt_id` but no `prompt`"),
    (lambda f: f.assign(prompt_id="one"), "prompt_id 'one' names 2 different prompts"),
    (lambda f: f.assign(n_ratings=[0] + [20] * 15), "`n_ratings` must be a count >= 1, found '0' in row 1"),
    (lambda f: f.assign(prompt=[""] + ["A dog."] * 15), "`prompt` is empty in row 1"),
])
def test_bad_prompt_columns_are_one_line(tmp_path, change, message):
    frame = pd.read_csv(write_prompt_set(tmp_path / "r.csv", {"A cat.": 8, "A dog.": 8}))
    change(frame).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(TableError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_ratings(str(tmp_path / "bad.csv"))


def test_prompts_with_too_few_items_are_left_out_with_their_reason(tmp_path):
    r = load_ratings(write_prompt_set(tmp_path / "r.csv", {"A cat.": 8, "A dog.": 4, "A fish.": 8}))
    items, left_out = select_prompt_items(r.items, 6, 0)
    assert items.groupby("prompt_id", sort=False).size().to_dict() == {"p0": 6, "p2": 6}
    assert list(left_out) == ["p1"] and "at least 5" in left_out["p1"]
    with pytest.raises(TableError, match="no prompt of the ratings file"):
        select_prompt_items(r.items, 0, 3)


def test_the_bundled_caption_contests():
    r = load_ratings("caption_contests")
    assert r.has_prompts and len(r.items) == 720 and r.items["prompt_id"].nunique() == 24
    assert r.items["prompt"].iloc[0].startswith("Write a funny caption for this New Yorker cartoon: ")
    assert "CC BY 4.0" in r.citation
    assert wp.rating_scale(r.items, None) == SCALE


@pytest.mark.slow
def test_a_prompt_set_end_to_end_with_training_prompts_flagged(three_prompts, tmp_path):
    """The real command, evaluate only, over the tiny run of three prompts: a rated prompt that is a training prompt
    is flagged and left out of before/after; every prompt has its per-prompt rows; the pooled table has intervals."""
    out = tmp_path / "out"
    shutil.copytree(three_prompts, out)
    from datasets import load_from_disk

    prefs = load_from_disk(str(stage_paths(out)["preferences"] / "dataset"))
    trained = sorted(set(prefs["train"]["prompt_id"]))
    topic = {t.split()[-1][:-1]: t for t in TOPICS}[trained[0]]
    ratings = write_prompt_set(tmp_path / "r.csv", {topic: 8, "A cartoon of a cat.": 8, "A cartoon of a dog.": 8})
    proc = run_main("recipe=tiny", f"output_dir={out}", "sample_space.query=null",
                    f"sample_space.prompts={three_prompts.parent / 'prompts.csv'}", "evaluate.query=Tell me a joke.",
                   "evaluate.winrate_samples=3", f"evaluate.human_ratings={ratings}", "evaluate.max_items=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    folder = stage_paths(out)["evaluate"]
    summary = json.loads((folder / "summary.json").read_text())
    ps = summary["prompt_set"]
    assert [p["in_training"] for p in ps["prompts"]] == [True, False, False]
    assert {r["prompt_id"] for r in ps["rows"]} == {"p0", "p1", "p2"}
    pooled = {(r["model"], r["evaluator"]): r for r in ps["pooled"]}
    assert pooled["base", "random"]["n_prompts"] == 3 and pooled["base", "random"]["spearman_ci_low"] is not None
    after = {r["evaluator"]: r for r in ps["before_after"]}
    assert after["random"]["n_prompts"] == 2  # the trained prompt is left out
    assert max(r["n_prompts"] for r in after.values()) == 2  # (a constant score has no correlation: 0 prompts)
    assert any("training prompts" in w for w in ps["warnings"])
    report = (folder / "report.md").read_text()
    assert "Agreement with human ratings within each prompt" in report and "| p0 | 8 |" in report
    assert (folder / "prompt_correlations.png").is_file()


@pytest.mark.slow
def test_the_caption_contests_recipe_on_the_tiny_model(tiny_model_dir, tmp_path):
    """The recipe's own command over every bundled contest (10 captions each), here with the active design (one
    budget shared across contests): per-prompt rows for all 24, the parametric ceiling, the pooled table."""
    proc = run_main("recipe=caption_contests", f"output_dir={tmp_path / 'out'}", "model.name_or_path=embedded:tiny-random",
                    "wandb.mode=disabled", "evaluate.max_items=10", "spmcmc.mode=active", "spmcmc.budget=60",
                   "evaluate.bootstrap=100")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((stage_paths(tmp_path / "out")["evaluate"] / "summary.json").read_text())
    ps = summary["prompt_set"]
    assert len(ps["prompts"]) == 24 and {p["n_items"] for p in ps["prompts"]} == {10}
    assert {p["ceiling_kind"] for p in ps["prompts"]} == {"parametric split-half from vote counts"}
    assert {r["prompt_id"] for r in ps["rows"] if r["evaluator"] == "spmcmc"} == {p["prompt_id"] for p in ps["prompts"]}
    spmcmc = next(r for r in ps["pooled"] if r["evaluator"] == "spmcmc")
    assert spmcmc["n_prompts"] == 24 and spmcmc["spearman_ci_low"] < spmcmc["spearman_r"] < spmcmc["spearman_ci_high"]


def test_the_report_lists_every_prompt_including_those_left_out():
    from pipeline.report import prompt_set_section

    pooled = [{"evaluator": "random", "model": "base", "n_prompts": 1, "spearman_r": 0.1, "spearman_ci_low": None,
               "spearman_ci_high": None, "spearman_p": None, "pearson_r": 0.1, "pearson_ci_low": None,
               "pearson_ci_high": None, "kendall_tau": 0.1, "kendall_ci_low": None, "kendall_ci_high": None,
               "pair_agreement": 0.5, "pair_agreement_ci_low": None, "pair_agreement_ci_high": None,
               "mean_ceiling": 0.9}]
    ps = {"prompts": [{"prompt_id": "a", "n_items": 8, "ceiling": 0.9, "in_training": False,
                       "ceiling_kind": "parametric split-half from vote counts"}],
          "rows": [{"prompt_id": "a", "evaluator": "random", "model": "base", "spearman": 0.1}],
          "left_out": {"b": "2 of its 2 items are at most evaluate.max_chars=0 characters; at least 5 are needed"},
          "warnings": [], "scale": [1.0, 3.0]}
    table = [line for line in prompt_set_section(ps, pooled) if line.startswith("| a |") or line.startswith("| b |")]
    assert table[0] == "| a | 8 | 0.900 |  | 0.100 |"
    assert table[1].startswith("| b | left out: 2 of its 2 items") and table[1].count("|") == table[0].count("|")
