"""Stage 3 — preferences: spMCMC scores become DPO preference pairs and SFT targets.

Inputs:  spmcmc (candidates: id, text, frequency, stationary, bt_score)
Output:  DatasetDict
           train, test: prompt, chosen, rejected (TRL conversational messages), chosen_id, rejected_id,
                        chosen_score, rejected_score, margin (chosen_score - rejected_score)
           sft:         prompt, completion (messages), id, score
         The split is by candidate: no test candidate appears in a train pair or an SFT target.
Resume:  pure and fast (seconds): recomputed when not complete.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline import tracking
from pipeline.artifacts import StageError, write_json
from pipeline.config import Config, PreferencesConfig

NAME, VERSION = "preferences", 1
SETTINGS = ("preferences",)
SCORE_COLUMN = {"frequency": "frequency", "stationary": "stationary", "bt": "bt_score"}


def split_candidates(ids: list[int], test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train ids, test ids): a seeded shuffle, test taking round(test_fraction * N) candidates."""
    shuffled = np.random.default_rng(seed).permutation(ids).tolist()
    n_test = int(round(test_fraction * len(ids)))
    return sorted(shuffled[n_test:]), sorted(shuffled[:n_test])


def candidate_pairs(ids: list[int], score: dict[int, float], pc: PreferencesConfig,
                    rng: np.random.Generator) -> list[tuple[int, int]]:
    """(chosen, rejected) pairs in priority order, before caps; ties are never paired."""
    ranked = sorted(ids, key=lambda i: (-score[i], i))
    if pc.strategy == "top_vs_bottom":
        q = max(1, math.ceil(pc.top_fraction * len(ranked)))
        pairs = [(a, b) for a in ranked[:q] for b in ranked[-q:] if score[a] > score[b]]
        return sorted(pairs, key=lambda p: -(score[p[0]] - score[p[1]]))
    every = [(a, b) for k, a in enumerate(ranked) for b in ranked[k + 1:] if score[a] > score[b]]
    if pc.strategy == "margin":
        kept = [(a, b) for a, b in every if score[b] <= 0 or score[a] / score[b] >= pc.min_ratio]
        return sorted(kept, key=lambda p: -(score[p[0]] - score[p[1]]))
    # sampled: pairs drawn without replacement in proportion to the preference strength the scores
    # imply under Bradley–Terry, |P(a over b) - 1/2| with P(a over b) = s_a / (s_a + s_b)
    strength = np.array([abs(score[a] / (score[a] + score[b]) - 0.5) for a, b in every])
    if not every or strength.sum() == 0:
        return []
    k = int((strength > 0).sum())
    picked = rng.choice(len(every), size=k, replace=False, p=strength / strength.sum())
    return [every[i] for i in picked]


def apply_caps(pairs: list[tuple[int, int]], max_pairs: int, max_uses: int) -> list[tuple[int, int]]:
    uses: dict[int, int] = {}
    kept = []
    for a, b in pairs:
        if len(kept) == max_pairs:
            break
        if uses.get(a, 0) < max_uses and uses.get(b, 0) < max_uses:
            kept.append((a, b))
            uses[a] = uses.get(a, 0) + 1
            uses[b] = uses.get(b, 0) + 1
    return kept


def sft_targets(ids: list[int], score: dict[int, float], pc: PreferencesConfig, rng: np.random.Generator) -> list[int]:
    k = min(pc.sft_k, len(ids))
    if pc.sft_mode == "top_k":
        return sorted(ids, key=lambda i: (-score[i], i))[:k]
    weights = np.array([max(score[i], 0.0) for i in ids])
    if weights.sum() == 0:
        return []
    k = min(k, int((weights > 0).sum()))
    return [ids[i] for i in rng.choice(len(ids), size=k, replace=False, p=weights / weights.sum())]


def _messages(role: str, content: str) -> list[dict]:
    return [{"role": role, "content": content}]


