"""Stage 2 — spMCMC: Metropolis–Hastings over the sample space with the model's own binary choice
as the acceptance rule; the visit frequencies estimate the model's preference distribution.

Inputs:  sample_space (id, text, count, is_greedy, text_sha)
Output:  candidates (id, text, count, is_greedy, visits, frequency, stationary, bt_score, text_sha),
         trace (chain, step, current, proposal, first_shown, p_accept, accepted),
         pairs (first_id, second_id, p_first, label_mass), diagnostics (id, rhat, ess_bulk);
         summary.json and plots (frequency_vs_exact.png, running_frequency.png)
Resume:  every computed comparison is appended to pair_cache.rank*.jsonl at once; chain states,
         generators and traces are checkpointed every `checkpoint_every` steps in _state/. A restarted
         run reuses both and continues each chain from its checkpoint: same trace as an uninterrupted run.
Several processes: chains (and the exact mode's comparisons) are split across processes; caches and
         traces are gathered; the main process writes the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline import parallel, tracking
from pipeline.artifacts import STATE_DIR, StageError, failpoint, log_work, write_json
from pipeline.chains import (
    CachedJudge,
    Chain,
    new_chains,
    run_chains,
    shown_pairs,
    states_after,
    trace_arrays,
    visit_counts,
)
from pipeline.config import Config
from pipeline.judge import ModelJudge, PairStore, judge_key
from pipeline.stationary import (
    bradley_terry,
    chain_diagnostics,
    exact_stationary,
    intransitivity,
    mixing_warnings,
    total_variation,
)

NAME, VERSION = "spmcmc", 1
SETTINGS = ("model", "judge", "spmcmc")
DISTRIBUTED = True
EXACT_CHUNK = 256  # comparisons per persisted batch in exact mode


def use_exact(mode: str, n: int, budget: int) -> bool:
    return mode == "true" or (mode == "auto" and n * (n - 1) <= budget)


def cached_model_judge(cfg: Config, texts: list[str], shas: list[str], folder: Path, load, adapter_key: str | None = None,
                       extra_cache_files: list[Path] = (), rank: int = 0) -> tuple[CachedJudge, PairStore]:
    """A memoising judge over `texts`; `load()` -> (model, tokenizer) runs only when a comparison is
    missing from the pair cache (the stage folder's, plus any `extra_cache_files`)."""
    key = judge_key(cfg.model, cfg.judge, cfg.sample_space.query, adapter_key)
    store = PairStore(folder, key, shas, rank=rank)
    holder = {}

    def judge(first, second):
        if "judge" not in holder:
            model, tok = load()
            holder["judge"] = ModelJudge(model, tok, cfg.judge, cfg.sample_space.query, texts)
        return holder["judge"](first, second)

    def persist(pairs, probs):
        store.append(pairs, probs, holder["judge"].last_mass.tolist())
        log_work(folder, "judge_comparisons", len(pairs))

    return CachedJudge(judge, store.load(extra_cache_files), on_new=persist), store


def fill_all_pairs(cached: CachedJudge, n: int, desc: str, distributed: bool = True) -> None:
    """Every ordered comparison; with `distributed`, rows are split across processes, then merged."""
    from tqdm.auto import tqdm

    rank, world = (parallel.rank(), parallel.world_size()) if distributed else (0, 1)
    mine = [(i, j) for i in range(rank, n, world) for j in range(n) if j != i]
    todo = [p for p in mine if p not in cached.probs]
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc=desc, unit="cmp") as bar:
        for start in range(0, len(todo), EXACT_CHUNK):
            cached.ensure(todo[start:start + EXACT_CHUNK])
            bar.update(min(EXACT_CHUNK, len(todo) - start))
            failpoint("spmcmc.exact_chunk")
    if distributed:
        for probs in parallel.gather({p: cached.probs[p] for p in mine}):
            cached.probs.update(probs)


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
    from pipeline.models import load_model

    cached, store = cached_model_judge(cfg, space["text"], space["text_sha"], workdir, lambda: load_model(cfg.model),
                                       rank=parallel.rank())
    exact = use_exact(sc.exact, n, sc.exact_budget)
    if exact:  # all comparisons first: the chains then run entirely from the cache
        fill_all_pairs(cached, n, "[spmcmc] exact: all comparisons")
    trace = sample_chains(cfg, cached, n, workdir)
    parts = parallel.gather({"trace": trace, "probs": cached.probs, "mass": store.label_mass})
    if not parallel.is_main():
        return None
    merged = {k: np.concatenate([p["trace"][k] for p in parts]) for k in trace}
    by_chain = np.lexsort((merged["step"], merged["chain"]))  # one order however the run was split or resumed
    merged = {k: v[by_chain] for k, v in merged.items()}
    probs = {k: v for p in parts for k, v in p["probs"].items()}
    mass = {k: v for p in parts for k, v in p["mass"].items()}
    return summarise(cfg, space, merged, probs, mass, exact, workdir)


