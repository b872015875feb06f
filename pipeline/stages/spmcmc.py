"""Stage 2 — spMCMC: the model's own preference distribution over the sample space, from its
binary choices ("which is funnier, A or B?"), every estimate with a standard error, how consistently
the preferences were measured, and what they track besides quality (pipeline/confounds.py).

Inputs:  sample_space (id, prompt_id, prompt, text, ...); optional `judge` (round r > 1 with rounds.judge=policy:
         the previous round's finetune artifact, whose adapter judges) and `previous_spmcmc` (the previous round's
         spmcmc: its pair cache is reused where the judge and the texts are the same)
Design:  `spmcmc.mode` (auto picks by `spmcmc.budget`): exact (all N(N-1) comparisons), sparse (each
         candidate compared in both orders with ~`degree` others on a seeded random connected graph;
         all comparisons known up front, so they batch fully), active (chosen in rounds of spmcmc.round_size
         where the estimate is still open, one budget shared by every prompt; a prompt stops when precise, flat
         or complete: pipeline/active.py), or chains (the paper's Metropolis–Hastings chains, uniform
         proposal, Barker acceptance). The chains also run when they cost nothing new
         (exact design) or when asked (`spmcmc.chains=true`). See pipeline/estimates.py.
Output:  candidates: id, text, count, is_greedy, source, text_sha, visits, and for each estimate its value
                     and standard error: frequency(_se), rao_blackwell(_se), bt_score(_se),
                     stationary(_se) (exact design), sparse(_se) (sparse design), active(_se) (active design);
                     score, score_se (the
                     stage's best estimate: summary.json says which and why); controlled, controlled_se (the
                     preference left with confounds.control held fixed, pipeline/confounds.py); n_tokens,
                     sum_logprob, mean_logprob (the confounds' sources, from the sample space)
         trace (chain, step, current, proposal, first_shown, p_accept, accepted),
         pairs (first_id, second_id, p_first, label_mass), diagnostics (id, rhat, ess_bulk);
         prompts (one row per prompt: judge_calls, design_stop (active: why it stopped), consistency, strength,
                  each confound's Spearman with the score, R^2, the greedy answer's rank, raw and controlled
                  strength);
         summary.json (consistency, position bias, label mass, agreement between estimates, what the
         preference tracks and the controlled preference (`confounds`), warnings), estimates.png,
         running_frequency.png, confounds.png
Resume:  every computed comparison is appended to pair_cache.rank*.jsonl at once (the design in chunks; the
         active design replays its rounds from the cache, so a resumed run chooses the same comparisons);
         chain states, generators and traces are checkpointed every `checkpoint_every` steps in _state/
         and checked against the cache on resume. A restarted run reuses both: same artifact as an
         uninterrupted run.
Several processes: the design's comparisons (by first candidate) and the chains are split across
         processes; caches and traces are gathered; the main process writes the artifact.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import numpy as np

from pipeline import confounds, parallel
from pipeline.active import PromptDesign, run_design
from pipeline.artifacts import StageError, publish
from pipeline.chains import CachedJudge, Chain, new_chains, run_chains, shown_pairs, states_after, trace_arrays
from pipeline.config import Config
from pipeline.diagnostics import chain_diagnostics, intransitivity, mixing_warnings, total_variation
from pipeline.estimates import (
    COLUMN,
    ESTIMATES,
    calibration_shift,
    compared_edges,
    measured,
    order_averaged,
    ordered,
    plan_design,
    shifted,
    wants_chains,
)
from pipeline.formatting import number
from pipeline.judge import cached_judge, fill_pairs
from pipeline.metrics import mean_ci_t, mean_of
from pipeline.plots import confound_plot, estimate_plots, prompt_confound_plot, prompt_plots
from pipeline.report import wald_prompts
from pipeline.stages.finetune import adapter_of
from pipeline.workdir import STATE_DIR, failpoint, write_text

NAME, VERSION = "spmcmc", 9  # 9: batch means of all chains at once (standard errors move by ~1e-17)


class Consistency(TypedDict, total=False):
    consistency: float  # one prompt: split-half Spearman-Brown; several: the mean over prompts
    evidence: str
    splits: int
    split_half_r: float  # one prompt
    min: float  # several prompts
    worst_prompt: str


class Strength(TypedDict):
    mean_abs_w_minus_half: float
    max_w: float
    top_over_uniform: float
    bottom_over_uniform: float
    entropy: float  # of the preference distribution, as a share of the uniform's


class Summary(TypedDict):
    """summary.json: what evaluate, the report and the rounds read (the writer owns the shape; tests/test_contract.py
    checks it against real runs, one prompt and several)."""
    mode: str
    mode_reason: str
    judge_calls: int
    score_estimate: str
    score_reason: str
    consistency: Consistency | None  # None: fewer than 4 compared pairs
    strength: Strength
    position_bias: float
    label_mass_mean: float | None
    intransitive_share: float | None
    calibration: str
    estimates: dict  # per estimate: tv_vs_reference, spearman_vs_reference, min, max, mean_se; and `reference`
    confounds: dict  # pipeline/confounds.py's analysis
    n_prompts: int
    per_prompt: list[dict]  # the `prompts` split's rows
    active: dict | None  # the active design: one prompt, how it spent its share; several, the run's figures
    warnings: list[str]
SETTINGS = ("model", "sample_space", "judge", "confounds", "spmcmc")
OPTIONAL_INPUTS = ("previous_spmcmc",)
DISTRIBUTED = True
NEAR_FLAT = 1.5  # warn when no candidate gets 1.5x the uniform share


@dataclass(frozen=True)
class Group:
    """One prompt's candidates: global ids lo .. lo+n-1 of the sample space."""
    index: int
    prompt_id: str
    prompt: str
    lo: int
    n: int

    def chain_seed(self, seed: int) -> int:
        return seed if self.index == 0 else seed * 1_000_003 + self.index  # one prompt: the paper's seeding


