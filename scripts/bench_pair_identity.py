"""How many comparisons does a design need to find the same top and bottom candidates as every comparison?

Replays designs offline on a finished exact run of one prompt (`spmcmc.mode=exact`: its pair cache holds the judge's
answer for every ordered pair), so no model runs and a row takes seconds:

    python scripts/bench_pair_identity.py runs/jokes_dpo            # the output_dir of an exact run
    python scripts/bench_pair_identity.py runs/jokes_dpo --budgets 400 792 --seeds 10

For each budget and seed of the starting graph, the active design (pipeline/active.py, run to its budget) and a
random one (the same starting graph, then uniformly drawn pairs) are judged from the cache. Each is scored by the
preferences stage's ranking under control (spmcmc's `controlled`: the GLM strengths with the run's
confounds.control projected out) against the same ranking on every comparison: the share of the top and the bottom
preferences.top_fraction of candidates that are the same candidates. That share is a proxy for how many of exact
mode's DPO pairs a design keeps (the stage then also holds out test candidates and filters by confidence).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline import confounds  # noqa: E402
from pipeline.active import PromptDesign, local_probs, run_design  # noqa: E402
from pipeline.config import PreferencesConfig  # noqa: E402
from pipeline.estimates import MIN_DEGREE, design_graph  # noqa: E402
from pipeline.glm import fit_strengths  # noqa: E402
from pipeline.judge import PairStore  # noqa: E402


def load_run(run: Path):
    """(every cached comparison {(first, second): p}, n, the control projection M) of an exact run's spmcmc stage."""
    from datasets import load_from_disk

    stage = next((p for p in sorted((run / "spmcmc").glob("*")) if (p / "_COMPLETE").exists()), None)
    if stage is None:
        sys.exit(f"bench_pair_identity: no finished spmcmc stage under {run}")
    cand = load_from_disk(str(stage / "dataset"))["candidates"][:]
    if len(set(cand["prompt_id"])) != 1:
        sys.exit("bench_pair_identity: the run must have one prompt")
    key = json.loads((stage / "pair_cache.rank0.jsonl").open().readline())["k"]
    probs = PairStore(stage, [key], cand["text_sha"]).load()
    n = len(cand["id"])
    if len(probs) < n * (n - 1):
        sys.exit(f"bench_pair_identity: {len(probs)} of {n * (n - 1)} comparisons cached: an exact run is needed")
    cc = json.loads((stage / "meta.json").read_text())["config"]["confounds"]
    x, _ = confounds.standardised(confounds.features_of(cand, cc["formats"]), cc["control"])
    return probs, n, confounds.residual_maker(x)


def sides(probs: dict, n: int, m: np.ndarray, k: int) -> tuple[set, set]:
    """The top and bottom k candidates by the controlled strength on these comparisons."""
    order = np.argsort(-(m @ fit_strengths(probs, n).s), kind="stable")
    return set(order[:k].tolist()), set(order[-k:].tolist())


def active_edges(probs: dict, n: int, budget: int, seed: int) -> list:
    sc = SimpleNamespace(budget=budget, seed=seed, round_size=32, precision=0.0, flat_w=0.0)  # run to the budget
    d = PromptDesign(n, 0)
    run_design([d], probs, lambda pairs: None, sc)
    return d.edges


def random_edges(n: int, budget: int, seed: int) -> list:
    start = design_graph(n, MIN_DEGREE, seed * 1_000_003)  # the active design's starting graph
    started = set(start)
    rest = [(i, j) for i in range(n) for j in range(i + 1, n) if (i, j) not in started]
    pick = np.random.default_rng(seed).permutation(len(rest))[: max(budget // 2 - len(start), 0)]
    return start + [rest[t] for t in pick]


def design_edges(name: str, probs: dict, n: int, budget: int, seed: int) -> list:
    return active_edges(probs, n, budget, seed) if name == "active" else random_edges(n, budget, seed)


def same_sides(probs: dict, n: int, m: np.ndarray, truth: tuple[set, set], edges: list) -> float:
    """The share of the true top and bottom candidates that the design's comparisons put there."""
    k = len(truth[0])
    top, bottom = sides(local_probs(probs, PromptDesign(n, 0, edges)), n, m, k)
    return (len(top & truth[0]) + len(bottom & truth[1])) / (2 * k)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="output_dir of a finished exact run with one prompt")
    ap.add_argument("--budgets", type=int, nargs="+", default=None, help="comparisons (default 20-60%% of exact)")
    ap.add_argument("--seeds", type=int, default=6)
    args = ap.parse_args()
    probs, n, m = load_run(args.run)
    k = max(1, round(PreferencesConfig().top_fraction * n))
    truth = sides(probs, n, m, k)
    budgets = args.budgets or [round(f * n * (n - 1) / 2) * 2 for f in (0.2, 0.3, 0.4, 0.5, 0.6)]
    print(f"N={n}, {n * (n - 1)} comparisons in exact mode; top and bottom {k} by the controlled strength\n")
    print("| comparisons | share of exact | active: same candidates (mean, min-max over seeds) | random: same |")
    print("| ---: | ---: | --- | --- |")
    for budget in budgets:
        row = {}
        for name in ("active", "random"):
            share = [same_sides(probs, n, m, truth, design_edges(name, probs, n, budget, seed)) for seed in range(args.seeds)]
            row[name] = f"{np.mean(share):.3f} ({min(share):.2f}-{max(share):.2f})"
        print(f"| {budget:,} | {budget / (n * (n - 1)):.0%} | {row['active']} | {row['random']} |", flush=True)

if __name__ == "__main__":
    main()
