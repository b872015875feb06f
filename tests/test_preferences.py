import numpy as np
import pytest

from conftest import tiny_config
from pipeline.artifacts import StageError
from pipeline.config import PreferencesConfig
from pipeline.simulate import fake_spmcmc
from pipeline.stages import preferences
from pipeline.stages.preferences import apply_caps, candidate_pairs, sft_targets, split_candidates

SCORES = {0: 0.30, 1: 0.20, 2: 0.15, 3: 0.12, 4: 0.10, 5: 0.08, 6: 0.04, 7: 0.01}
RNG = np.random.default_rng(0)


def pc(**kw):
    return PreferencesConfig(**kw)


def test_top_vs_bottom():
    pairs = candidate_pairs(list(SCORES), SCORES, pc(strategy="top_vs_bottom", top_fraction=0.25), RNG)
    assert pairs == [(0, 7), (0, 6), (1, 7), (1, 6)]  # top 2 x bottom 2, largest margin first


def test_margin_keeps_pairs_over_the_ratio():
    pairs = candidate_pairs(list(SCORES), SCORES, pc(strategy="margin", min_ratio=5.0), RNG)
    assert pairs and all(SCORES[a] / SCORES[b] >= 5.0 for a, b in pairs)
    assert (0, 6) in pairs and (2, 6) not in pairs


def test_sampled_pairs_prefer_strong_preferences():
    counts = np.zeros((8, 8))
    for seed in range(200):
        for a, b in candidate_pairs(list(SCORES), SCORES, pc(strategy="sampled"), np.random.default_rng(seed))[:5]:
            assert SCORES[a] > SCORES[b]
            counts[a, b] += 1
    assert counts[0, 7] > counts[4, 5] * 3  # strong (0.30 vs 0.01) drawn early far more often than weak


def test_caps():
    pairs = [(0, 7), (0, 6), (0, 5), (1, 7), (1, 6), (2, 7)]
    assert apply_caps(pairs, max_pairs=10, max_uses=2) == [(0, 7), (0, 6), (1, 7), (1, 6)]
    assert apply_caps(pairs, max_pairs=3, max_uses=5) == pairs[:3]


def test_split_by_candidate_is_disjoint_and_seeded():
    train, test = split_candidates(list(range(20)), 0.25, seed=1)
    assert len(test) == 5 and not set(train) & set(test) and sorted(train + test) == list(range(20))
    assert split_candidates(list(range(20)), 0.25, seed=1) == (train, test)


def test_sft_targets_top_k_and_sampled():
    assert sft_targets(list(SCORES), SCORES, pc(sft_k=3), RNG) == [0, 1, 2]
    drawn = sft_targets(list(SCORES), SCORES, pc(sft_k=3, sft_mode="sampled"), np.random.default_rng(0))
    assert len(set(drawn)) == 3


def run_stage(tmp_path, *overrides, **fake):
    cfg = tiny_config(tmp_path, *overrides)
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    return preferences.run(cfg, {"spmcmc": fake_spmcmc(tmp_path, cfg, **fake)}, tmp_path / "work")


