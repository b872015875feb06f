"""Estimates of the preference distribution on fake judges whose answer is known: each estimator,
its intervals, the consistency figure, the sparse design and calibration."""

import numpy as np
import pytest

from conftest import design_resumes
from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.config import SpmcmcConfig
from pipeline.diagnostics import total_variation
from pipeline.estimates import (
    REGULARISE,
    all_estimates,
    bradley_terry,
    calibration_shift,
    choose_mode,
    design_graph,
    exact_stationary,
    ilsr_stack,
    ordered,
    pair_edges,
    plan_design,
    resample_counts,
    shifted,
    solve_on_edges,
    split_half,
)

N = 20
W = np.random.default_rng(7).gamma(2.0, size=N)
PI = W / W.sum()


def bt_judge(first, second):
    return W[first] / (W[first] + W[second])


def intransitive_judge(n: int, seed: int, sd: float = 0.5, bias: float = 0.8):
    rng = np.random.default_rng(seed)
    theta, noise = rng.normal(size=n), rng.normal(0, sd, (n, n))
    noise = (noise - noise.T) / np.sqrt(2)
    return lambda f, s: 1 / (1 + np.exp(-(theta[f] - theta[s] + noise[f, s] + bias)))


def answers(judge, pairs):
    cached = CachedJudge(judge)
    cached.ensure(pairs)
    return cached.probs


def every_pair(n):
    return [(i, j) for i in range(n) for j in range(n) if i != j]


def test_each_estimator_recovers_a_bradley_terry_distribution():
    edges = design_graph(N, 6, seed=0)
    probs = answers(bt_judge, ordered(edges))
    trace = run_chains(new_chains(N, 8, seed=0), N, CachedJudge(bt_judge), iterations=6000)
    est, _ = all_estimates(probs, N, "random", "sparse", edges, trace, 200, 1, 1e-6, 0, 0, 0)
    assert np.abs(est["sparse"][0] - PI).max() < 1e-9  # detailed balance on any connected graph
    assert np.abs(est["bt"][0] - PI).max() < 1e-4
    assert total_variation(est["frequency"][0], PI) < 0.03
    assert total_variation(est["rao_blackwell"][0], PI) < total_variation(est["frequency"][0], PI) + 0.005
    full = answers(bt_judge, every_pair(N))
    assert np.abs(all_estimates(full, N, "random", "exact", design_graph(N, N - 1, 0), None, 0, 1, 1e-6, 0, 0, 0)[0]
                  ["stationary"][0] - PI).max() < 1e-9


def test_sparse_solve_equals_exact_solve_on_the_complete_graph():
    judge = intransitive_judge(15, seed=2)
    probs = answers(judge, every_pair(15))
    complete = design_graph(15, 14, seed=3)
    assert len(complete) == 15 * 14 // 2
    assert np.abs(solve_on_edges(probs, 15, "random", complete) - exact_stationary(probs, 15, "random")).max() < 1e-12


def test_design_is_connected_within_budget_and_seeded():
    for n, degree in ((10, 4), (50, 6), (237, 21)):
        edges = design_graph(n, degree, seed=1)
        assert edges == design_graph(n, degree, seed=1) != design_graph(n, degree, seed=2)
        assert 2 * len(edges) <= degree * n
        reach, frontier = {0}, [0]
        adj = {i: set() for i in range(n)}
        for a, b in edges:
            adj[a].add(b)
            adj[b].add(a)
        while frontier:
            frontier = [j for i in frontier for j in adj[i] if j not in reach and not reach.add(j)]
        assert len(reach) == n
    assert [choose_mode("auto", n, 5000) for n in (45, 100, 237, 2000)] == ["exact", "active", "active", "chains"]
    mode, edges, why = plan_design(SpmcmcConfig(budget=5000), 237)
    assert mode == "active" and edges == [] and "exceeds spmcmc.budget=5000" in why  # chosen as the judge answers


def test_intervals_cover_the_exact_distribution_at_about_their_nominal_rate():
    n = 40
    judge = intransitive_judge(n, seed=4)
    truth = exact_stationary(answers(judge, every_pair(n)), n, "random")
    sparse_cover, chain_cover = [], []
    for seed in range(12):
        edges = design_graph(n, 6, seed=seed)
        est, _ = all_estimates(answers(judge, ordered(edges)), n, "random", "sparse", edges, None, 0, 1, 0.01, 100, 0,
                               seed)
        value, se = est["sparse"]
        sparse_cover.append(np.mean(np.abs(value - truth) <= 1.96 * se))
        trace = run_chains(new_chains(n, 4, seed=seed), n, CachedJudge(judge), iterations=3000)
        value, se = _chain_freq(trace, n)
        chain_cover.append(np.mean(np.abs(value - truth) <= 1.96 * se))
    assert 0.88 <= np.mean(sparse_cover) <= 1.0, np.mean(sparse_cover)
    assert 0.85 <= np.mean(chain_cover) <= 1.0, np.mean(chain_cover)


def _chain_freq(trace, n):
    from pipeline.estimates import batch_means, chain_contributions

    return batch_means(chain_contributions(trace, n, 200, 1, rao_blackwell=False))


def test_consistency_is_high_for_a_strong_judge_and_near_zero_for_noise():
    n = 60
    edges = design_graph(n, 10, seed=0)
    strong = answers(intransitive_judge(n, seed=5, sd=0.2), ordered(edges))
    rng = np.random.default_rng(0)
    noise = {p: float(0.5 + rng.normal(0, 0.05)) for p in ordered(edges)}  # 0.5 plus noise, each order on its own
    _, rel_strong = all_estimates(strong, n, "random", "sparse", edges, None, 0, 1, 0.01, 0, 20, 0)
    _, rel_noise = all_estimates(noise, n, "random", "sparse", edges, None, 0, 1, 0.01, 0, 20, 0)
    assert rel_strong["score"]["consistency"] > 0.9
    assert abs(rel_noise["score"]["consistency"]) < 0.3


