"""Stage 3 — preferences: spMCMC scores become DPO preference pairs and SFT targets, and each pair
carries the evidence that the model really prefers its chosen answer.

Inputs:  spmcmc (candidates: id, text, score, controlled and every estimate, the confounds' sources; pairs:
         every comparison, for the GLM that gives each pair's gap_z; pair cache files); optional `judge` (a later
         round's judging policy: the finetune artifact whose adapter judges)
Output:  DatasetDict
           train, test: prompt_id, prompt, chosen, rejected (TRL conversational messages), chosen_id, rejected_id,
                        chosen_score, rejected_score, margin (chosen_score - rejected_score),
                        confidence (the model's own order-averaged choice of chosen over rejected,
                        W = 1/2 (P(chosen | shown first) + 1 - P(rejected | shown first))), gap_z (the
                        GLM strength gap in units of its standard error, pipeline/confounds.py: how far the gap
                        stands above the disagreement between the judge's own readings)
           sft:         prompt, completion (messages), id, score, prompt_id
           held_out_prompts: prompt_id, prompt (the prompts held out of training; empty with split=candidate)
         Pairs never mix prompts. preferences.split=prompt (auto with several prompts) holds out whole
         prompts; candidate holds out candidates within each prompt. Either way no test candidate appears
         in a train pair or an SFT target.
         Ranked by the score, or with preferences.control=true by the controlled score (confounds.control
         held fixed; optionally only pairs matched within preferences.max_confound_gap SDs on them).
         Pairs below preferences.min_confidence or min_gap_z are dropped; summary.json says how many,
         how many of the unfiltered pairs the model's own direct choice inverts, and what the kept pairs
         teach besides the score (chosen shorter / likelier shares, distinct texts).
Resume:  comparisons that confidence needs beyond the spmcmc cache are appended to this stage's pair
         cache as they are computed; the rest is recomputed in seconds.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TypedDict

import numpy as np

from pipeline.artifacts import StageError, publish
from pipeline.config import Config, PreferencesConfig
from pipeline.estimates import COLUMN, order_averaged, shifted
from pipeline.formatting import number
from pipeline.stages.finetune import adapter_of

NAME, VERSION = "preferences", 5
SETTINGS = ("model", "sample_space", "judge", "confounds", "preferences")
OPTIONAL_INPUTS = ()
DISTRIBUTED = False
SCORE_COLUMN = {"auto": "score", **COLUMN}  # preferences.score -> the spmcmc candidates column


class KeptPairs(TypedDict, total=False):
    chosen_shorter: float
    chosen_likelier: float
    chosen_chars_mean: float
    rejected_chars_mean: float
    chosen_logprob_mean: float
    rejected_logprob_mean: float
    distinct_chosen: int
    distinct_rejected: int


class Summary(TypedDict):
    """summary.json: what the report and the rounds read (the writer owns the shape; tests/test_contract.py checks
    it against real runs)."""
    train_pairs: int
    test_pairs: int
    pairs_dropped: int
    pairs_measured: int
    unfiltered_pairs: int
    score_column: str
    control: bool
    control_features: list[str]
    inverted_direct_unfiltered: float | None
    inverted_exact_kept: float | None
    confidence_min: float
    confidence_max: float
    confidence_mean: float
    confidence_unfiltered_mean: float | None
    gap_z_median: float
    gap_z_min: float
    gap_z_cross_fitted: int  # prompts whose pairs were ranked on one half of the comparisons and tested on the other
    gap_z_fitted: int  # prompts with a GLM fit (the others' gap_z is inf: the filter cannot judge them)
    kept_pairs: KeptPairs
    alpha: float | None
    prompts_without_preference_left: list[dict]
    split: str
    warnings: list[str]


class NoPairs(StageError):
    """No preference pair passes the evidence filters: an error in round 1, the end of the rounds later."""


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


def _pair_rows(pairs, text, score, prompt, evidence) -> dict:
    return {"prompt": [prompt] * len(pairs), "chosen": [_messages("assistant", text[a]) for a, _ in pairs],
            "rejected": [_messages("assistant", text[b]) for _, b in pairs],
            "chosen_id": [a for a, _ in pairs], "rejected_id": [b for _, b in pairs],
            "chosen_score": [score[a] for a, _ in pairs], "rejected_score": [score[b] for _, b in pairs],
            "margin": [score[a] - score[b] for a, b in pairs],
            "confidence": [evidence[p][0] for p in pairs], "gap_z": [evidence[p][1] for p in pairs],
            "raw_confidence": [evidence[p][2] for p in pairs]}


class Strengths:
    """Per prompt, the judge's log-strengths from the GLM on spmcmc's comparisons (pipeline/glm.py), raw or
    with confounds.control held fixed, with their covariance: a pair's gap_z is its strength gap over the SE that
    the judge's own disagreeing readings imply. Also the controlled confounds, z-scored, for matching."""

    def __init__(self, cfg: Config, cands, pairs, prompts: list[dict], control: bool):
        from pipeline import confounds, glm

        self.values, self.cov, self.x, self.lo, self.position, self.wald = {}, {}, {}, {}, {}, {}
        self.control, self.crossed = control, {}
        ids_of, probs_of = {}, {}
        for i, q in zip(cands["id"][:], cands["prompt_id"][:]):
            ids_of.setdefault(q, []).append(i)
        for f, s, v, q in zip(*(pairs[c][:] for c in ("first_id", "second_id", "p_first", "prompt_id"))):
            probs_of.setdefault(q, {})[f, s] = v
        for p in prompts:
            ids = ids_of[p["prompt_id"]]
            lo, n = ids[0], len(ids)  # a prompt's candidates are ids lo .. lo+n-1 (spmcmc's groups)
            rows = cands[lo:lo + n]
            probs = {(f - lo, s - lo): v for (f, s), v in probs_of.get(p["prompt_id"], {}).items()}
            x, names = confounds.standardised(confounds.features_of(rows, cfg.confounds.formats), list(cfg.confounds.control))
            fit = glm.fit_strengths(probs, n)
            if fit is None:
                continue
            c = confounds.control(fit, x if control else x[:, :0], names if control else [])
            self.values[p["prompt_id"]], self.cov[p["prompt_id"]], self.x[p["prompt_id"]] = c.q, c.cov, x
            self.lo[p["prompt_id"]], self.position[p["prompt_id"]] = lo, fit.position
            self.wald[p["prompt_id"]] = confounds.wald_test(c.q, c.cov, fit.resid_df)["p"]
            if control:  # under control the GLM's q also ranks the pairs: rank on one half, test on the other
                crossed = confounds.cross_fit(probs, n, x, [cfg.preferences.seed, lo])
                if crossed is not None:
                    self.crossed[p["prompt_id"]] = crossed

    def passing(self, prompt_ids: list[str], alpha: float) -> tuple[set, dict]:
        """(the prompts whose preference passes the Wald test of "nothing left" at alpha, Holm-corrected across
        `prompt_ids`; {prompt_id: p} of the others). A prompt without a fit has no test and does not pass; a
        noise-free judge (p None: no disagreement to test against) passes."""
        from statsmodels.stats.multitest import multipletests

        tested = [q for q in prompt_ids if self.wald.get(q) is not None]
        passed = {q for q in prompt_ids if q in self.values and self.wald[q] is None}
        if tested:
            reject = multipletests([self.wald[q] for q in tested], alpha, method="holm")[0]
            passed |= {q for q, r in zip(tested, reject) if r}
        return passed, {q: self.wald.get(q) for q in prompt_ids if q not in passed}

    def controlled_w(self, prompt_id: str, a: int, b: int) -> float | None:
        """The order-averaged W of a over b that the controlled strengths imply at the fitted position."""
        from pipeline.confounds import order_averaged_w

        if prompt_id not in self.values:
            return None
        q, lo = self.values[prompt_id], self.lo[prompt_id]
        return float(order_averaged_w(q[a - lo] - q[b - lo], self.position[prompt_id]))

    def ranking(self, prompt_id: str, score: dict[int, float]) -> dict[int, float]:
        """What ranks this prompt's pairs: the cross-fitted half's q where there is one, else `score`."""
        crossed = self.crossed.get(prompt_id)
        if crossed is None:
            return score
        return {self.lo[prompt_id] + k: float(v) for k, v in enumerate(crossed.rank)}

    def gap_z(self, prompt_id: str, a: int, b: int) -> float:
        """The pair's strength gap over its SE: on the half that did not rank it where the prompt is cross-fitted,
        else on every comparison (which also ranked it: the winner's curse applies)."""
        from pipeline.confounds import pair_z

        if prompt_id not in self.values:
            return math.inf  # too few comparisons for the GLM: the gap filter cannot judge, so it passes
        lo, crossed = self.lo[prompt_id], self.crossed.get(prompt_id)
        if crossed is not None:
            return pair_z(crossed.test, crossed.test_cov, a - lo, b - lo)
        return pair_z(self.values[prompt_id], self.cov[prompt_id], a - lo, b - lo)

    def confound_gap(self, prompt_id: str, a: int, b: int) -> float:
        """The largest difference, in standard deviations, of the controlled confounds between a and b."""
        x, lo = self.x.get(prompt_id), self.lo.get(prompt_id, 0)
        return float(np.abs(x[a - lo] - x[b - lo]).max()) if x is not None and x.shape[1] else 0.0


