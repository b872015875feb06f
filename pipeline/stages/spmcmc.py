"""Stage 2 — spMCMC: the model's own preference distribution over the sample space, from its
binary choices ("which is funnier, A or B?"), every estimate with a standard error, and how reliably
the preferences were measured at all.

Inputs:  sample_space (id, text, count, is_greedy, text_sha)
Design:  `spmcmc.mode` (auto picks by `spmcmc.budget`): exact (all N(N-1) comparisons), sparse (each
         candidate compared in both orders with ~`degree` others on a seeded random connected graph;
         all comparisons known up front, so they batch fully), or chains (the paper's Metropolis–Hastings
         chains, uniform proposal, Barker acceptance). The chains also run when they cost nothing new
         (exact design) or when asked (`spmcmc.chains=true`). See pipeline/estimates.py.
Output:  candidates: id, text, count, is_greedy, source, text_sha, visits, and for each estimate its value
                     and standard error: frequency(_se), rao_blackwell(_se), bt_score(_se),
                     stationary(_se) (exact design), sparse(_se) (sparse design); score, score_se (the
                     stage's best estimate: summary.json says which and why)
         trace (chain, step, current, proposal, first_shown, p_accept, accepted),
         pairs (first_id, second_id, p_first, label_mass), diagnostics (id, rhat, ess_bulk);
         summary.json (reliability, position bias, label mass, agreement between estimates, warnings),
         estimates.png, running_frequency.png
Resume:  every computed comparison is appended to pair_cache.rank*.jsonl at once (the design in chunks);
         chain states, generators and traces are checkpointed every `checkpoint_every` steps in _state/
         and checked against the cache on resume. A restarted run reuses both: same artifact as an
         uninterrupted run.
Several processes: the design's comparisons (by first candidate) and the chains are split across
         processes; caches and traces are gathered; the main process writes the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import parallel, tracking
from pipeline.artifacts import STATE_DIR, StageError, failpoint, write_json
from pipeline.chains import CachedJudge, Chain, new_chains, run_chains, shown_pairs, states_after, trace_arrays
from pipeline.config import Config
from pipeline.estimates import (
    ESTIMATES,
    SCORE_OF_MODE,
    all_estimates,
    calibration_shift,
    compared_edges,
    order_averaged,
    ordered,
    plan_design,
    shifted,
    wants_chains,
)
from pipeline.judge import cached_model_judge, fill_pairs
from pipeline.plots import estimate_plots
from pipeline.stationary import chain_diagnostics, intransitivity, mixing_warnings, total_variation

NAME, VERSION = "spmcmc", 2
SETTINGS = ("model", "sample_space", "judge", "spmcmc")
DISTRIBUTED = True
NEAR_FLAT = 1.5  # warn when no candidate gets 1.5x the uniform share
COLUMN = {"frequency": "frequency", "rao_blackwell": "rao_blackwell", "bt": "bt_score", "stationary": "stationary",
          "sparse": "sparse"}  # estimate -> candidates column (its standard error: column + "_se")


def _load_chains(state: Path, ids: list[int], n: int, seed: int, num_chains: int):
    fresh = {c.id: c for c in new_chains(n, num_chains, seed)}
    chains, rows = [], []
    for c in ids:
        path = state / f"chain_{c}.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            chains.append(Chain.from_state(saved["state"]))
            rows += [tuple(r) for r in saved["rows"]]
        else:
            chains.append(fresh[c])
    return chains, rows


def _checkpoint(state: Path, chains: list[Chain], rows: list[tuple]) -> None:
    for c in chains:
        write_json(state / f"chain_{c.id}.json", {"state": c.state(), "rows": [r for r in rows if r[0] == c.id]})


def sample_chains(cfg: Config, cached: CachedJudge, n: int, workdir: Path) -> dict:
    """This process's chains, resumed from their checkpoints; returns their whole trace."""
    from tqdm.auto import tqdm

    sc = cfg.spmcmc
    state = workdir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    ids = list(range(parallel.rank(), sc.num_chains, parallel.world_size()))
    chains, rows = _load_chains(state, ids, n, sc.seed, sc.num_chains)
    if any(p not in cached.probs for r in rows for p in shown_pairs(r[2], r[3], r[4] == r[3], sc.order)):
        # the checkpoints used comparisons the pair cache no longer holds (deleted or damaged): chains
        # and cache must agree, so the chains start again and the cache fills as before
        print(f"[spmcmc] chain checkpoints use comparisons missing from the pair cache: restarting chains {ids}",
              flush=True)
        for c in ids:
            (state / f"chain_{c}.json").unlink(missing_ok=True)
        chains, rows = _load_chains(state, ids, n, sc.seed, sc.num_chains)
    cached.lookups = cached.hits = 0  # the bar shows the chains' own hit rate
    bar = tqdm(total=len(ids) * sc.iterations, initial=sum(c.step for c in chains), desc="[spmcmc] chains",
               unit="step")

    accepted = [sum(r[6] for r in rows)]  # running count: no rescan of the trace each step

    def on_step(active, new):
        rows.extend(new)
        accepted[0] += sum(r[6] for r in new)
        bar.update(len(new))
        bar.set_postfix(accept=f"{accepted[0] / len(rows):.2f}", cache_hit=f"{cached.hit_rate:.2f}", refresh=False)
        if active[0].step % sc.checkpoint_every == 0 or active[0].step == sc.iterations:
            _checkpoint(state, chains, rows)
        failpoint("spmcmc.step")

    run_chains(chains, n, cached, sc.iterations, sc.order, on_step=on_step)
    bar.close()
    _checkpoint(state, chains, rows)
    return trace_arrays(rows)