def test_calibration_removes_the_mean_logit_shift():
    judge = intransitive_judge(15, seed=6, bias=2.0)
    probs = answers(judge, every_pair(15))
    shift = calibration_shift(probs, "mean_logit")
    assert shift > 1.5 and calibration_shift(probs, "none") == 0.0
    calibrated = np.array(list(shifted(probs, shift).values()))
    logits = np.log(calibrated / (1 - calibrated))
    assert abs(logits.mean()) < 1e-9 and abs(calibrated.mean() - 0.5) < 0.05


@pytest.mark.slow
def test_sparse_design_resumes_to_the_same_artifact(tmp_path, finished, killed):
    args = ["recipe=tiny", "stages=[sample_space,spmcmc]", "sample_space.num_samples=40", "sample_space.chunk_size=8",
            "sample_space.batch_size=8", "spmcmc.mode=sparse", "spmcmc.degree=4", "spmcmc.design_chunk=16"]
    summary, computed = design_resumes(tmp_path, finished, killed, args, "spmcmc.design_chunk:2")
    assert summary["mode"] == "sparse" and not summary["chains_run"]
    assert computed == summary["design_comparisons"] == summary["judge_calls"]  # nothing computed twice


@pytest.mark.parametrize("order", ["random", "both", "fixed"])
def test_exact_solver_matches_bt_weights(order):
    assert np.abs(exact_stationary(answers(bt_judge, every_pair(N)), N, order) - PI).max() < 1e-8


def test_bt_fit_recovers_weights():
    assert np.abs(bradley_terry(answers(bt_judge, every_pair(N)), N, alpha=1e-6) - PI).max() < 1e-4


def test_the_stacked_bradley_terry_fit_is_choix_s():
    import choix

    rng = np.random.default_rng(4)
    for n in (2, 5, 12):
        wins = rng.uniform(0.0, 2.0, size=(6, n, n)) * (rng.random((6, n, n)) < 0.7) + 0.05  # every pair met
        for alpha in (0.0, 0.01):
            ref = np.array([choix.ilsr_pairwise_dense(w - np.diag(np.diag(w)), alpha=alpha) for w in wins])
            got = ilsr_stack(np.array([w - np.diag(np.diag(w)) for w in wins]), alpha)
            assert np.abs(got - ref).max() < 1e-9, (n, alpha)


def test_the_bootstrap_fits_every_resample_at_once_as_one_at_a_time_would():
    rng = np.random.default_rng(1)
    n = 9
    probs = {(i, j): float(rng.uniform(0.05, 0.95)) for i in range(n) for j in range(n) if i != j and rng.random() < 0.7}
    pairs = pair_edges(probs)
    counts = resample_counts(len(pairs), 50, seed=3)
    draws = np.random.default_rng(3)  # one resample after another, as the bootstrap drew them before
    assert np.array_equal(counts, [np.bincount(draws.integers(len(pairs), size=len(pairs)), minlength=len(pairs))
                                   for _ in range(50)])
    one_by_one = np.array([bradley_terry(probs, n, 0.01, pairs, c) for c in counts])
    assert np.abs(bradley_terry(probs, n, 0.01, pairs, counts) - one_by_one).max() < 1e-9
    graph = np.array([solve_on_edges(probs, n, "random", pairs, c, REGULARISE) for c in counts])
    assert np.abs(solve_on_edges(probs, n, "random", pairs, counts, REGULARISE) - graph).max() < 1e-12


def test_split_half_takes_scipys_spearman_of_each_split_ties_and_flat_halves_included():
    """split_half's Spearman, all splits at once, is scipy's spearmanr of each split's halves (ties averaged); a half
    with no ranking counts as 0, and the consistency is the Spearman-Brown corrected mean."""
    from scipy.stats import spearmanr

    halves = np.random.default_rng(3).normal(size=(8, 6))
    halves[1, :3] = halves[1, 3:]  # ties
    halves[2] = 0.5  # a flat half (split 2's first half)
    halves[7, 4] = halves[7, 5] + 1e-15  # equal up to a solve's rounding: a tie
    out = split_half(lambda masks: halves, 6, 4, 0)
    rhos = [0.0 if k == 2 else spearmanr(np.round(halves[k], 12), np.round(halves[4 + k], 12)).statistic
            for k in range(4)]
    assert out["split_half_r"] == pytest.approx(np.mean(rhos), abs=1e-12)
    assert out["consistency"] == pytest.approx(2 * np.mean(rhos) / (1 + np.mean(rhos)), abs=1e-12)


def test_batch_means_cuts_each_chain_into_np_array_splits_blocks():
    """All chains' blocks at once are np.array_split's blocks of each chain, uneven lengths included (to rounding)."""
    from pipeline.estimates import batch_means

    rng = np.random.default_rng(5)
    for chains, steps, batches in ((1, 35, 10), (3, 11, 10), (4, 3, 10), (2, 200, 7)):
        x = rng.random((chains, steps, 6))
        means = np.stack([blk.mean(0) for c in x for blk in np.array_split(c, min(batches, steps))])
        est, se = batch_means(x, batches)
        assert np.allclose(est, x.reshape(-1, 6).mean(0), rtol=0, atol=1e-15)
        assert np.allclose(se, means.std(0, ddof=1) / np.sqrt(len(means)), rtol=0, atol=1e-15)
    assert np.isnan(batch_means(rng.random((1, 1, 3)))[1]).all()  # one block: no spread to measure