class Evidence:
    """Per pair: (confidence W, gap_z), the comparisons W needs asked of the model's judge (both orders;
    the spmcmc stage's cache first, then the model, within preferences.budget new comparisons)."""

    def __init__(self, cfg: Config, spmcmc, cands, prompts: list[dict], workdir: Path, strengths: Strengths,
                 judge: tuple = (None, None)):
        from pipeline.judge import cached_judge
        from pipeline.models import load_model

        order = {p["prompt_id"]: k for k, p in enumerate(prompts)}
        self.prompt_of = [order[pid] for pid in cands["prompt_id"][:]]
        adapter, adapter_key = judge
        self.cached, _ = cached_judge(cfg, cands["text"][:], workdir, lambda: load_model(cfg.model, adapter),
                                            [p["prompt"] for p in prompts], self.prompt_of, adapter_key=adapter_key,
                                            extra_cache_files=sorted(spmcmc.path.glob("pair_cache.rank*.jsonl")))
        self.shifts = [p["calibration_shift"] or 0.0 for p in prompts]  # the spmcmc stage's, per prompt
        self.budget, self.strengths, self.known = cfg.preferences.budget, strengths, {}
        self.prompt_ids = [p["prompt_id"] for p in prompts]

    def __call__(self, pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Measures the pairs (as many as the budget allows); returns those measured."""
        from pipeline.judge import fill_pairs

        need = [q for a, b in pairs if (a, b) not in self.known for q in ((a, b), (b, a)) if q not in self.cached.probs]
        need = list(dict.fromkeys(need))
        if len(need) > self.budget:
            need = need[: self.budget - self.budget % 2]
        if need:
            fill_pairs(self.cached, need, NAME, "confidence", distributed=False)
            self.budget -= len(need)
        for a, b in pairs:
            if (a, b) not in self.known and (a, b) in self.cached.probs and (b, a) in self.cached.probs:
                probs = shifted({(a, b): self.cached.probs[a, b], (b, a): self.cached.probs[b, a]},
                                self.shifts[self.prompt_of[a]])
                pid = self.prompt_ids[self.prompt_of[a]]
                raw = order_averaged(probs, a, b)
                controlled = self.strengths.controlled_w(pid, a, b) if self.strengths.control else None
                self.known[a, b] = (raw if controlled is None else controlled, self.strengths.gap_z(pid, a, b), raw)
        return [p for p in pairs if p in self.known]


def select_pairs(ranked: list[tuple[int, int]], evidence: Evidence, pc: PreferencesConfig) -> dict:
    """The unfiltered selection (caps only, as without evidence) and the kept one (caps over the pairs
    that pass min_confidence and min_gap_z), in priority order."""
    unfiltered = apply_caps(ranked, pc.max_pairs, pc.max_uses_per_candidate)
    evidence(unfiltered)
    supported, kept = [], []
    chunk = max(64, 2 * pc.max_pairs)
    for start in range(0, len(ranked), chunk):
        for p in evidence(ranked[start:start + chunk]):
            w, z, _ = evidence.known[p]
            if w >= pc.min_confidence and w > 0.5 and z >= pc.min_gap_z:
                supported.append(p)
        kept = apply_caps(supported, pc.max_pairs, pc.max_uses_per_candidate)
        if len(kept) == pc.max_pairs or evidence.budget <= 0:
            break
    return {"unfiltered": unfiltered, "kept": kept, "measured": [p for p in ranked if p in evidence.known]}


def split_prompts(prompts: list[dict], ids_of: dict, pc: PreferencesConfig) -> tuple[dict, dict, str]:
    """({prompt_id: train ids}, {prompt_id: test ids}, the split used). `prompt`: whole prompts held out
    (round(test_fraction * P), at least one of several, never all); `candidate`: within each prompt."""
    split = pc.split if pc.split != "auto" else ("prompt" if len(prompts) > 1 else "candidate")
    ids = [p["prompt_id"] for p in prompts]
    if split == "prompt":
        if len(prompts) < 2:
            raise StageError("preferences.split=prompt needs at least 2 prompts with candidates; use split=candidate")
        n_test = min(len(ids) - 1, max(1 if pc.test_fraction > 0 else 0, int(round(pc.test_fraction * len(ids)))))
        held = set(np.random.default_rng(pc.seed).permutation(ids)[:n_test].tolist())
        return ({p: ids_of[p] for p in ids if p not in held}, {p: ids_of[p] for p in ids if p in held}, split)
    halves = {p: split_candidates(ids_of[p], pc.test_fraction, pc.seed) for p in ids}
    return {p: h[0] for p, h in halves.items()}, {p: h[1] for p, h in halves.items()}, split


def run(cfg: Config, inputs: dict, workdir: Path):
    from datasets import Dataset, DatasetDict, Features, Value

    pc = applied(cfg)
    spmcmc = inputs["spmcmc"].load()
    cands, prompts = spmcmc["candidates"], [p for p in spmcmc["prompts"] if p["n_candidates"] >= 2]
    control = uses_control(cfg)
    column = "controlled" if control else SCORE_COLUMN[pc.score]
    prompts, uncontrolled = _with_column(prompts, cands, column, pc, control)
    # a column read whole ([:]): iterating datasets' lazy Column reads it a row at a time (~20 us a value)
    ids, stationary = cands["id"][:], cands["stationary"][:]
    score = dict(zip(ids, cands[column][:]))
    text = dict(zip(ids, cands["text"][:]))
    exact = dict(zip(ids, stationary)) if None not in stationary else None
    ids_of = {p["prompt_id"]: [] for p in prompts}
    for i, pid in zip(ids, cands["prompt_id"][:]):  # one pass: a scan per prompt grew as prompts^2
        if pid in ids_of:
            ids_of[pid].append(i)
    system = cfg.sample_space.system_prompt
    message = {p["prompt_id"]: (_messages("system", system) if system else []) + _messages("user", p["prompt"])
               for p in prompts}
    rng = np.random.default_rng(pc.seed)
    train, test, split = split_prompts(prompts, ids_of, pc)
    strengths = Strengths(cfg, cands, spmcmc["pairs"], prompts, control)
    evidence = Evidence(cfg, inputs["spmcmc"], cands, prompts, workdir, strengths, adapter_of(inputs, "judge"))
    gate, left_out = strengths.passing([p["prompt_id"] for p in prompts], pc.alpha) if control else (None, {})
    if gate is not None and not gate & set(train):
        raise NoPairs(_no_preference_left(pc, left_out, list(cfg.confounds.control)))
    splits, picked, unmatched = {}, {}, {"train": 0, "test": 0}
    for name, part in (("train", train), ("test", test)):
        per = {pid: select_pairs(_matched(candidate_pairs(ids, strengths.ranking(pid, score), pc, rng), strengths, pid,
                                          pc, control, unmatched, name), evidence, pc)
               if gate is None or pid in gate else {"unfiltered": [], "kept": [], "measured": []}
               for pid, ids in part.items()}
        picked[name] = {k: [p for r in per.values() for p in r[k]] for k in ("unfiltered", "kept", "measured")}
        rows = [_pair_rows(r["kept"], text, score, message[pid], evidence.known) | {"prompt_id": [pid] * len(r["kept"])}
                for pid, r in per.items()]
        splits[name] = Dataset.from_dict({k: [v for row in rows for v in row[k]] for k in _PAIR_COLUMNS})
    train_ids = [i for ids in train.values() for i in ids]
    if splits["train"].num_rows == 0:
        raise NoPairs(_no_pairs_message(pc, train_ids, cands.num_rows, score, picked["train"], evidence, spmcmc,
                                        unmatched["train"], list(cfg.confounds.control)))
    sft = [(pid, i) for pid, ids in train.items() for i in sft_targets(ids, score, pc, rng)]
    splits["sft"] = Dataset.from_dict({"prompt": [message[pid] for pid, _ in sft],
                                       "completion": [_messages("assistant", text[i]) for _, i in sft],
                                       "id": [i for _, i in sft], "score": [score[i] for _, i in sft],
                                       "prompt_id": [pid for pid, _ in sft]})
    held = [p for p in prompts if split == "prompt" and p["prompt_id"] in test]
    splits["held_out_prompts"] = Dataset.from_dict(  # typed columns, also when empty (split=candidate)
        {k: [p[k] for p in held] for k in ("prompt_id", "prompt")},
        features=Features({"prompt_id": Value("string"), "prompt": Value("string")}))
    summary = _summary(splits, train_ids, [i for ids in test.values() for i in ids], column, picked["train"],
                       evidence.known, exact, exact is not None and any(score[i] != exact[i] for i in exact))
    summary.update({"n_prompts": len(prompts), "split": split, "train_prompts": len(train), "control": control,
                    "control_features": list(cfg.confounds.control) if control else [],
                    "prompts_without_controlled_score": uncontrolled, "alpha": pc.alpha if control else None,
                    "prompts_without_preference_left": [{"prompt_id": k, "p": v} for k, v in left_out.items()],
                    "gap_z_cross_fitted": len(strengths.crossed), "gap_z_fitted": len(strengths.values),
                    "kept_pairs": composition(splits["train"], cands),
                    "warnings": composition_warnings(composition(splits["train"], cands), pc, control)
                    + ([CONTROL_OFF] if pc.control and not control else [])
                    + ([CONFIDENCE_OFF.format(cfg.preferences.min_confidence)]
                       if pc.min_confidence != cfg.preferences.min_confidence else []),
                    "held_out_prompts": splits["held_out_prompts"].to_list()})
    publish(workdir, NAME, summary, _lines(summary))
    return DatasetDict(splits)


def applied(cfg: Config) -> PreferencesConfig:
    """The preferences settings as applied for this judge. A reward function's W is sigmoid(reward gap /
    judge.temperature): the scale of the reward, not a measured confidence, and the same answer every time, so
    min_confidence is not applied to it; a kept pair still needs W > 0.5 (the function prefers chosen)."""
    import dataclasses

    if cfg.judge.kind == "function":
        return dataclasses.replace(cfg.preferences, min_confidence=0.5)
    return cfg.preferences


CONFIDENCE_OFF = ("preferences.min_confidence={} is not applied: the judge is a reward function, whose W is the reward "
                  "gap on its own scale (judge.temperature), not a measured confidence; every pair it strictly "
                  "prefers is kept")


def uses_control(cfg: Config) -> bool:
    """preferences.control, for a model judge: a reward function states the preference it rewards, so nothing
    in it is unasked for and its pairs come from the raw score."""
    return cfg.preferences.control and cfg.judge.kind == "model"


CONTROL_OFF = ("preferences.control=true is not applied: the judge is a reward function (judge.kind=function), "
               "whose preference is the one asked for; pairs come from the raw score")


def _with_column(prompts: list[dict], cands, column: str, pc: PreferencesConfig,
                 control: bool) -> tuple[list[dict], list[str]]:
    """The prompts whose candidates all have the ranking column; with control, a prompt too small for the
    controlled fit is left out (and listed), without it a missing estimate is an error."""
    missing = {pid for v, pid in zip(cands[column][:], cands["prompt_id"][:]) if v is None}
    if not control:
        if missing & {p["prompt_id"] for p in prompts}:
            raise StageError(f"preferences.score={pc.score} needs the {column} estimate, which this spmcmc run did not "
                             "compute (stationary: spmcmc.mode=exact; sparse: mode=sparse; frequency/rao_blackwell: "
                             "chains); use preferences.score=auto")
        return prompts, []
    kept = [p for p in prompts if p["prompt_id"] not in missing]
    if not kept:
        raise StageError("preferences.control=true needs spmcmc's controlled score, which no prompt has: "
                         "confounds.control is empty, or every prompt has too few candidates for the controlled "
                         "fit (at least 3 more than the controlled confounds)")
    return kept, [p["prompt_id"] for p in prompts if p["prompt_id"] in missing]


def _matched(ranked: list[tuple[int, int]], strengths: Strengths, prompt_id: str, pc: PreferencesConfig,
             control: bool, unmatched: dict, split: str) -> list:
    """With control and preferences.max_confound_gap > 0: only pairs matched on the controlled confounds (the others
    are counted in unmatched[split])."""
    if not (control and pc.max_confound_gap > 0):
        return ranked
    kept = [p for p in ranked if strengths.confound_gap(prompt_id, *p) <= pc.max_confound_gap]
    unmatched[split] += len(ranked) - len(kept)
    return kept


def composition(train, cands) -> dict:
    """What the kept pairs teach besides the score: how often the chosen answer is the shorter or the likelier
    (summed log-probability under the policy), the means of both sides, and how many distinct texts they use."""
    if train.num_rows == 0:
        return {}
    length = {i: len(t) for i, t in zip(cands["id"][:], cands["text"][:])}
    logp = dict(zip(cands["id"][:], cands["sum_logprob"][:])) if "sum_logprob" in cands.column_names else {}
    c, r = train["chosen_id"][:], train["rejected_id"][:]
    out = {"chosen_shorter": float(np.mean([length[a] < length[b] for a, b in zip(c, r)])),
           "chosen_chars_mean": float(np.mean([length[a] for a in c])),
           "rejected_chars_mean": float(np.mean([length[b] for b in r])),
           "distinct_chosen": len(set(c)), "distinct_rejected": len(set(r))}
    if logp and None not in logp.values():
        out.update({"chosen_likelier": float(np.mean([logp[a] > logp[b] for a, b in zip(c, r)])),
                    "chosen_logprob_mean": float(np.mean([logp[a] for a in c])),
                    "rejected_logprob_mean": float(np.mean([logp[b] for b in r]))})
    return out


def composition_warnings(kept: dict, pc: PreferencesConfig, control: bool) -> list[str]:
    """The pairs teach length or likelihood when the chosen side is nearly always the shorter or the likelier one."""
    out = []
    for key, what in (("chosen_shorter", "shorter"), ("chosen_likelier", "likelier under the policy")):
        share = kept.get(key)
        if share is not None and (share >= pc.warn_share or share <= 1 - pc.warn_share):
            out.append(f"the chosen answer is the {what} one in {share:.0%} of the kept pairs: they teach that as much "
                       "as the score" + ("" if control else "; preferences.control=true ranks by the controlled "
                                         "score (confounds.control held fixed)"))
    return out


_PAIR_COLUMNS = ("prompt_id", "prompt", "chosen", "rejected", "chosen_id", "rejected_id", "chosen_score", "rejected_score",
                 "margin", "confidence", "gap_z", "raw_confidence")


def _no_pairs_message(pc: PreferencesConfig, train_ids: list[int], n: int, score: dict, picked: dict,
                      evidence: Evidence, spmcmc, unmatched: int, control: list[str]) -> str:
    if len(train_ids) < 2:
        return (f"preferences.test_fraction={pc.test_fraction} leaves {len(train_ids)} of {n} candidates for training; "
                "lower preferences.test_fraction")
    if len({score[i] for i in train_ids}) == 1:
        return (f"all {len(train_ids)} train candidates have the same {pc.score} score: the model showed no "
                "preference; measure more (spmcmc.budget) or use another preferences.score")
    if not picked["measured"]:
        if unmatched:
            return (f"the confound-gap filter (preferences.max_confound_gap={pc.max_confound_gap}) removed all "
                    f"{unmatched} candidate train pairs: none is matched within {pc.max_confound_gap} SD on "
                    f"{', '.join(control)}; raise it, or set 0 to build pairs without matching")
        if pc.strategy == "margin":
            return (f"no train pair reaches preferences.min_ratio={pc.min_ratio}; lower it or use "
                    "preferences.strategy=top_vs_bottom")
        return f"no train pairs from {len(train_ids)} candidates with strategy={pc.strategy}; add candidates"
    best_w = max(evidence.known[p][0] for p in picked["measured"])
    best_z = max(evidence.known[p][1] for p in picked["measured"])
    rel = [p["consistency"] for p in spmcmc["prompts"] if p["consistency"] is not None]
    return (f"no train pair passes the evidence filters: the best confidence seen was {best_w:.3f} "
            f"(preferences.min_confidence={pc.min_confidence}) and the largest gap {best_z:.2f} standard errors "
            f"(preferences.min_gap_z={pc.min_gap_z}) over {len(picked['measured'])} pairs; the judge's preference "
            f"consistency is {np.mean(rel) if rel else float('nan'):.2f}. Lower the thresholds, or measure more "
            "reliably (spmcmc.budget, more candidates, a stronger judge)")


def _no_preference_left(pc: PreferencesConfig, left_out: dict, control: list[str]) -> str:
    ps = [v for v in left_out.values() if v is not None]
    return (f"the judge has no preference left once {', '.join(control)} are held fixed: no training prompt's "
            f"controlled preference passes the Wald test at preferences.alpha={pc.alpha} (Holm-corrected over "
            f"{len(left_out)} prompts; smallest p {min(ps) if ps else float('nan'):.3g}). Try a stronger judge, other "
            "confounds (confounds.control), more comparisons (spmcmc.budget), or preferences.control=false knowingly "
            "(pairs would then teach what the confounds predict)")


def _inverted(pairs, known=None, exact=None) -> float | None:
    if not pairs:
        return None
    if known is not None:
        return float(np.mean([known[p][2] < 0.5 for p in pairs]))  # the judge's own measured choice
    return float(np.mean([exact[a] < exact[b] for a, b in pairs]))


def _summary(splits: dict, train_ids: list[int], test_ids: list[int], column: str, picked: dict, known: dict,
             exact: dict | None, ranked_by_other: bool) -> dict:
    train, unfiltered = splits["train"], picked["unfiltered"]
    margins = np.array(train["margin"][:])
    chosen, rejected = train["chosen_id"][:], train["rejected_id"][:]
    uses = np.bincount(np.concatenate([chosen, rejected]).astype(int))
    conf = np.array(train["confidence"][:])
    kept = list(zip(chosen, rejected))
    measured_unfiltered = [p for p in unfiltered if p in known]
    return {"score_column": column, "train_pairs": train.num_rows, "test_pairs": splits["test"].num_rows,
            "sft_targets": splits["sft"].num_rows, "train_candidates": len(train_ids), "test_candidates": len(test_ids),
            "unfiltered_pairs": len(unfiltered), "pairs_measured": len(picked["measured"]),
            "pairs_dropped": len(picked["measured"]) - train.num_rows,
            # kept pairs need W > 0.5, so the direct choice never inverts one: only the unfiltered share is a finding;
            # the exact distribution inverts kept pairs only when they were ranked by something else (controlled)
            "inverted_direct_unfiltered": _inverted(measured_unfiltered, known=known),
            "inverted_exact_unfiltered": _inverted(unfiltered, exact=exact) if exact and ranked_by_other else None,
            "inverted_exact_kept": _inverted(kept, exact=exact) if exact and ranked_by_other else None,
            "confidence_unfiltered_mean": float(np.mean([known[p][2] for p in measured_unfiltered]))
            if measured_unfiltered else None,
            "confidence_mean": float(conf.mean()), "confidence_min": float(conf.min()), "confidence_max": float(conf.max()),
            "gap_z_median": float(np.median(train["gap_z"][:])), "gap_z_min": float(np.min(train["gap_z"][:])),
            "margin_min": float(margins.min()), "margin_median": float(np.median(margins)),
            "margin_max": float(margins.max()), "candidates_used": int((uses > 0).sum()), "max_uses": int(uses.max())}


def gap_z_basis(s: dict) -> str:
    """What gap_z was computed on: free of the selection (cross-fitted) or on the comparisons that ranked the pairs."""
    crossed, fitted = s.get("gap_z_cross_fitted", 0), s.get("gap_z_fitted", 0)
    if fitted and crossed == fitted:
        return "gap_z cross-fitted (pairs ranked on one half of the comparisons, tested on the other)"
    rest = f"{fitted - crossed} of {fitted} prompt(s)"
    why = ("ranked by the stage's score" if not s["control"] else "a half too small or not connected")
    return f"gap_z on the comparisons that also ranked the pairs for {rest} ({why}: a winner's curse inflates it)"


def left_out_line(s: dict) -> str:
    """The prompts that gave no pairs because no controlled preference passed the Holm-corrected Wald test."""
    out = s["prompts_without_preference_left"]
    named = ", ".join(f"{r['prompt_id']} (p = {number(r['p'], '.3g')})" for r in out[:10])
    return (f"{len(out)} prompt(s) gave no pairs: no controlled preference left at alpha={s['alpha']} (Holm): {named}"
            + (f" and {len(out) - 10} more" if len(out) > 10 else ""))


def _lines(s: dict) -> list[str]:
    k = s["kept_pairs"]
    lines = [f"{s['train_pairs']} train pairs kept of {s['pairs_measured']} measured (unfiltered selection: "
             f"{s['unfiltered_pairs']}), {s['test_pairs']} test pairs, {s['sft_targets']} SFT targets; ranked by "
             f"{s['score_column']}" + (f" (holding {', '.join(s['control_features'])} fixed)" if s["control"] else ""),
             f"the judge's own order-averaged choice inverts {number(s['inverted_direct_unfiltered'], '.2f')} of the "
             "unfiltered pairs (kept pairs need W > 0.5); confidence of kept pairs "
             f"{s['confidence_min']:.3f}-{s['confidence_max']:.3f} (mean {s['confidence_mean']:.3f}; unfiltered mean "
             f"{number(s['confidence_unfiltered_mean'], '.3f')}); gap_z median {s['gap_z_median']:.1f}, min "
             f"{s['gap_z_min']:.1f}; {gap_z_basis(s)}"]
    if s.get("prompts_without_preference_left"):
        lines.append(left_out_line(s))
    if s["inverted_exact_kept"] is not None:
        lines.append(f"the raw (exact) score orders {s['inverted_exact_kept']:.2f} of the kept pairs the other way")
    return lines + [f"kept pairs: chosen shorter in {k['chosen_shorter']:.0%} ({k['chosen_chars_mean']:.0f} vs "
                    f"{k['rejected_chars_mean']:.0f} chars), likelier in {number(k.get('chosen_likelier'), '.0%')} "
                    f"(summed log-prob {number(k.get('chosen_logprob_mean'), '.1f')} vs "
                    f"{number(k.get('rejected_logprob_mean'), '.1f')}); {k['distinct_chosen']} distinct chosen and "
                    f"{k['distinct_rejected']} distinct rejected texts"] + [f"warning: {w}" for w in s["warnings"]]