def prompt_groups(space) -> list[Group]:
    """The sample space's prompts in order, each with its contiguous run of candidate ids."""
    groups, prompts, lo = [], space["prompt"][:], 0  # columns read whole: a datasets Column iterates a row at a time
    for index, (pid, run) in enumerate(itertools.groupby(space["prompt_id"][:])):
        n = sum(1 for _ in run)
        groups.append(Group(index, pid, prompts[lo], lo, n))
        lo += n
    return groups


def plan(sc, groups: list[Group]) -> dict[int, tuple]:
    """Each prompt's design, planned once: {group index: (mode, edges, why)} (pipeline/estimates.py: plan_design)."""
    return {g.index: plan_design(sc, g.n) for g in groups if g.n >= 2}


def _fresh_chains(groups: list[Group], sc) -> dict[int, Chain]:
    return {c.id: c for g in groups for c in new_chains(g.n, sc.num_chains, g.chain_seed(sc.seed), lo=g.lo,
                                                          first_id=g.index * sc.num_chains)}


def _load_chains(state: Path, ids: list[int], fresh: dict[int, Chain]) -> tuple[list[Chain], list[tuple], dict]:
    """Chains `ids` at their latest checkpoint in any process's file (the split changes with the number of
    processes), fresh where none was saved; their trace rows; and what this process's file holds for chains
    it does not own, which its checkpoints keep until their owner has saved them."""
    saved, own = {}, {}
    for path in sorted(state.glob("chains.rank*.json")):
        entries = json.loads(path.read_text())  # written atomically: whole or absent
        for key, entry in entries.items():
            if int(key) not in saved or entry["state"]["step"] > saved[int(key)]["state"]["step"]:
                saved[int(key)] = entry
        if path.name == _checkpoint_file(parallel.rank()):
            own = entries
    chains = [Chain.from_state(saved[c]["state"]) if c in saved else fresh[c] for c in ids]
    rows = [tuple(r) for c in ids if c in saved for r in saved[c]["rows"]]
    mine = set(ids)
    return chains, rows, {k: e for k, e in own.items() if int(k) not in mine}


def _checkpoint_file(rank: int) -> str:
    return f"chains.rank{rank}.json"


class Checkpoints:
    """This process's chains and their rows, in one file rewritten atomically at each checkpoint (a file per chain
    cost ~3 ms a prompt to write: 10,000 files a checkpoint at 10,000 prompts), with what the file held for chains it
    does not own (`others`), kept until their owner has saved them. Each row is encoded once and kept as JSON text:
    encoding every row so far at every checkpoint grew as the square of the steps."""

    def __init__(self, state: Path, others: dict):
        self.path = state / _checkpoint_file(parallel.rank())
        self.others = {key: json.dumps(entry) for key, entry in others.items()}
        self.encoded: dict[int, list[str]] = {}  # chain id -> its rows' JSON, in pieces
        self.seen = 0  # rows encoded so far (the trace only grows)

    def save(self, chains: list[Chain], rows: list[tuple]) -> None:
        new: dict[int, list[tuple]] = {}
        for r in rows[self.seen:]:
            new.setdefault(r[0], []).append(r)
        self.seen = len(rows)
        for chain, mine in new.items():
            self.encoded.setdefault(chain, []).append(json.dumps(mine, default=str)[1:-1])
        entries = {**self.others, **{str(c.id): self._entry(c) for c in chains}}
        write_text(self.path, "{" + ", ".join(f"{json.dumps(k)}: {v}" for k, v in entries.items()) + "}")

    def _entry(self, chain: Chain) -> str:
        state = json.dumps(chain.state(), sort_keys=True, default=str)
        return f'{{"rows": [{", ".join(self.encoded.get(chain.id, []))}], "state": {state}}}'


def sample_chains(cfg: Config, cached: CachedJudge, groups: list[Group], workdir: Path) -> dict:
    """This process's chains (every prompt's, stepped together so one judge call serves all prompts),
    resumed from their checkpoints; returns their whole trace."""
    from tqdm.auto import tqdm

    sc = cfg.spmcmc
    state = workdir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fresh = _fresh_chains(groups, sc)
    ids = sorted(fresh)[parallel.rank()::parallel.world_size()]
    chains, rows, others = _load_chains(state, ids, fresh)
    if any(p not in cached.probs for r in rows for p in shown_pairs(r[2], r[3], r[4] == r[3], sc.order)):
        # the checkpoints used comparisons the pair cache no longer holds (deleted or damaged): chains
        # and cache must agree, so the chains start again and the cache fills as before
        print(f"[spmcmc] chain checkpoints use comparisons missing from the pair cache: restarting chains {ids}",
              flush=True)
        for path in state.glob("chains.rank*.json"):
            path.unlink()
        chains, rows, others = [fresh[c] for c in ids], [], {}
    cached.lookups = cached.hits = 0  # the bar shows the chains' own hit rate
    bar = tqdm(total=len(ids) * sc.iterations, initial=sum(c.step for c in chains), desc="[spmcmc] chains",
               unit="step")

    accepted = [sum(r[6] for r in rows)]  # running count: no rescan of the trace each step
    checkpoints = Checkpoints(state, others)

    def on_step(active, new):
        rows.extend(new)
        accepted[0] += sum(r[6] for r in new)
        bar.update(len(new))
        bar.set_postfix(accept=f"{accepted[0] / len(rows):.2f}", cache_hit=f"{cached.hit_rate:.2f}", refresh=False)
        if active[0].step % sc.checkpoint_every == 0 or active[0].step == sc.iterations:
            checkpoints.save(chains, rows)
        failpoint("spmcmc.step")

    run_chains(chains, 0, cached, sc.iterations, sc.order, on_step=on_step)
    bar.close()
    checkpoints.save(chains, rows)
    return trace_arrays(rows)


