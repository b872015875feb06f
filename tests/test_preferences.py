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


def fake_spmcmc(tmp_path, cfg, stationary=True, n=20, judge=None, se=0.001, prompts=("Tell me a joke.",)):
    """A complete spmcmc artifact over `prompts` (n candidates each): candidates with every estimate, the
    per-prompt table and a pair cache holding every ordered comparison within each prompt, as `judge`
    (default: Bradley–Terry on the scores) answers, so no model is loaded."""
    from pipeline.judge import PairStore, judge_key, text_sha

    freq = np.concatenate([np.random.default_rng(k).dirichlet(np.ones(n)) for k in range(len(prompts))])
    total = n * len(prompts)
    texts = [f"joke {i}" for i in range(total)]
    prompt_of = [i // n for i in range(total)]
    judge = judge or (lambda a, b: freq[a] / (freq[a] + freq[b]))
    none = [None] * total
    pids = [f"p{k}" for k in range(len(prompts))]
    cands = Dataset.from_dict({"id": list(range(total)), "prompt_id": [pids[k] for k in prompt_of],
                               "prompt": [prompts[k] for k in prompt_of], "text": texts,
                               "frequency": freq.tolist(), "frequency_se": [se] * total,
                               "rao_blackwell": none, "rao_blackwell_se": none, "bt_score": freq.tolist(),
                               "bt_score_se": [se] * total, "stationary": freq.tolist() if stationary else none,
                               "stationary_se": [se] * total if stationary else none, "sparse": none,
                               "sparse_se": none, "score": freq.tolist(), "score_se": [se] * total})
    table = Dataset.from_dict({"prompt_id": pids, "prompt": list(prompts), "n_candidates": [n] * len(prompts),
                               "reliability": [0.9] * len(prompts), "calibration_shift": [0.0] * len(prompts)})
    folder = tmp_path / "spmcmc"
    DatasetDict({"candidates": cands, "prompts": table}).save_to_disk(str(folder / "dataset"))
    keys = [judge_key(cfg.model, cfg.judge, q) for q in prompts]
    store = PairStore(folder, keys, [text_sha(t) for t in texts], prompt_of)
    pairs = [(a, b) for a in range(total) for b in range(total) if a != b and prompt_of[a] == prompt_of[b]]
    store.append(pairs, [judge(a, b) for a, b in pairs], [1.0] * len(pairs))
    return Artifact("spmcmc", "fp", folder)


def run_stage(tmp_path, *overrides, **fake):
    cfg = tiny_config(tmp_path, *overrides)
    (tmp_path / "work").mkdir(exist_ok=True)
    return preferences.run(cfg, {"spmcmc": fake_spmcmc(tmp_path, cfg, **fake)}, tmp_path / "work")


def test_stage_output_is_trl_conversational_and_honest(tmp_path):
    out = run_stage(tmp_path, "preferences.test_fraction=0.25")
    train, test, sft = out["train"], out["test"], out["sft"]
    row = train[0]
    assert row["prompt"] == [{"role": "user", "content": "Tell me a joke."}]
    assert row["chosen"][0]["role"] == "assistant" and row["chosen_score"] > row["rejected_score"]
    assert row["margin"] == pytest.approx(row["chosen_score"] - row["rejected_score"])
    assert row["confidence"] > 0.5 and row["gap_z"] == pytest.approx(row["margin"] / (0.001 * np.sqrt(2)))
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

    out = run_stage(tmp_path, "preferences.min_confidence=0.6", "preferences.min_gap_z=0", judge=judge)
    assert out["train"].num_rows > 0 and min(out["train"]["confidence"]) >= 0.6
    summary = json.loads((tmp_path / "work" / "summary.json").read_text())
    assert summary["inverted_direct_kept"] == 0.0 and summary["inverted_direct_unfiltered"] > 0
    assert summary["pairs_dropped"] > 0


def test_weak_gaps_are_dropped(tmp_path):
    out = run_stage(tmp_path, "preferences.min_gap_z=3", "preferences.min_confidence=0.5", se=0.02)
    gaps = np.array(out["train"]["margin"]) / (0.02 * np.sqrt(2))
    assert (gaps >= 3).all() and np.allclose(gaps, out["train"]["gap_z"])


def test_no_pair_survives_is_one_clear_error(tmp_path):
    with pytest.raises(StageError, match=r"no train pair passes the evidence filters: the best confidence seen was "
                                         r"0\.5\d\d \(preferences.min_confidence=0.95\)"):
        run_stage(tmp_path, "preferences.min_confidence=0.95", judge=lambda a, b: 0.5 + 0.05 * (a < b))
    assert not (tmp_path / "work" / "dataset").exists()


def test_stationary_score_without_exact_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="needs the stationary estimate"):
        run_stage(tmp_path, "preferences.score=stationary", stationary=False)


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