def run(cfg: Config, inputs: dict, workdir: Path):
    space = inputs["sample_space"].load()
    n, sc = space.num_rows, cfg.spmcmc
    if n < 2:
        raise StageError(f"spMCMC needs at least 2 candidates; the sample space has {n} "
                         "(raise sample_space.num_samples or loosen its filters)")
    mode, edges, _ = plan_design(sc, n)
    chains = wants_chains(sc.chains, mode)
    if cfg.judge.calibration != "none" and (mode == "chains" or (chains and mode != "exact")):
        raise StageError(f"judge.calibration={cfg.judge.calibration} needs every comparison known before the "
                         f"estimates (spmcmc.mode exact or sparse, without extra chains); this run is mode={mode}")
    from pipeline.models import load_model

    cached, store = cached_model_judge(cfg, space["text"], workdir, lambda: load_model(cfg.model),
                                       cfg.sample_space.query, rank=parallel.rank())
    if edges:  # the whole design first: the chains then run from the cache where they can
        fill_pairs(cached, ordered(edges), f"[spmcmc] {mode} design", chunk=sc.design_chunk)
    if chains and cfg.judge.calibration != "none":  # exact design: every comparison is known, none is computed
        cached = CachedJudge(cached.judge, shifted(cached.probs, calibration_shift(cached.probs, "mean_logit")))
    trace = sample_chains(cfg, cached, n, workdir) if chains else None
    parts = parallel.gather({"trace": trace, "probs": store.load(), "mass": store.label_mass})
    if not parallel.is_main():
        return None
    merged = None
    if chains:
        merged = {k: np.concatenate([p["trace"][k] for p in parts]) for k in parts[0]["trace"]}
        by_chain = np.lexsort((merged["step"], merged["chain"]))  # one order however the run was split or resumed
        merged = {k: v[by_chain] for k, v in merged.items()}
    probs = {k: v for p in parts for k, v in p["probs"].items()}
    mass = {k: v for p in parts for k, v in p["mass"].items()}
    return summarise(cfg, space, merged, probs, mass, workdir)


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