def run(cfg: Config, inputs: dict, workdir: Path):
    space = inputs["sample_space"].load()
    sc = cfg.spmcmc
    groups = prompt_groups(space)
    usable = [g for g in groups if g.n >= 2]
    if not usable:
        raise StageError(f"spMCMC needs at least 2 candidates; the sample space has {max(g.n for g in groups)}"
                         + (" for any prompt" if len(groups) > 1 else "")
                         + " (raise sample_space.num_samples or loosen its filters)")
    plans = plan(sc, usable)
    chain_groups = [g for g in usable if wants_chains(sc.chains, plans[g.index][0])]
    if cfg.judge.calibration != "none" and any(plans[g.index][0] != "exact" for g in chain_groups):
        raise StageError(f"judge.calibration={cfg.judge.calibration} needs every comparison known before the "
                         "estimates (spmcmc.mode exact or sparse, without extra chains)")
    from pipeline.models import load_model

    prompt_of = [g.index for g in groups for _ in range(g.n)]
    adapter, adapter_key = adapter_of(inputs, "judge")
    earlier = sorted(inputs["previous_spmcmc"].path.glob("pair_cache.rank*.jsonl")) if "previous_spmcmc" in inputs else []
    cached, store = cached_judge(cfg, space["text"], workdir, lambda: load_model(cfg.model, adapter),
                                       [g.prompt for g in groups], prompt_of, adapter_key=adapter_key,
                                       extra_cache_files=earlier, rank=parallel.rank())
    design = [(g.lo + a, g.lo + b) for g in usable for a, b in ordered(plans[g.index][1])]
    if design:  # every prompt's design at once (batches mix prompts); the chains then run from the cache
        fill_pairs(cached, design, NAME, f"design over {len(usable)} prompt(s)", chunk=sc.design_chunk)
    active = [g for g in usable if plans[g.index][0] == "active"]
    adaptive = active_design(sc, cached, active, plans) if active else None
    chain_judge = cached
    if chain_groups and cfg.judge.calibration != "none":  # exact designs only: nothing is computed
        chain_judge = CachedJudge(cached.judge, _calibrated(cached.probs, usable, cfg.judge.calibration))
    trace = sample_chains(cfg, chain_judge, chain_groups, workdir) if chain_groups else None
    # the raw answers: computed here, and reused from the pair caches (this folder's, an earlier round's)
    parts = parallel.gather({"trace": trace, "probs": cached.probs, "mass": store.label_mass})
    if not parallel.is_main():
        return None
    merged = None
    if trace is not None:
        merged = {k: np.concatenate([p["trace"][k] for p in parts]) for k in parts[0]["trace"]}
        by_chain = np.lexsort((merged["step"], merged["chain"]))  # one order however the run was split or resumed
        merged = {k: v[by_chain] for k, v in merged.items()}
    # in pair order: the fits sum over them, and the processes' (or a resumed cache's) order must not reach the bits
    probs = dict(sorted((k, v) for p in parts for k, v in p["probs"].items()))
    mass = dict(sorted((k, v) for p in parts for k, v in p["mass"].items()))
    if active:  # an active prompt's evidence is the design it chose, whatever else a reused cache holds
        probs, mass = (_within_designs(d, active, plans) for d in (probs, mass))
    return summarise(cfg, space, groups, plans, merged, probs, mass, workdir, adaptive)


def active_design(sc, cached: CachedJudge, groups: list[Group], plans: dict) -> dict:
    """The active design over `groups` (pipeline/active.py), one budget for all, asked of the judge round by round
    through the pair cache (a resumed or finished run replays it from there): each plan gets its edges and why it
    stopped; returns the run's figures and, per prompt, how its share of the budget was spent."""
    from tqdm.auto import tqdm

    designs = [PromptDesign(g.n, g.lo) for g in groups]
    with tqdm(total=sc.budget * len(groups), desc=f"[{NAME}] active design over {len(groups)} prompt(s)",
              unit="cmp") as bar:
        def ask(pairs):
            fill_pairs(cached, pairs, NAME, "active round", chunk=sc.design_chunk, progress=False)
            bar.update(sum(2 * len(d.edges) for d in designs) - bar.n)
        figures = run_design(designs, cached.probs, ask, sc)
    per_prompt = {}
    for g, d in zip(groups, designs):
        plans[g.index] = ("active", sorted(d.edges), f"{plans[g.index][2]}; stopped: {STOP_REASON[d.stop]}")
        per_prompt[g.index] = {"stop": d.stop, "comparisons": 2 * len(d.edges), "expected_tv": d.expected_tv,
                               "distance_from_uniform": d.distance}
    return {**figures, "per_prompt": per_prompt}


STOP_REASON = {"precise": "its expected TV error reached spmcmc.precision",
               "flat": "flat: no pair's order-averaged choice can reach spmcmc.flat_w (upper 95% bound)",
               "complete": "every comparison made", "budget": "the run's budget was spent"}


def _within_designs(values: dict, groups: list[Group], plans: dict) -> dict:
    """`values` ({(first, second): v}) without the comparisons of `groups`' candidates outside their designs."""
    ids = {i for g in groups for i in range(g.lo, g.lo + g.n)}
    keep = {(g.lo + a, g.lo + b) for g in groups for a, b in ordered(plans[g.index][1])}
    return {k: v for k, v in values.items() if k[0] not in ids or k in keep}


def by_prompt(values: dict, groups: list[Group]) -> list[dict]:
    """Each group's entries of `values` ({(first, second): v}, global ids) in its own ids 0 .. n-1, in `values`' order;
    entries of candidates outside `groups` are left out. One pass: a scan of every comparison per prompt grows as P^2."""
    owner = {i: g for g in groups for i in range(g.lo, g.lo + g.n)}
    out = {g.index: {} for g in groups}
    for (f, s), v in values.items():
        g = owner.get(f)
        if g is not None:
            out[g.index][f - g.lo, s - g.lo] = v
    return [out[g.index] for g in groups]


def _calibrated(probs: dict, groups: list[Group], how: str) -> dict:
    """Each prompt's comparisons shifted by that prompt's own mean label-logit difference."""
    out = {}
    for g, mine in zip(groups, by_prompt(probs, groups)):
        out.update({(f + g.lo, s + g.lo): v for (f, s), v in shifted(mine, calibration_shift(mine, how)).items()})
    return out


def chain_cache_stats(trace: dict, order: str, design_pairs: set) -> dict:
    """Comparisons the chains looked up, and the share they found already computed (by the design or an
    earlier step): a property of the trace, so a resumed run reports what an uninterrupted one does."""
    cur, prop, first = trace["current"], trace["proposal"], trace["first_shown"]
    if order == "both":
        pairs = list(zip(cur, prop)) + list(zip(prop, cur))
    else:
        pairs = list(zip(first, np.where(first == cur, prop, cur)))
    new = len({(int(a), int(b)) for a, b in pairs} - design_pairs)
    return {"chain_lookups": len(pairs), "chain_new_comparisons": new,
            "chain_cache_hit_rate": 1.0 - new / len(pairs) if pairs else None}


def summarise(cfg: Config, space, groups: list[Group], plans: dict, trace: dict | None, raw_probs: dict, mass: dict,
              workdir: Path, adaptive: dict | None = None):
    """Per prompt: estimates with standard errors, consistency, diagnostics; then the run's summary,
    plots and the artifact. `adaptive`: the active design's figures (active_design), when it ran."""
    from datasets import Dataset, DatasetDict

    sc = cfg.spmcmc
    spent = (adaptive or {}).get("per_prompt", {})
    work = [(g, plans.get(g.index), local, raw, local_mass, space[g.lo:g.lo + g.n], spent.get(g.index))
            for g, local, raw, local_mass in zip(groups, traces_by_prompt(trace, groups, sc.num_chains),
                                                 by_prompt(raw_probs, groups), by_prompt(mass, groups))]
    # each prompt's figures are pure numpy and scipy, ~7 ms a prompt: spread over the cores for a large prompt set
    results = parallel.pool_map(functools.partial(_prompt_result_of, cfg), work, POOL_PROMPTS)
    names = [*confounds.FEATURES, *(k for k, _ in confounds.parse_formats(cfg.confounds.formats))]
    rows = [_prompt_row(g, r, names) for g, r in zip(groups, results)]
    if len(groups) == 1:
        summary = {**results[0]["summary"], "n_prompts": 1, "per_prompt": rows}
        if adaptive and summary.get("active") is not None:  # the run's figures (rounds, budget, stops) beside its own
            summary["active"] = {**{k: v for k, v in adaptive.items() if k != "per_prompt"}, **summary["active"]}
        r = results[0]
        plots = estimate_plots(workdir, space["text"], r["est"], r["score"], r["states"])
        plots.append(confound_plot(workdir, confounds.features_of(space[:], cfg.confounds.formats), r["est"][r["score"]][0],
                                   r["controlled"][0] if r["controlled"] is not None else None))
    else:
        summary = _run_summary(groups, results, rows, cfg, adaptive)
        plots = prompt_plots(workdir, rows) + [prompt_confound_plot(workdir, summary["confounds"]["features"])]
    publish(workdir, NAME, summary, _lines(summary), plots)
    keys = sorted(raw_probs)
    group_of = np.repeat([g.index for g in groups], [g.n for g in groups])
    pid = [g.prompt_id for g in groups]
    diagnostics = [{"prompt_id": g.prompt_id, **{**d, "id": d["id"] + g.lo}}
                   for g, r in zip(groups, results) if r for d in r["per_candidate"]]
    return DatasetDict({
        "candidates": _candidates(space, groups, results),
        "trace": Dataset.from_dict({**{k: v.tolist() for k, v in (trace or trace_arrays([])).items()},
                                    "prompt_id": [pid[c // sc.num_chains] for c in (trace or trace_arrays([]))["chain"]]}),
        "pairs": Dataset.from_dict({"prompt_id": [pid[group_of[k[0]]] for k in keys],
                                    "first_id": [k[0] for k in keys], "second_id": [k[1] for k in keys],
                                    "p_first": [raw_probs[k] for k in keys], "label_mass": [mass.get(k) for k in keys]}),
        "diagnostics": Dataset.from_list(diagnostics) if diagnostics
        else Dataset.from_dict({"prompt_id": [], "id": [], "rhat": [], "ess_bulk": []}),
        "prompts": Dataset.from_list(rows),
    })


def traces_by_prompt(trace: dict | None, groups: list[Group], num_chains: int) -> list[dict | None]:
    """Each prompt's chains (None without any), in its own candidate ids, the rows in the trace's order; one stable
    sort of the trace, not a scan of it per prompt."""
    if trace is None:
        return [None] * len(groups)
    prompt = trace["chain"] // num_chains
    order = np.argsort(prompt, kind="stable")
    index, ordered_prompt = [g.index for g in groups], prompt[order]
    out = []
    for g, a, b in zip(groups, np.searchsorted(ordered_prompt, index, "left"), np.searchsorted(ordered_prompt, index, "right")):
        if a == b:
            out.append(None)
            continue
        mine = {k: v[order[a:b]] for k, v in trace.items()}
        for k in ("current", "proposal"):
            mine[k] = mine[k] - g.lo
        mine["first_shown"] = np.where(mine["first_shown"] >= 0, mine["first_shown"] - g.lo, -1)
        out.append(mine)
    return out


POOL_PROMPTS = 500  # prompts from which summarise spreads the per-prompt figures over the cores


def _prompt_result_of(cfg: Config, work: tuple) -> dict | None:
    return _prompt_result(cfg, *work)


def _prompt_result(cfg: Config, g: Group, plan: tuple | None, local: dict | None, raw: dict, local_mass: dict,
                   rows: dict, spent: dict | None = None) -> dict | None:
    """One prompt's estimates and summary (None with fewer than 2 candidates: nothing to compare) from its chains,
    the judge's answers and label masses, all in its own ids (traces_by_prompt, by_prompt); `rows` are its
    sample-space columns; `spent` how the active design spent its share (None for the fixed designs)."""
    sc, n = cfg.spmcmc, g.n
    if n < 2:
        return None
    mode, edges, why = plan
    m = measured(raw, n, sc, cfg.judge.calibration, mode, edges, local, sc.burn_in, sc.thin, sc.bootstrap,
                 sc.consistency_splits)
    shift, probs, est, rel, score = m["shift"], m["probs"], m["est"], m["rel"], m["score"]
    summary = {"n_candidates": n, "judge_kind": cfg.judge.kind, "mode": mode, "mode_reason": why, "design_edges": len(edges),
               "design_comparisons": 2 * len(edges), "judge_calls": len(raw), "score_estimate": score,
               "score_reason": SCORE_REASON[mode], "consistency": rel.get("score"),
               "consistency_frequency": rel.get("frequency"), **_judge_figures(raw, local_mass, probs, n, shift, cfg),
               "strength": _strength(probs, est[score][0]), "estimates": _agreement(est, score, mode),
               **_chain_figures(local, n, sc, set(ordered(edges))), "active": spent}
    cc = cfg.confounds
    summary["confounds"], controlled, pool = confounds.analyse(
        raw, n, confounds.features_of(rows, cc.formats), est[score][0], rows.get("is_greedy"), list(cc.control),
        sc.consistency_splits, sc.seed)  # raw choices: the GLM fits the position bias itself
    summary["warnings"] = _warnings(summary, sc) + [w for w in [confounds.warning(summary["confounds"], cc.warn_r2)] if w]
    per_candidate = summary.pop("_per_candidate", [])
    states = states_after(local)[:, sc.burn_in::sc.thin] if local is not None else None
    return {"summary": summary, "est": est, "score": score, "trace": local, "states": states,
            "per_candidate": per_candidate, "controlled": controlled, "pool": pool}


def _prompt_row(g: Group, r: dict | None, names: list[str]) -> dict:
    s = r["summary"] if r else {}
    rel, strength = s.get("consistency") or {}, s.get("strength") or {}
    return {"prompt_id": g.prompt_id, "prompt": g.prompt, "n_candidates": g.n, "mode": s.get("mode"),
            "judge_calls": s.get("judge_calls", 0), "design_stop": (s.get("active") or {}).get("stop"),
            "consistency": rel.get("consistency"),
            "position_bias": s.get("position_bias"), "label_mass_mean": s.get("label_mass_mean"),
            "top_over_uniform": strength.get("top_over_uniform"), "entropy": strength.get("entropy"),
            "calibration_shift": s.get("calibration_shift"),
            "mean_abs_w_minus_half": strength.get("mean_abs_w_minus_half"),
            **_confound_row(s.get("confounds") or {}, names), "warnings": len(s.get("warnings", [])) if r else 1}


def _confound_row(c: dict, names: list[str]) -> dict:
    """The `prompts` split's confound columns: each confound's Spearman with the score, R^2, the greedy answer's
    rank, and the raw vs controlled strength and the controlled score's consistency."""
    ctrl, explained = c.get("controlled") or {}, c.get("explained") or {}
    return {**{f"spearman_{k}": ((c.get("features") or {}).get(k) or {}).get("spearman") for k in names},
            "confound_r2": explained.get("r2"), "confound_r2_adjusted": explained.get("r2_adjusted"),
            "greedy_rank": c.get("greedy_rank"), "raw_glm_strength": (c.get("raw_strength") or {}).get("mean_abs_w_minus_half"),
            "controlled_strength": (ctrl.get("strength") or {}).get("mean_abs_w_minus_half"),
            "controlled_consistency": (ctrl.get("consistency") or {}).get("consistency"),
            "controlled_greedy_rank": ctrl.get("greedy_rank")}


def _run_summary(groups: list[Group], results: list, rows: list[dict], cfg: Config, adaptive: dict | None) -> dict:
    """Means and worst cases over the prompts, and the prompts that need attention."""
    sc = cfg.spmcmc
    done = [r["summary"] for r in results if r]
    rel = [(row["consistency"], row["prompt_id"]) for row in rows if row["consistency"] is not None]
    worst = min(rel) if rel else (None, None)
    names = {name for s in done for name in s["estimates"] if name != "reference"}
    summary = {
        "n_prompts": len(groups), "prompts_measured": len(done), "n_candidates": int(sum(g.n for g in groups)),
        "judge_calls": int(sum(s["judge_calls"] for s in done)),
        "mode": "/".join(sorted({s["mode"] for s in done})), "mode_reason": "per prompt, by spmcmc.budget (see per_prompt)",
        "score_estimate": "/".join(sorted({s["score_estimate"] for s in done})),
        "score_reason": " | ".join(sorted({s["score_reason"] for s in done})),
        "consistency": {"consistency": mean_of(r for r, _ in rel), "min": worst[0], "worst_prompt": worst[1],
                        "evidence": "compared pairs, per prompt", "splits": sc.consistency_splits},
        "position_bias": mean_of(s["position_bias"] for s in done), "calibration": done[0]["calibration"],
        "label_mass_mean": mean_of(s["label_mass_mean"] for s in done),
        "label_mass_min": min((s["label_mass_min"] for s in done if s["label_mass_min"] is not None), default=None),
        "intransitive_share": mean_of(s["intransitive_share"] for s in done),
        "strength": {k: mean_of(s["strength"][k] for s in done) for k in done[0]["strength"]},
        "estimates": {"reference": "per prompt: stationary when exact, else the score",
                      **{n: {k: mean_of(s["estimates"][n][k] for s in done if n in s["estimates"])
                             for k in ("tv_vs_reference", "spearman_vs_reference", "mean_se", "min", "max")}
                         for n in sorted(names)}},
        "chains_run": any(s["chains_run"] for s in done), "per_prompt": rows,
        "active": adaptive and {k: v for k, v in adaptive.items() if k != "per_prompt"},
        "confounds": _run_confounds([r for r in results if r])}
    pooled = confounds.warning(summary["confounds"], cfg.confounds.warn_r2, pooled=True)
    summary["warnings"] = _run_warnings(groups, results, sc) + ([pooled] if pooled else [])
    return summary


def _run_confounds(done: list[dict]) -> dict:
    """Over prompts: each confound's mean within-prompt Spearman with the score (t interval over prompts), R^2
    within prompts, the greedy answer's mean rank, and the raw and controlled strengths and consistency."""
    conf = [r["summary"]["confounds"] for r in done]
    t = mean_ci_t

    def spearman(k):
        m = t(c["features"][k]["spearman"] for c in conf)
        return {"spearman": m["mean"], "ci_low": m["ci_low"], "ci_high": m["ci_high"], "prompts": m["n"]}
    ctrl = [c["controlled"] for c in conf if c["controlled"]]
    out = {"features": {k: spearman(k) for k in conf[0]["features"]},
           "explained": confounds.pooled_explained([r["pool"] for r in done]),
           "greedy_rank_mean": mean_of(c["greedy_rank"] for c in conf),
           "raw_strength": t((c["raw_strength"] or {}).get("mean_abs_w_minus_half") for c in conf), "controlled": None}
    if ctrl:
        out["controlled"] = {
            "control": ctrl[0]["control"], "prompts": len(ctrl),
            "constant": sorted({k for c in ctrl for k in c.get("constant") or []}),
            "strength": t(c["strength"]["mean_abs_w_minus_half"] for c in ctrl),
            "consistency": t((c["consistency"] or {}).get("consistency") for c in ctrl),
            # a p that underflows to 0.0 is the strongest rejection; a judge that never disagreed with the GLM
            # (no noise: p None) has no test and is counted apart, not as "nothing left"
            **wald_share([c["strength"]["p"] for c in ctrl]),
            "explained_by_all": confounds.pooled_explained([{**r["pool"], "s": r["pool"]["q"]} for r in done
                                                            if "q" in r["pool"]]),
            "greedy_rank_mean": mean_of(c["greedy_rank"] for c in ctrl)}
    return out


def wald_share(ps: list) -> dict:
    """The share of tested prompts whose Wald test rejects at 5%, and how many had no test (p None)."""
    tested = [p for p in ps if p is not None]
    return {"wald_p_below_05": float(np.mean([p < 0.05 for p in tested])) if tested else None,
            "wald_untested": len(ps) - len(tested)}


def _run_warnings(groups: list[Group], results: list, sc) -> list[str]:
    out = [f"prompt {g.prompt_id} ({g.prompt[:50]!r}) has {g.n} candidate(s): left out" for g, r in zip(groups, results)
           if r is None]
    inconsistent = [(r["summary"]["consistency"]["consistency"], g) for g, r in zip(groups, results)
                  if r and r["summary"]["consistency"] and r["summary"]["consistency"]["consistency"] < sc.min_consistency
                  and r["summary"]["judge_kind"] == "model"]  # a reward function's consistency only reflects its ties
    out += [f"prompt {g.prompt_id} ({g.prompt[:50]!r}): preference consistency {v:.2f} < spmcmc.min_consistency="
            f"{sc.min_consistency}; its pairs are close to coin flips" for v, g in sorted(inconsistent, key=lambda t: t[0])[:10]]
    if len(inconsistent) > 10:
        out.append(f"... and {len(inconsistent) - 10} more prompts below spmcmc.min_consistency")
    flat = [g for g, r in zip(groups, results) if r and (r["summary"]["active"] or {}).get("stop") == "flat"]
    if flat:
        out.append(f"{len(flat)} of {len(groups)} prompts are flat (the active design stopped early: no pair's "
                   f"order-averaged choice can reach spmcmc.flat_w={sc.flat_w}), e.g. {flat[0].prompt_id} "
                   f"({flat[0].prompt[:50]!r}); no confident DPO pair can come from them")
    loose = [g for g, r in zip(groups, results) if r and (r["summary"]["active"] or {}).get("stop") == "precise"
             and (r["summary"]["active"].get("distance_from_uniform") or 0.0) < 2 * sc.precision]
    if loose:
        out.append(f"{len(loose)} of {len(groups)} prompts stopped as precise (expected TV error <= spmcmc.precision="
                   f"{sc.precision}) while their whole preference is less than twice that from uniform, e.g. "
                   f"{loose[0].prompt_id}: the precision is absolute, so their order is not settled; a smaller "
                   "spmcmc.precision measures them further")
    others = {}
    for r in results:
        for w in (r["summary"]["warnings"] if r else []):
            # per-prompt consistency lines are listed above; the pooled confound warning speaks for all prompts
            if "preference consistency" not in w and "the confounds explain" not in w:  # one line per kind
                others.setdefault(re.sub(r"[0-9.]+", "#", w.split(":")[0]), []).append(w)
    out += [f"{len(ws)} of {len(groups)} prompts, e.g. {ws[0]}" for ws in others.values()]
    return out


SCORE_REASON = {
    "exact": "stationary: the exact stationary distribution of the paper's chain, solved from every comparison "
             "(no chain sampling noise; visit frequencies only approximate it)",
    "sparse": "sparse: the exact stationary distribution of the same Barker chain with its proposal restricted to "
              "the design's graph (equals Bradley–Terry strengths for a BT judge; close to the full answer otherwise)",
    "active": "active: the exact stationary distribution of the paper's chain with every comparison the active "
              "design did not make filled in by the judge's GLM (pipeline/estimates.py: imputed_stationary)",
    "chains": "bt: Bradley–Terry on the soft choices of every pair the chains compared (uses each comparison's "
              "probability, not only the accept/reject draw; closer to the exact answer than visit counts at "
              "the same budget, see scripts/bench_estimators.py)",
}


def _judge_figures(raw: dict, mass: dict, probs: dict, n: int, shift: float, cfg: Config) -> dict:
    p_first = np.array(list(raw.values()))
    masses = np.array([mass[k] for k in raw if k in mass])
    return {"position_bias": float(p_first.mean()), "calibration": cfg.judge.calibration, "calibration_shift": shift,
            "label_mass_mean": float(masses.mean()) if masses.size else None,
            "label_mass_min": float(masses.min()) if masses.size else None, **intransitivity(probs, n)}


def _strength(probs: dict, score: np.ndarray) -> dict:
    """How strong the preferences are (consistency says only how reliably they were measured):
    the mean order-averaged |W - 1/2| over pairs compared in both orders, and the score's extremes as
    multiples of the uniform share."""
    w = [order_averaged(probs, a, b) for a, b in compared_edges(probs)]
    n = len(score)
    p = score[score > 0]
    return {"mean_abs_w_minus_half": float(np.mean(np.abs(np.array(w) - 0.5))) if w else None,
            "max_w": float(max(max(w), 1 - min(w))) if w else None,
            "entropy": float(-(p * np.log(p)).sum() / np.log(n)),  # of the score; 1 = uniform, 0 = one answer
            "top_over_uniform": float(score.max() * n), "bottom_over_uniform": float(score.min() * n)}


def _agreement(est: dict, score: str, mode: str) -> dict:
    """Each estimate against the reference (the exact distribution when computed, else the score):
    total variation, Spearman, and its mean standard error."""
    ref = est["stationary" if mode == "exact" else score][0]
    ranked = [name for name, (value, _) in est.items() if np.ptp(value) > 0] if np.ptp(ref) > 0 else []
    rhos = dict(zip(ranked, confounds.spearman_against(ref, [est[name][0] for name in ranked])[0])) if ranked else {}
    out = {}
    for name, (value, se) in est.items():
        rho = rhos.get(name)
        out[name] = {"tv_vs_reference": total_variation(value, ref),
                     "spearman_vs_reference": None if rho is None else float(rho),
                     "mean_se": float(np.nanmean(se)), "min": float(value.min()), "max": float(value.max())}
    return {"reference": "stationary" if mode == "exact" else score, **out}


def _chain_figures(trace: dict | None, n: int, sc, design_pairs: set) -> dict:
    if trace is None:
        return {"chains_run": False}
    states = states_after(trace)[:, sc.burn_in::sc.thin]
    diag = chain_diagnostics(states, n, sc.diagnostics_top_k)
    return {"chains_run": True, "num_chains": sc.num_chains, "iterations_per_chain": sc.iterations, "order": sc.order,
            "steps": int(len(trace["step"])), "acceptance_rate": float(trace["accepted"].mean()),
            **chain_cache_stats(trace, sc.order, design_pairs), **{k: v for k, v in diag.items() if k != "per_candidate"},
            "mixing_warnings": mixing_warnings(diag), "_per_candidate": diag["per_candidate"]}


def _warnings(s: dict, sc) -> list[str]:
    out = list(s.get("mixing_warnings", []))
    rel = s["consistency"]
    if rel is None:
        out.append("the preference consistency could not be computed (fewer than 4 compared pairs)")
    elif rel["consistency"] < sc.min_consistency and s["judge_kind"] == "model":  # a function's: only its ties
        out.append(f"preference consistency {rel['consistency']:.2f} < spmcmc.min_consistency={sc.min_consistency}: "
                   "the judge's preferences were not measured reliably (two halves of the evidence disagree); "
                   "more comparisons (spmcmc.budget, spmcmc.degree), more candidates (sample_space.num_samples), "
                   "or a stronger judge model would change that; pairs built from it are close to coin flips")
    if (s["active"] or {}).get("stop") == "flat":
        out.append(f"flat: the active design stopped after {s['active']['comparisons']} comparisons because no pair's "
                   f"order-averaged choice can reach spmcmc.flat_w={sc.flat_w} (upper 95% bound); no confident DPO "
                   "pair can come from this prompt")
    st = s["strength"]
    if st["top_over_uniform"] < NEAR_FLAT:
        lean = st["mean_abs_w_minus_half"] or 0.0
        out.append(f"near-flat preferences: the most preferred candidate gets {st['top_over_uniform']:.2f}x the uniform "
                   f"share and the least {st['bottom_over_uniform']:.2f}x; the judge's order-averaged choice between two "
                   f"candidates is on average {0.5 + lean:.3f} vs {0.5 - lean:.3f}: pairs from it are weak evidence "
                   "(see preferences' confidence)")
    if s["label_mass_mean"] is not None and s["label_mass_mean"] < 0.5:
        out.append(f"the model puts only {s['label_mass_mean']:.2f} of its probability on the two labels on average: "
                   "it often does not answer in the asked format")
    if abs(s["position_bias"] - 0.5) > 0.25 and s["calibration"] == "none":
        out.append(f"strong position bias: P(first shown chosen) = {s['position_bias']:.2f}; both orders are "
                   "averaged, and judge.calibration=mean_logit removes the mean shift")
    return out


def _candidates(space, groups: list[Group], results: list):
    """The sample space's columns, visits, and every estimate with its standard error, per prompt."""
    from datasets import Dataset, concatenate_datasets

    keep = [c for c in ("id", "prompt_id", "prompt", "text", "count", "n_tokens", "sum_logprob", "mean_logprob",
                        "is_greedy", "source", "text_sha") if c in space.column_names]  # the confounds' sources too
    cands = space.select_columns(keep)
    columns = {c: [] for c in ("visits", *[COLUMN[e] + suffix for e in ESTIMATES for suffix in ("", "_se")],
                               "score", "score_se", "controlled", "controlled_se")}
    for g, r in zip(groups, results):
        none = [None] * g.n
        chained = r is not None and r["states"] is not None  # visits after burn-in and thinning
        columns["visits"] += np.bincount(r["states"].ravel(), minlength=g.n).tolist() if chained else none
        for name in ESTIMATES:
            value, se = r["est"].get(name, (none, none)) if r else (none, none)
            columns[COLUMN[name]] += list(map(_num, value))
            columns[COLUMN[name] + "_se"] += list(map(_num, se))
        score = r["est"][r["score"]] if r else (none, none)
        columns["score"] += list(map(_num, score[0]))
        columns["score_se"] += list(map(_num, score[1]))
        controlled = r["controlled"] if r and r["controlled"] is not None else (none, none)
        columns["controlled"] += list(map(_num, controlled[0]))
        columns["controlled_se"] += list(map(_num, controlled[1]))
    # one table beside the other: add_column hashed every column's values for its fingerprint (0.5 ms a prompt)
    return concatenate_datasets([cands, Dataset.from_dict(columns)], axis=1)


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _lines(s: dict) -> list[str]:
    return _prompt_lines(s) if s["n_prompts"] == 1 else _run_lines(s)


def _run_lines(s: dict) -> list[str]:
    rel, strength = s["consistency"], s["strength"]
    lines = [f"{s['n_prompts']} prompts, {s['n_candidates']} candidates, judge calls={s['judge_calls']}, mode={s['mode']}, "
             f"score={s['score_estimate']}",
             f"preference consistency: mean {number(rel['consistency'])}, worst {number(rel['min'])} "
             f"({rel['worst_prompt']}); position bias {number(s['position_bias'])}; label mass "
             f"{number(s['label_mass_mean'])}; preference strength: mean |W - 1/2| "
             f"{number(strength['mean_abs_w_minus_half'])}, top {number(strength['top_over_uniform'], '.2f')}x uniform"]
    if s["active"]:
        a = s["active"]
        lines.append(f"active design: {a['comparisons']:,} of {a['budget']:,} comparisons ({a['comparisons'] / a['budget']:.0%}) "
                     f"in {a['rounds']} rounds; prompts stopped: " + ", ".join(f"{k} {v}" for k, v in a["stops"].items()))
    lines += [f"  {r['prompt'][:40]:40s} N={r['n_candidates']:<3d} consistency {number(r['consistency'], '.2f')}  top "
              f"{number(r['top_over_uniform'], '.2f')}x  calls {r['judge_calls']}"
              + (f"  ({r['design_stop']})" if r["design_stop"] else "") for r in s["per_prompt"][:30]]
    return lines + _run_confound_lines(s["confounds"]) + [f"warning: {w}" for w in s["warnings"]]


def _tracks(features: dict) -> str:
    """'length -0.61 [-0.77, -0.39]  logprob ...': each confound's Spearman with the score and its interval."""
    signed = lambda v: number(v, "+.2f")  # noqa: E731
    return "  ".join(f"{k} {signed(f['spearman'])} [{signed(f['ci_low'])}, {signed(f['ci_high'])}]"
                     for k, f in features.items() if f["spearman"] is not None)


def _run_confound_lines(c: dict) -> list[str]:
    tracks = _tracks(c["features"])
    ex, ctrl = c["explained"], c["controlled"]
    lines = [f"the score tracks (mean within-prompt Spearman, 95% t interval over prompts): {tracks or 'n/a'}",
             f"confounds explain R² = {number(ex['r2'], '.2f')} (adjusted {number(ex['r2_adjusted'], '.2f')}) of the "
             f"judge's strengths within prompts; the greedy answer's mean rank {number(c['greedy_rank_mean'], '.1f')}"]
    if ctrl:
        lines.append(f"controlled for {confounds.controlled_for(ctrl)}: strength {number(ctrl['strength']['mean'], '.4f')} "
                     f"(raw {number(c['raw_strength']['mean'], '.4f')}), consistency "
                     f"{number(ctrl['consistency']['mean'], '.2f')}; a preference is left (Wald p < 0.05) in "
                     f"{wald_prompts(ctrl)}")
    return lines


def _prompt_lines(s: dict) -> list[str]:
    rel = s["consistency"]
    lines = [f"N={s['n_candidates']}  mode={s['mode']} ({s['mode_reason']})  judge calls={s['judge_calls']}  "
             f"score={s['score_estimate']}",
             f"preference consistency (split-half, Spearman-Brown) = {number(rel and rel['consistency'])}  "
             f"position bias P(first chosen)={s['position_bias']:.3f}  label mass mean={number(s['label_mass_mean'])}"
             f"  intransitive triads={number(s['intransitive_share'])}",
             f"preference strength: mean |W - 1/2| = {number(s['strength']['mean_abs_w_minus_half'])}  score "
             f"range {s['strength']['bottom_over_uniform']:.2f}x-{s['strength']['top_over_uniform']:.2f}x the uniform share"]
    lines += [f"  {name:13s} TV vs {s['estimates']['reference']} {e['tv_vs_reference']:.3f}  Spearman "
              f"{number(e['spearman_vs_reference'])}  range {e['min']:.4f}-{e['max']:.4f}  mean SE {e['mean_se']:.4f}"
              for name, e in s["estimates"].items() if name != "reference"]
    if s["chains_run"]:
        lines.append(f"chains: steps={s['steps']}  acceptance={s['acceptance_rate']:.3f}  new comparisons="
                     f"{s['chain_new_comparisons']}  max R-hat={number(s['max_rhat'])}  min ESS="
                     f"{number(s['min_ess_bulk'], '.0f')}")
    return lines + _confound_lines(s["confounds"]) + [f"warning: {w}" for w in s["warnings"]]


def _confound_lines(c: dict) -> list[str]:
    """What the preference tracks (each confound's Spearman with the score) and what is left when it is held fixed."""
    tracks = _tracks(c["features"])
    ex, raw = c["explained"] or {}, (c["raw_strength"] or {}).get("mean_abs_w_minus_half")
    lines = [f"the score tracks (Spearman, 95% CI): {tracks or 'n/a'}",
             f"confounds explain R² = {number(ex.get('r2'), '.2f')} (adjusted {number(ex.get('r2_adjusted'), '.2f')}) of "
             f"the judge's strengths; the greedy answer ranks {number(c['greedy_rank'], 'd')}"]
    ctrl = c["controlled"]
    if ctrl:
        st = ctrl["strength"]
        lines.append(f"controlled for {confounds.controlled_for(ctrl)}: strength mean |W - 1/2| = "
                     f"{number(st['mean_abs_w_minus_half'], '.4f')} [{number(st['ci_low'], '.4f')}, "
                     f"{number(st['ci_high'], '.4f')}] (raw {number(raw, '.4f')}), consistency "
                     f"{number((ctrl['consistency'] or {}).get('consistency'), '.2f')}"
                     + (f", greedy answer ranks {number(ctrl['greedy_rank'], 'd')}" if "greedy_rank" in ctrl else ""))
    return lines