def _pair_rows(pairs, text, score, prompt) -> dict:
    return {"prompt": [prompt] * len(pairs), "chosen": [_messages("assistant", text[a]) for a, _ in pairs],
            "rejected": [_messages("assistant", text[b]) for _, b in pairs],
            "chosen_id": [a for a, _ in pairs], "rejected_id": [b for _, b in pairs],
            "chosen_score": [score[a] for a, _ in pairs], "rejected_score": [score[b] for _, b in pairs],
            "margin": [score[a] - score[b] for a, b in pairs]}


def run(cfg: Config, inputs: dict, workdir: Path):
    from datasets import Dataset, DatasetDict

    pc = cfg.preferences
    cands = inputs["spmcmc"].load()["candidates"]
    column = SCORE_COLUMN[pc.score]
    if any(v is None for v in cands[column]):
        raise StageError(f"preferences.score={pc.score} needs the exact stationary distribution, which spmcmc did "
                         "not compute; set spmcmc.exact=true or preferences.score=frequency")
    score = dict(zip(cands["id"], cands[column]))
    text = dict(zip(cands["id"], cands["text"]))
    system = cfg.sample_space.system_prompt
    prompt = (_messages("system", system) if system else []) + _messages("user", cfg.sample_space.query)
    rng = np.random.default_rng(pc.seed)
    train_ids, test_ids = split_candidates(cands["id"], pc.test_fraction, pc.seed)
    splits = {}
    for name, ids in (("train", train_ids), ("test", test_ids)):
        pairs = apply_caps(candidate_pairs(ids, score, pc, rng), pc.max_pairs, pc.max_uses_per_candidate)
        splits[name] = Dataset.from_dict(_pair_rows(pairs, text, score, prompt))
    if splits["train"].num_rows == 0:
        raise StageError(_no_pairs_message(pc, train_ids, cands.num_rows, score))
    sft = sft_targets(train_ids, score, pc, rng)
    splits["sft"] = Dataset.from_dict({"prompt": [prompt] * len(sft),
                                       "completion": [_messages("assistant", text[i]) for i in sft],
                                       "id": sft, "score": [score[i] for i in sft]})
    summary = _summary(splits, train_ids, test_ids)
    write_json(workdir / "summary.json", summary)
    tracking.summary({f"preferences/{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    print(f"[preferences] {summary['train_pairs']} train pairs over {summary['train_candidates']} candidates, "
          f"{summary['test_pairs']} test pairs over {summary['test_candidates']}, {summary['sft_targets']} SFT targets;"
          f" margin median {summary['margin_median']:.4f}, max uses per candidate {summary['max_uses']}", flush=True)
    return DatasetDict(splits)


def _no_pairs_message(pc: PreferencesConfig, train_ids: list[int], n: int, score: dict) -> str:
    if len(train_ids) < 2:
        return (f"preferences.test_fraction={pc.test_fraction} leaves {len(train_ids)} of {n} candidates for training; "
                "lower preferences.test_fraction")
    if len({score[i] for i in train_ids}) == 1:
        return (f"all {len(train_ids)} train candidates have the same {pc.score} score: the model showed no "
                "preference; run more spMCMC steps (spmcmc.iterations) or use preferences.score=bt")
    if pc.strategy == "margin":
        return (f"no train pair reaches preferences.min_ratio={pc.min_ratio}; lower it or use "
                "preferences.strategy=top_vs_bottom")
    return f"no train pairs from {len(train_ids)} candidates with strategy={pc.strategy}; add candidates"


def _summary(splits: dict, train_ids: list[int], test_ids: list[int]) -> dict:
    train = splits["train"]
    margins = np.array(train["margin"])
    uses = np.bincount(np.concatenate([train["chosen_id"], train["rejected_id"]]).astype(int))
    return {"train_pairs": train.num_rows, "test_pairs": splits["test"].num_rows, "sft_targets": splits["sft"].num_rows,
            "train_candidates": len(train_ids), "test_candidates": len(test_ids),
            "margin_min": float(margins.min()), "margin_median": float(np.median(margins)),
            "margin_max": float(margins.max()), "candidates_used": int((uses > 0).sum()), "max_uses": int(uses.max())}