def summarise(cfg: Config, space, trace: dict | None, raw_probs: dict, mass: dict, workdir: Path):
    """Estimates with standard errors, reliability, diagnostics, plots and the artifact."""
    from datasets import Dataset, DatasetDict

    sc, n = cfg.spmcmc, space.num_rows
    mode, edges, why = plan_design(sc, n)
    shift = calibration_shift(raw_probs, cfg.judge.calibration)
    probs = shifted(raw_probs, shift)
    est, rel = all_estimates(probs, n, sc.order, mode, edges, trace, sc.burn_in, sc.thin, sc.bt_alpha, sc.bootstrap,
                             sc.reliability_splits, sc.seed)
    score = SCORE_OF_MODE[mode]
    summary = {"n_candidates": n, "mode": mode, "mode_reason": why, "design_edges": len(edges),
               "design_comparisons": 2 * len(edges), "judge_calls": len(raw_probs), "score_estimate": score,
               "score_reason": SCORE_REASON[mode], "reliability": rel.get("score"),
               "reliability_frequency": rel.get("frequency"), **_judge_figures(raw_probs, mass, probs, n, shift, cfg),
               "strength": _strength(probs, est[score][0]), "estimates": _agreement(est, score, mode),
               **_chain_figures(trace, n, sc, set(ordered(edges)))}
    summary["warnings"] = _warnings(summary, sc)
    per_candidate = summary.pop("_per_candidate", [])
    write_json(workdir / "summary.json", summary)
    states = states_after(trace)[:, sc.burn_in::sc.thin] if trace is not None else None
    plots = estimate_plots(workdir, space["text"], est, score, states)
    _report(summary, workdir, plots)
    return DatasetDict({
        "candidates": _candidates(space, est, score, trace, n, sc),
        "trace": Dataset.from_dict({k: v.tolist() for k, v in (trace or trace_arrays([])).items()}),
        "pairs": Dataset.from_dict({"first_id": [k[0] for k in sorted(raw_probs)],
                                    "second_id": [k[1] for k in sorted(raw_probs)],
                                    "p_first": [raw_probs[k] for k in sorted(raw_probs)],
                                    "label_mass": [mass.get(k) for k in sorted(raw_probs)]}),
        "diagnostics": Dataset.from_list(per_candidate) if per_candidate
        else Dataset.from_dict({"id": [], "rhat": [], "ess_bulk": []}),
    })


