import numpy as np
import pytest
from datasets import Dataset, DatasetDict

from conftest import tiny_config
from pipeline.artifacts import Artifact, StageError
from pipeline.config import PreferencesConfig
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


def fake_spmcmc(tmp_path, stationary=True, n=20):
    freq = np.random.default_rng(0).dirichlet(np.ones(n))
    cands = Dataset.from_dict({"id": list(range(n)), "text": [f"joke {i}" for i in range(n)],
                               "frequency": freq.tolist(), "stationary": freq.tolist() if stationary else [None] * n,
                               "bt_score": freq.tolist()})
    DatasetDict({"candidates": cands}).save_to_disk(str(tmp_path / "spmcmc" / "dataset"))
    return Artifact("spmcmc", "fp", tmp_path / "spmcmc")


def test_stage_output_is_trl_conversational_and_honest(tmp_path):
    cfg = tiny_config(tmp_path, "preferences.test_fraction=0.25")
    (tmp_path / "work").mkdir()
    out = preferences.run(cfg, {"spmcmc": fake_spmcmc(tmp_path)}, tmp_path / "work")
    train, test, sft = out["train"], out["test"], out["sft"]
    row = train[0]
    assert row["prompt"] == [{"role": "user", "content": "Tell me a joke."}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen_score"] > row["rejected_score"]
    assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
    test_ids = set(test["chosen_id"]) | set(test["rejected_id"])
    assert test_ids and not test_ids & (set(train["chosen_id"]) | set(train["rejected_id"]) | set(sft["id"]))
    assert sft[0]["completion"][0]["role"] == "assistant"


def test_stationary_score_without_exact_is_a_clear_error(tmp_path):
    cfg = tiny_config(tmp_path, "preferences.score=stationary")
    with pytest.raises(StageError, match="needs the exact stationary distribution"):
        preferences.run(cfg, {"spmcmc": fake_spmcmc(tmp_path, stationary=False)}, tmp_path)
