"""Which design and estimate reach the model's preference distribution with the fewest judge comparisons?

Fake judges only (no model, seconds): N candidates, the full exact stationary distribution of the
paper's chain (all N(N-1) comparisons) as the truth, and for each design and estimate the comparisons
it used, total variation and Spearman against that truth.

    python scripts/bench_estimators.py             # N=237, three judges
    python scripts/bench_estimators.py --n 100

Judges: `bt` Bradley–Terry with a first-position bias; `intransitive` the same plus antisymmetric
logit noise (SD 0.5) per pair; `flat` a nearly flat judge with a strong position bias, like
SmolLM2-135M's (P(first chosen) ~ 0.87, preference logits of SD 0.1, noise of SD 0.1).
Last line: `comparisons_for_tv05=C spearman_at_5000=S` for the pipeline's default (spmcmc.mode=auto)
on the N=237 intransitive judge: C, the fewest comparisons at which it reaches TV <= 0.05; S, its
Spearman at a 5,000-comparison budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.chains import CachedJudge, new_chains, run_chains  # noqa: E402
from pipeline.config import SpmcmcConfig  # noqa: E402
from pipeline.diagnostics import total_variation  # noqa: E402
from pipeline.estimates import (  # noqa: E402
    all_estimates,
    bradley_terry,
    exact_stationary,  # noqa: E402
    ordered,
    plan_design,
    solve_on_edges,
)


def make_judge(kind: str, n: int, seed: int):
    rng = np.random.default_rng(seed)
    if kind == "flat":
        theta, noise_sd, bias = rng.normal(0, 0.1, n), 0.1, 1.9
    else:
        theta, noise_sd, bias = np.log(rng.gamma(1.0, size=n)), (0.5 if kind == "intransitive" else 0.0), 1.0
    noise = rng.normal(0, noise_sd, (n, n)) if noise_sd else np.zeros((n, n))
    noise = (noise - noise.T) / np.sqrt(2)  # antisymmetric: a cycle-making preference per pair

    def judge(first, second):
        return 1.0 / (1.0 + np.exp(-(theta[first] - theta[second] + noise[first, second] + bias)))
    return judge


def score(est: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    return total_variation(est, truth), float(spearmanr(est, truth).statistic)


def chains_rows(judge, n: int, truth, budgets, order: str):
    rows = []
    for budget in budgets:
        cached = CachedJudge(judge)
        trace = run_chains(new_chains(n, 4, seed=0), n, cached, iterations=budget // 4, order=order)
        est, _ = all_estimates(cached.probs, n, order, "chains", [], trace, min(100, budget // 8), 1, 0.01, 0, 0, 0)
        for name in ("frequency", "rao_blackwell", "bt"):
            rows.append(("chains", name, cached.calls, *score(est[name][0], truth)))
    return rows


def sparse_rows(judge, n: int, truth, degrees, order: str):
    rows = []
    for degree in degrees:
        sc = SpmcmcConfig(mode="sparse", degree=degree, budget=10**9)
        _, edges, _ = plan_design(sc, n)
        cached = CachedJudge(judge)
        cached.ensure(ordered(edges))
        rows.append(("sparse", "sparse", cached.calls, *score(solve_on_edges(cached.probs, n, order, edges), truth)))
        rows.append(("sparse", "bt", cached.calls, *score(bradley_terry(cached.probs, n, 0.01), truth)))
    return rows


def default_curve(judge, n: int, truth, budgets, order: str):
    """The pipeline's default (mode=auto) at each budget: (comparisons, TV, Spearman)."""
    out = []
    for budget in budgets:
        mode, edges, _ = plan_design(SpmcmcConfig(budget=budget), n)
        cached = CachedJudge(judge)
        if edges:
            cached.ensure(ordered(edges))
            est = solve_on_edges(cached.probs, n, order, edges)
        else:
            trace = run_chains(new_chains(n, 4, seed=0), n, cached, iterations=max(8, budget // 4), order=order)
            est = all_estimates(cached.probs, n, order, "chains", [], trace, 1, 1, 0.01, 0, 0, 0)[0]["bt"][0]
        out.append((budget, mode, cached.calls, *score(est, truth)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=237)
    ap.add_argument("--order", default="random")
    args = ap.parse_args()
    n, order = args.n, args.order
    print("| judge | design | estimate | comparisons | TV vs exact | Spearman vs exact |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    curves = {}
    for kind in ("bt", "intransitive", "flat"):
        judge = make_judge(kind, n, seed=1)
        every = CachedJudge(judge)
        every.ensure([(i, j) for i in range(n) for j in range(n) if i != j])
        truth = exact_stationary(every.probs, n, order)
        rows = chains_rows(judge, n, truth, (1000, 2500, 5000, 10000, 20000), order)
        rows += sparse_rows(judge, n, truth, (4, 8, 12, 16, 20, 30, 42), order)
        rows.append(("exact", "stationary", n * (n - 1), 0.0, 1.0))
        for design, name, calls, tv, rho in rows:
            print(f"| {kind} | {design} | {name} | {calls:,} | {tv:.3f} | {rho:.3f} |")
        curves[kind] = default_curve(judge, n, truth, range(250, 20001, 250), order)
    print("\nDefault (spmcmc.mode=auto) on the intransitive judge, by budget:")
    print("| budget | mode | comparisons | TV | Spearman |\n| ---: | --- | ---: | ---: | ---: |")
    for budget, mode, calls, tv, rho in curves["intransitive"]:
        if budget in (250, 500, 1000, 2000, 2500, 3000, 4000, 5000, 10000, 20000):
            print(f"| {budget:,} | {mode} | {calls:,} | {tv:.3f} | {rho:.3f} |")
    reached = [calls for _, _, calls, tv, _ in curves["intransitive"] if tv <= 0.05]
    at_5000 = next(rho for budget, _, _, _, rho in curves["intransitive"] if budget == 5000)
    print(f"comparisons_for_tv05={min(reached) if reached else 'not_reached'} spearman_at_5000={at_5000:.3f}")


if __name__ == "__main__":
    main()