def test_stage_output_is_trl_conversational_and_honest(tmp_path):
    out = run_stage(tmp_path, "preferences.test_fraction=0.25")
    train, test, sft = out["train"], out["test"], out["sft"]
    row = train[0]
    assert row["prompt"] == [{"role": "user", "content": "Tell me a joke."}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen_score"] > row["rejected_score"]
    assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
    assert row["confidence"] > 0.5 and row["gap_z"] > 0
    test_ids = set(test["chosen_id"]) | set(test["rejected_id"])
    assert test_ids and not test_ids & (set(train["chosen_id"]) | set(train["rejected_id"]) | set(sft["id"]))
    assert sft[0]["completion"][0]["role"] == "assistant"


def test_filtering_keeps_no_pair_the_model_inverts(tmp_path):
    """A judge that disagrees with the scores on some pairs: those pairs, and only those, are dropped."""
    import json

    rng = np.random.default_rng(5)
    disagree = {(a, b): rng.random() < 0.3 for a in range(20) for b in range(a + 1, 20)}

    def judge(a, b):  # W(a over b) = 0.7 or 0.3 by the flip, whatever the scores say; order-consistent
        lo, hi = min(a, b), max(a, b)
        w = 0.3 if disagree[lo, hi] else 0.7
        return w if a == lo else 1 - w

    out = run_stage(tmp_path, "preferences.min_confidence=0.6", "preferences.min_gap_z=0", "preferences.strategy=margin",
                    "preferences.min_ratio=1", "preferences.max_pairs=400", "preferences.max_uses_per_candidate=40",
                    judge=judge)
    assert out["train"].num_rows > 0 and min(out["train"]["confidence"]) >= 0.6
    for a, b in zip(out["train"]["chosen_id"], out["train"]["rejected_id"]):  # W read from the judge itself
        assert 0.5 * (judge(a, b) + 1 - judge(b, a)) >= 0.6
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert "inverted_direct_kept" not in summary and summary["inverted_direct_unfiltered"] > 0
    assert summary["pairs_dropped"] > 0


def noisy_bt(n: int, noise: float, seed: int = 0):
    """A Bradley–Terry judge on fixed weights whose every reading (each comparison, each order) is off by a
    random logit: the disagreement the GLM's dispersion measures."""
    w = np.random.default_rng(seed).normal(0, 0.5, size=n)
    eps = np.random.default_rng(seed + 1).normal(0, noise, size=(n, n))
    return lambda a, b: 1 / (1 + np.exp(-(w[a] - w[b] + eps[a, b])))


def test_gap_z_measures_the_judges_own_disagreement(tmp_path):
    """gap_z shrinks as the judge's readings disagree more, and min_gap_z drops the pairs below it."""
    every = ("preferences.min_confidence=0.5", "preferences.strategy=margin", "preferences.min_ratio=1",
             "preferences.max_pairs=400", "preferences.max_uses_per_candidate=40")
    quiet = run_stage(tmp_path / "a", "preferences.min_gap_z=0", *every, judge=noisy_bt(20, 0.05))
    loud = run_stage(tmp_path / "b", "preferences.min_gap_z=0", *every, judge=noisy_bt(20, 1.0))
    z_quiet = dict(zip(zip(quiet["train"]["chosen_id"], quiet["train"]["rejected_id"]), quiet["train"]["gap_z"]))
    z_loud = dict(zip(zip(loud["train"]["chosen_id"], loud["train"]["rejected_id"]), loud["train"]["gap_z"]))
    common = set(z_quiet) & set(z_loud)
    assert len(common) >= 20
    assert np.median([z_quiet[p] / z_loud[p] for p in common]) > 5  # 20x less noise: far larger z
    filtered = run_stage(tmp_path / "c", "preferences.min_gap_z=3", *every, judge=noisy_bt(20, 1.0))
    assert min(filtered["train"]["gap_z"]) >= 3 and min(loud["train"]["gap_z"]) < 3
    assert filtered["train"].num_rows < loud["train"].num_rows  # the filter bound


def test_no_pair_survives_is_one_clear_error(tmp_path):
    with pytest.raises(StageError, match=r"no train pair passes the evidence filters: the best confidence seen was "
                                         r"0\.5\d\d \(preferences.min_confidence=0.95\)"):
        run_stage(tmp_path, "preferences.min_confidence=0.95", judge=lambda a, b: 0.5 + 0.05 * (a < b))
    assert not (tmp_path / "work" / "dataset").exists()


def test_stationary_score_without_exact_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="needs the stationary estimate"):
        run_stage(tmp_path, "preferences.score=stationary", "spmcmc.mode=sparse")