def chain_cache_stats(trace: dict, order: str, exact: bool) -> dict:
    """Comparisons the chains looked up, and the share answered from the cache (a property of the
    trace, so a resumed run reports the same numbers as an uninterrupted one)."""
    cur, prop, first = trace["current"], trace["proposal"], trace["first_shown"]
    if order == "both":
        pairs = list(zip(cur, prop)) + list(zip(prop, cur))
    else:
        pairs = list(zip(first, np.where(first == cur, prop, cur)))
    lookups = len(pairs)
    new = 0 if exact else len(set(pairs))
    return {"chain_lookups": lookups, "chain_cache_hit_rate": 1.0 - new / lookups if lookups else None}


def summarise(cfg: Config, space, trace: dict, probs: dict, mass: dict, exact: bool, workdir: Path):
    """Estimates, diagnostics, plots and the artifact from the merged trace and pair cache."""
    from datasets import Dataset, DatasetDict

    sc, n = cfg.spmcmc, space.num_rows
    visits = visit_counts(trace, n, sc.burn_in, sc.thin)
    freq = visits / visits.sum()
    stationary = exact_stationary(probs, n, sc.order) if exact else None
    bt = bradley_terry(probs, n, sc.bt_alpha)
    diag = chain_diagnostics(states_after(trace)[:, sc.burn_in::sc.thin], n, sc.diagnostics_top_k)
    p_first = np.array(list(probs.values()))
    masses = np.array([mass[k] for k in probs if k in mass])
    summary = {
        "n_candidates": n, "num_chains": sc.num_chains, "iterations_per_chain": sc.iterations, "order": sc.order,
        "steps": int(len(trace["step"])), "acceptance_rate": float(trace["accepted"].mean()),
        "judge_calls": len(probs), **chain_cache_stats(trace, sc.order, exact),
        "position_bias": float(p_first.mean()), "label_mass_mean": float(masses.mean()) if masses.size else None,
        "label_mass_min": float(masses.min()) if masses.size else None, "exact": exact,
        "tv_frequency_vs_exact": total_variation(freq, stationary) if exact else None,
        "tv_bt_vs_exact": total_variation(bt, stationary) if exact else None,
        **intransitivity(probs, n), **{k: v for k, v in diag.items() if k != "per_candidate"},
    }
    summary["warnings"] = mixing_warnings(diag)
    if summary["label_mass_mean"] is not None and summary["label_mass_mean"] < 0.5:
        summary["warnings"].append(f"the model puts only {summary['label_mass_mean']:.2f} of its probability on the "
                                   "two labels on average: it often does not answer in the asked format")
    write_json(workdir / "summary.json", summary)
    plots = _plots(workdir, space["text"], freq, stationary, bt, trace, sc)
    _report(summary, workdir, plots)
    candidates = space.select_columns([c for c in ("id", "text", "count", "is_greedy", "source", "text_sha")
                                       if c in space.column_names])
    candidates = candidates.add_column("visits", visits.tolist()).add_column("frequency", freq.tolist())
    candidates = candidates.add_column("stationary", stationary.tolist() if exact else [None] * n)
    candidates = candidates.add_column("bt_score", bt.tolist())
    keys = sorted(probs)
    return DatasetDict({
        "candidates": candidates,
        "trace": Dataset.from_dict({k: v.tolist() for k, v in trace.items()}),
        "pairs": Dataset.from_dict({"first_id": [k[0] for k in keys], "second_id": [k[1] for k in keys],
                                    "p_first": [probs[k] for k in keys],
                                    "label_mass": [mass.get(k) for k in keys]}),
        "diagnostics": Dataset.from_list(diag["per_candidate"]),
    })