SCORE_REASON = {
    "exact": "stationary: the exact stationary distribution of the paper's chain, solved from every comparison "
             "(no chain sampling noise; visit frequencies only approximate it)",
    "sparse": "sparse: the exact stationary distribution of the same Barker chain with its proposal restricted to "
              "the design's graph (equals Bradley–Terry strengths for a BT judge; close to the full answer otherwise)",
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
    """How strong the preferences are (reliability says only how consistently they were measured):
    the mean order-averaged |W - 1/2| over pairs compared in both orders, and the score's extremes as
    multiples of the uniform share."""
    w = [order_averaged(probs, a, b) for a, b in compared_edges(probs)]
    n = len(score)
    return {"mean_abs_w_minus_half": float(np.mean(np.abs(np.array(w) - 0.5))) if w else None,
            "max_w": float(max(max(w), 1 - min(w))) if w else None,
            "top_over_uniform": float(score.max() * n), "bottom_over_uniform": float(score.min() * n)}


def _agreement(est: dict, score: str, mode: str) -> dict:
    """Each estimate against the reference (the exact distribution when computed, else the score):
    total variation, Spearman, and its mean standard error."""
    from scipy.stats import spearmanr

    ref = est["stationary" if mode == "exact" else score][0]
    out = {}
    for name, (value, se) in est.items():
        rho = spearmanr(value, ref).statistic if np.ptp(value) > 0 and np.ptp(ref) > 0 else None
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
    rel = s["reliability"]
    if rel is None:
        out.append("the preference reliability could not be computed (fewer than 4 compared pairs)")
    elif rel["reliability"] < sc.min_reliability:
        out.append(f"preference reliability {rel['reliability']:.2f} < spmcmc.min_reliability={sc.min_reliability}: "
                   "the model's preferences were not measured reliably (two halves of the evidence disagree); "
                   "more comparisons (spmcmc.budget, spmcmc.degree), more candidates (sample_space.num_samples), "
                   "or a stronger judge model would change that; pairs built from it are close to coin flips")
    st = s["strength"]
    if st["top_over_uniform"] < NEAR_FLAT:
        lean = st["mean_abs_w_minus_half"] or 0.0
        out.append(f"near-flat preferences: the most preferred candidate gets {st['top_over_uniform']:.2f}x the uniform "
                   f"share and the least {st['bottom_over_uniform']:.2f}x; the model's order-averaged choice between two "
                   f"candidates is on average {0.5 + lean:.3f} vs {0.5 - lean:.3f}: pairs from it are weak evidence "
                   "(see preferences' confidence)")
    if s["label_mass_mean"] is not None and s["label_mass_mean"] < 0.5:
        out.append(f"the model puts only {s['label_mass_mean']:.2f} of its probability on the two labels on average: "
                   "it often does not answer in the asked format")
    if abs(s["position_bias"] - 0.5) > 0.25 and s["calibration"] == "none":
        out.append(f"strong position bias: P(first shown chosen) = {s['position_bias']:.2f}; both orders are "
                   "averaged, and judge.calibration=mean_logit removes the mean shift")
    return out


def _candidates(space, est: dict, score: str, trace: dict | None, n: int, sc):
    from pipeline.chains import visit_counts

    keep = [c for c in ("id", "text", "count", "is_greedy", "source", "text_sha") if c in space.column_names]
    cands = space.select_columns(keep)
    visits = visit_counts(trace, n, sc.burn_in, sc.thin).tolist() if trace is not None else [None] * n
    cands = cands.add_column("visits", visits)
    for name in ESTIMATES:
        value, se = est.get(name, ([None] * n, [None] * n))
        cands = cands.add_column(COLUMN[name], list(map(_num, value))).add_column(COLUMN[name] + "_se", list(map(_num, se)))
    return cands.add_column("score", est[score][0].tolist()).add_column("score_se", list(map(_num, est[score][1])))


def _num(v):
    return None if v is None or not np.isfinite(v) else float(v)


def _report(s: dict, workdir: Path, plots: list[Path]) -> None:
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    rel = s["reliability"]
    print(f"[spmcmc] N={s['n_candidates']}  mode={s['mode']} ({s['mode_reason']})  judge calls={s['judge_calls']}  "
          f"score={s['score_estimate']}\n"
          f"[spmcmc] preference reliability (split-half, Spearman-Brown) = "
          f"{fmt(rel and rel['reliability'], '.3f')}  position bias P(first chosen)={s['position_bias']:.3f}  "
          f"label mass mean={fmt(s['label_mass_mean'], '.3f')}  intransitive triads={fmt(s['intransitive_share'], '.3f')}\n"
          f"[spmcmc] preference strength: mean |W - 1/2| = {fmt(s['strength']['mean_abs_w_minus_half'], '.3f')}  score "
          f"range {s['strength']['bottom_over_uniform']:.2f}x-{s['strength']['top_over_uniform']:.2f}x the uniform share",
          flush=True)
    for name, e in s["estimates"].items():
        if name != "reference":
            print(f"[spmcmc]   {name:13s} TV vs {s['estimates']['reference']} {e['tv_vs_reference']:.3f}  Spearman "
                  f"{fmt(e['spearman_vs_reference'], '.3f')}  range {e['min']:.4f}-{e['max']:.4f}  mean SE "
                  f"{e['mean_se']:.4f}", flush=True)
    if s["chains_run"]:
        print(f"[spmcmc] chains: steps={s['steps']}  acceptance={s['acceptance_rate']:.3f}  new comparisons="
              f"{s['chain_new_comparisons']}  max R-hat={fmt(s['max_rhat'], '.3f')}  min ESS={fmt(s['min_ess_bulk'], '.0f')}",
              flush=True)
    for w in s["warnings"]:
        print(f"[spmcmc] warning: {w}", flush=True)
    flat = {"reliability": rel and rel["reliability"], **{f"tv_{k}": e["tv_vs_reference"]
                                                          for k, e in s["estimates"].items() if k != "reference"}}
    tracking.summary({f"spmcmc/{k}": v for k, v in {**s, **flat}.items()
                      if isinstance(v, (int, float)) and not isinstance(v, bool) and v is not None})
    for p in plots:
        tracking.image(f"spmcmc/{p.stem}", p)