def test_prompt_set_pairs_stay_within_prompts_and_held_out_prompts_stay_out(tmp_path):
    import json

    topics = tuple(f"Tell me a joke about {t}." for t in ("cats", "dogs", "fish", "owls", "bees"))
    out = run_stage(tmp_path, "preferences.test_fraction=0.4", n=8, prompts=topics)
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["split"] == "prompt" and len(summary["held_out_prompts"]) == 2
    held = {p["prompt_id"] for p in summary["held_out_prompts"]}
    for split in ("train", "test", "sft"):
        ds = out[split]
        owner = [i // 8 for i in ds["chosen_id" if split != "sft" else "id"]]
        assert all(f"p{k}" == pid for k, pid in zip(owner, ds["prompt_id"]))
        if split != "sft":  # never a pair across prompts
            assert [i // 8 for i in ds["rejected_id"]] == owner
            assert all(row["prompt"][-1]["content"] == topics[k] for row, k in zip(ds, owner))
    assert not held & (set(out["train"]["prompt_id"]) | set(out["sft"]["prompt_id"]))
    assert set(out["test"]["prompt_id"]) == held


def length_biased_judge(n: int, seed: int = 0):
    """Answers of varied length; a judge with a planted quality and a stronger preference for short answers."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 300, size=n)
    texts = [("ha" * 200)[:L - 3] + f"{i:03d}" for i, L in enumerate(lengths)]
    quality = rng.normal(0, 0.6, size=n)
    z = np.log(lengths)
    bias = -1.5 * (z - z.mean()) / z.std()
    eps = rng.normal(0, 0.1, size=(n, n))
    judge = lambda a, b: 1 / (1 + np.exp(-(0.5 + quality[a] - quality[b] + bias[a] - bias[b] + eps[a, b])))  # noqa: E731
    return texts, judge, {"n_tokens": [int(L // 4) for L in lengths], "sum_logprob": list(-0.9 * lengths.astype(float)),
                          "mean_logprob": [-0.9] * n}


def test_control_takes_length_out_of_the_pairs_and_keeps_the_judges_choice(tmp_path):
    import json

    texts, judge, columns = length_biased_judge(40)
    fake = {"n": 40, "judge": judge, "texts": texts, "columns": columns}
    common = ("confounds.control=[length]", "preferences.min_confidence=0.5", "preferences.max_pairs=64")
    run_stage(tmp_path / "raw", *common, **fake)
    raw_summary = json.loads((tmp_path / "raw" / "work" / "summary.json").read_text())
    raw = raw_summary["kept_pairs"]
    assert any("the shorter one in" in w and "preferences.control=true" in w for w in raw_summary["warnings"])
    out = run_stage(tmp_path / "ctl", *common, "preferences.control=true", **fake)
    summary = json.loads((tmp_path / "ctl" / "work" / "summary.json").read_text())
    assert raw["chosen_shorter"] > 0.9 and summary["kept_pairs"]["chosen_shorter"] <= 0.65
    assert summary["score_column"] == "controlled" and out["train"].num_rows >= 20
    # ranked on one half of the comparisons, tested on the other; without control, on the same ones (and said so)
    assert summary["gap_z_cross_fitted"] == summary["gap_z_fitted"] == 1 and raw_summary["gap_z_cross_fitted"] == 0
    assert "gap_z cross-fitted" in preferences.gap_z_basis(summary)
    assert "winner's curse" in preferences.gap_z_basis(raw_summary)
    # confidence is the controlled W (at zero length difference); the judge's measured W stays beside it: a pair
    # the raw judge decides by length alone may go either way on it
    rows = out["train"]
    for a, b, w, raw_w in zip(rows["chosen_id"], rows["rejected_id"], rows["confidence"], rows["raw_confidence"]):
        assert raw_w == pytest.approx(0.5 * (judge(a, b) + 1 - judge(b, a)))
        assert w > 0.5
    assert np.mean(rows["raw_confidence"]) < np.mean(rows["confidence"])  # the raw W carries the length bias against them
    with pytest.raises(preferences.NoPairs, match=r"the confound-gap filter \(preferences.max_confound_gap=1e-09\) "
                                                  r"removed all \d+ candidate train pairs: none is matched within"):
        run_stage(tmp_path / "tight", *common, "preferences.control=true", "preferences.max_confound_gap=1e-9", **fake)
    matched = run_stage(tmp_path / "m", *common, "preferences.control=true", "preferences.max_confound_gap=0.5", **fake)
    z = np.log([len(t) for t in texts])
    z = (z - z.mean()) / z.std()
    assert matched["train"].num_rows > 0
    assert all(abs(z[a] - z[b]) <= 0.5 for a, b in zip(matched["train"]["chosen_id"], matched["train"]["rejected_id"]))