def _report(summary: dict, workdir: Path, plots: list[Path]) -> None:
    s = summary
    fmt = lambda v, f: "n/a" if v is None else format(v, f)  # noqa: E731
    print(f"[spmcmc] N={s['n_candidates']}  steps={s['steps']}  judge calls={s['judge_calls']}  "
          f"chain cache hit rate={fmt(s['chain_cache_hit_rate'], '.3f')}  acceptance={s['acceptance_rate']:.3f}\n"
          f"[spmcmc] position bias P(first chosen)={s['position_bias']:.3f}  label mass mean="
          f"{fmt(s['label_mass_mean'], '.3f')} min={fmt(s['label_mass_min'], '.3f')}\n"
          f"[spmcmc] TV(frequency, exact)={fmt(s['tv_frequency_vs_exact'], '.3f')}  max R-hat={fmt(s['max_rhat'], '.3f')}"
          f"  min ESS={fmt(s['min_ess_bulk'], '.0f')}  intransitive triads={fmt(s['intransitive_share'], '.3f')}",
          flush=True)
    for w in s["warnings"]:
        print(f"[spmcmc] warning: {w}", flush=True)
    tracking.summary({f"spmcmc/{k}": v for k, v in s.items() if isinstance(v, (int, float)) and v is not None})
    for p in plots:
        tracking.image(f"spmcmc/{p.stem}", p)


def _plots(workdir: Path, texts: list[str], freq, stationary, bt, trace: dict, sc) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = np.argsort(-(stationary if stationary is not None else freq), kind="stable")
    fig, ax = plt.subplots(figsize=(max(6, len(texts) * 0.12), 4))
    x = np.arange(len(texts))
    ax.bar(x, freq[order], color="tab:blue", alpha=0.6, label="chain visit frequency")
    if stationary is not None:
        ax.plot(x, stationary[order], "k.-", lw=1, label="exact stationary")
    ax.plot(x, bt[order], "r+", label="Bradley–Terry")
    ax.set_xlabel("candidate (sorted by preference)")
    ax.set_ylabel("probability")
    ax.set_title("spMCMC: visit frequency against the exact distribution")
    ax.legend()
    fig.tight_layout()
    paths = [workdir / "frequency_vs_exact.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    states = states_after(trace)
    top = order[:5]
    fig, axes = plt.subplots(1, len(top), figsize=(3 * len(top), 2.8), sharey=True, squeeze=False)
    steps = np.arange(1, states.shape[1] + 1)
    for ax, k in zip(axes[0], top):
        for c in range(states.shape[0]):
            ax.plot(steps, np.cumsum(states[c] == k) / steps, lw=0.8)
        if stationary is not None:
            ax.axhline(stationary[k], color="k", ls="--", lw=0.8)
        ax.set_title(f"id {k}: {texts[k][:24]}…", fontsize=7)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("running frequency")
    fig.suptitle("running frequency of the top candidates, one line per chain", fontsize=9)
    fig.tight_layout()
    paths.append(workdir / "running_frequency.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths
