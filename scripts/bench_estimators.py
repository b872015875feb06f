"""Which design and estimate reach the model's preference distribution with the fewest judge comparisons?

Fake judges only (no model, seconds): N candidates, the full exact stationary distribution of the
paper's chain (all N(N-1) comparisons) as the truth, and for each design and estimate the comparisons
it used, total variation and Spearman against that truth.

    python scripts/bench_estimators.py             # N=237, three judges
    python scripts/bench_estimators.py --n 100

Judges: `bt` Bradley–Terry with a first-position bias; `intransitive` the same plus antisymmetric
logit noise (SD 0.5) per pair; `order` the intransitive judge with SmolLM2's strong first-position bias
(P(first chosen) ~ 0.87) that also differs by candidate (SD 0.5 logits: some answers gain more from being
shown first); `flat` a nearly flat judge with that position bias, like SmolLM2-135M's (preference logits
of SD 0.1, noise of SD 0.1); `null` no preference at all (noise of SD 0.05 only): the active design
should call it flat and stop early.
Designs: chains, sparse (by degree), active (pipeline/active.py; by budget with no precision target, and
at the default precision, where it stops by itself), exact; and two oracle references, built from what no design knows: the
judge without its per-pair noise (the TV the uncompared pairs' noise alone leaves) and an allocation by the true
distribution (degrees proportional to pi, estimated as the active design is; a reference, not a bound: on
the order judge the active design does better).
Pair accuracy: the share of the preferences stage's default pairs (top quarter against bottom quarter,
capped as configured), built from the estimate, that point the same way as under the exact distribution.
Last line: `comparisons_for_tv05=C spearman_at_5000=S pair_accuracy_at_1500=A` for the pipeline's default
(spmcmc.mode=auto) on the N=237 intransitive judge: C, the fewest comparisons at which it reaches TV <= 0.05;
S, its Spearman at a 5,000-comparison budget; A, its pair accuracy at a 1,500-comparison budget.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.active import PromptDesign, run_design  # noqa: E402
from pipeline.chains import CachedJudge, new_chains, run_chains  # noqa: E402
from pipeline.config import PreferencesConfig, SpmcmcConfig  # noqa: E402
from pipeline.diagnostics import total_variation  # noqa: E402
from pipeline.estimates import (  # noqa: E402
    MIN_DEGREE,
    all_estimates,
    bradley_terry,
    design_graph,
    exact_stationary,
    imputed_estimate,
    ordered,
    plan_design,
    solve_on_edges,
)
from pipeline.stages.preferences import apply_caps, candidate_pairs  # noqa: E402

JUDGES = ("bt", "intransitive", "order", "flat", "null")


def make_judge(kind: str, n: int, seed: int, pair_noise: bool = True):
    """The fake judge P(first chosen); pair_noise=False is the same judge without its per-pair noise (what a fit
    could at best recover)."""
    rng = np.random.default_rng(seed)
    if kind == "flat":
        theta, noise_sd, bias = rng.normal(0, 0.1, n), 0.1, 1.9
    elif kind == "null":
        theta, noise_sd, bias = np.zeros(n), 0.05, 1.9
    else:
        theta, noise_sd, bias = np.log(rng.gamma(1.0, size=n)), (0.0 if kind == "bt" else 0.5), 1.0
    noise = rng.normal(0, noise_sd, (n, n)) if noise_sd else np.zeros((n, n))
    noise = (noise - noise.T) / np.sqrt(2)  # antisymmetric: a cycle-making preference per pair
    noise = noise if pair_noise else np.zeros((n, n))  # drawn either way, so both judges share the other draws
    first_bonus = rng.normal(0, 0.5, n) if kind == "order" else np.zeros(n)
    bias = 1.9 if kind == "order" else bias

    def judge(first, second):
        return 1.0 / (1.0 + np.exp(-(theta[first] - theta[second] + noise[first, second] + bias + first_bonus[first])))
    return judge


def pair_accuracy(est: np.ndarray, truth: np.ndarray) -> float:
    """The share of the default preference pairs from `est` that the exact distribution orders the same way."""
    pc = PreferencesConfig()
    ids = list(range(len(est)))
    pairs = apply_caps(candidate_pairs(ids, dict(enumerate(est)), pc, np.random.default_rng(0)), pc.max_pairs,
                       pc.max_uses_per_candidate)
    return float(np.mean([truth[a] > truth[b] for a, b in pairs])) if pairs else float("nan")


def active_design(judge, n: int, budget: int, precision: float) -> tuple[CachedJudge, list]:
    sc = SpmcmcConfig(mode="active", budget=budget, precision=precision)
    cached, d = CachedJudge(judge), PromptDesign(n, 0)
    run_design([d], cached.probs, cached.ensure, sc)
    return cached, d


def score(est: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    return total_variation(est, truth), float(spearmanr(est, truth).statistic), pair_accuracy(est, truth)


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


def active_rows(judge, n: int, truth, budgets, order: str):
    rows = []
    for budget, precision in [(b, 1e-9) for b in budgets] + [(5000, SpmcmcConfig().precision)]:
        cached, d = active_design(judge, n, budget, precision)
        label = "active" if precision < 1e-6 else f"active (precision {precision}: {d.stop})"
        rows.append((label, "active", cached.calls, *score(imputed_estimate(cached.probs, n, order)[0], truth)))
    return rows


def degree_graph(n: int, degrees: np.ndarray) -> set:
    """The starting graph (two seeded cycles) grown greedily until each candidate has about `degrees[i]` partners:
    each time the largest remaining deficit gets the next largest one it has not met."""
    edges = {(min(e), max(e)) for e in design_graph(n, MIN_DEGREE, 0)}
    degree = np.bincount(np.array(list(edges)).ravel(), minlength=n).astype(float)
    while True:
        rank = np.argsort(degree - degrees, kind="stable")
        i = rank[0]
        partner = next((j for j in rank[1:] if (min(i, j), max(i, j)) not in edges), None)
        if degree[i] >= degrees[i] or partner is None:
            return edges
        edges.add((min(i, partner), max(i, partner)))
        degree[[i, partner]] += 1


def oracle_rows(kind: str, n: int, truth, budgets, order: str):
    """Two references built from what no design knows (the judge's noise, the true pi), for what the noise costs:
    - the judge without its per-pair noise, on every pair: the TV that the uncompared pairs' noise alone leaves;
    - an oracle allocation: a graph whose degrees follow the true distribution (more comparisons where pi is
      large, which is where TV is made), estimated as the active design is (GLM-imputed)."""
    clean = CachedJudge(make_judge(kind, n, seed=1, pair_noise=False))
    clean.ensure([(i, j) for i in range(n) for j in range(n) if i != j])
    rows = [("oracle: the judge without its pair noise", "stationary", 0, *score(exact_stationary(clean.probs, n, order),
                                                                              truth))]
    judge = make_judge(kind, n, seed=1)
    for budget in budgets:
        cached = CachedJudge(judge)
        cached.ensure(ordered(degree_graph(n, np.maximum(truth / truth.sum() * budget, MIN_DEGREE))))
        rows.append(("oracle allocation: degrees ∝ true π", "active", cached.calls,
                     *score(imputed_estimate(cached.probs, n, order)[0], truth)))
    return rows


def estimate_at(judge, n: int, budget: int, order: str) -> tuple[str, int, np.ndarray]:
    """The pipeline's default (mode=auto) at one budget: (mode, comparisons, estimate)."""
    mode, edges, _ = plan_design(SpmcmcConfig(budget=budget), n)
    if mode == "active":
        cached, _ = active_design(judge, n, budget, SpmcmcConfig().precision)
        return mode, cached.calls, imputed_estimate(cached.probs, n, order)[0]
    cached = CachedJudge(judge)
    if edges:
        cached.ensure(ordered(edges))
        return mode, cached.calls, solve_on_edges(cached.probs, n, order, edges)
    trace = run_chains(new_chains(n, 4, seed=0), n, cached, iterations=max(8, budget // 4), order=order)
    return mode, cached.calls, all_estimates(cached.probs, n, order, "chains", [], trace, 1, 1, 0.01, 0, 0, 0)[0]["bt"][0]


def default_curve(judge, n: int, truth, budgets, order: str):
    """The pipeline's default (mode=auto) at each budget: (budget, mode, comparisons, TV, Spearman, pair accuracy)."""
    out = []
    for budget in budgets:
        mode, calls, est = estimate_at(judge, n, budget, order)
        out.append((budget, mode, calls, *score(est, truth)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=237)
    ap.add_argument("--order", default="random")
    args = ap.parse_args()
    n, order = args.n, args.order
    print("| judge | design | estimate | comparisons | TV vs exact | Spearman vs exact | pair accuracy |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    curves = {}
    for kind in JUDGES:
        judge = make_judge(kind, n, seed=1)
        every = CachedJudge(judge)
        every.ensure([(i, j) for i in range(n) for j in range(n) if i != j])
        truth = exact_stationary(every.probs, n, order)
        rows = chains_rows(judge, n, truth, (1000, 2500, 5000, 10000, 20000), order)
        rows += sparse_rows(judge, n, truth, (4, 6, 8, 12, 16, 20, 30, 42), order)
        rows += active_rows(judge, n, truth, (1000, 1500, 2500, 5000, 10000), order)
        rows += oracle_rows(kind, n, truth, (1500, 2000, 2500), order)
        rows.append(("exact", "stationary", n * (n - 1), 0.0, 1.0, 1.0))
        for design, name, calls, tv, rho, acc in rows:
            print(f"| {kind} | {design} | {name} | {calls:,} | {tv:.3f} | {rho:.3f} | {acc:.3f} |")
        if kind == "intransitive":
            curves[kind] = default_curve(judge, n, truth, [*range(250, 6001, 250), 10000, 20000], order)
    print("\nDefault (spmcmc.mode=auto) on the intransitive judge, by budget:")
    print("| budget | mode | comparisons | TV | Spearman | pair accuracy |\n| ---: | --- | ---: | ---: | ---: | ---: |")
    for budget, mode, calls, tv, rho, acc in curves["intransitive"]:
        if budget in (250, 500, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 10000, 20000):
            print(f"| {budget:,} | {mode} | {calls:,} | {tv:.3f} | {rho:.3f} | {acc:.3f} |")
    reached = [calls for _, _, calls, tv, _, _ in curves["intransitive"] if tv <= 0.05]
    at_5000 = next(rho for budget, _, _, _, rho, _ in curves["intransitive"] if budget == 5000)
    acc_1500 = next(acc for budget, _, _, _, _, acc in curves["intransitive"] if budget == 1500)
    print(f"comparisons_for_tv05={min(reached) if reached else 'not_reached'} spearman_at_5000={at_5000:.3f} "
          f"pair_accuracy_at_1500={acc_1500:.3f}")


if __name__ == "__main__":
    main()
