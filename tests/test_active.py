"""pipeline/active.py: the active design, with fake judges (the kernel), and through the real command (resume)."""

import numpy as np
import pytest

from conftest import design_resumes
from pipeline.active import PromptDesign, run_design
from pipeline.chains import CachedJudge
from pipeline.config import SpmcmcConfig
from pipeline.diagnostics import total_variation
from pipeline.estimates import MIN_DEGREE, all_estimates, exact_stationary, imputed_estimate


def judge_of(theta: np.ndarray, noise_sd: float = 0.0, bias: float = 0.8, seed: int = 0):
    """P(first chosen) = sigmoid(theta_f - theta_s + pair noise (antisymmetric: intransitive) + position bias)."""
    n = len(theta)
    noise = np.random.default_rng(seed).normal(0, noise_sd, (n, n))
    noise = (noise - noise.T) / np.sqrt(2)
    return lambda f, s: 1 / (1 + np.exp(-(theta[f] - theta[s] + noise[f, s] + bias)))


def design(judge, n: int, lo: int = 0, **settings) -> tuple[CachedJudge, PromptDesign, dict]:
    cached, d = CachedJudge(judge), PromptDesign(n, lo)
    figures = run_design([d], cached.probs, cached.ensure, SpmcmcConfig(mode="active", **settings))
    return cached, d, figures


def truth_of(judge, n: int) -> np.ndarray:
    every = CachedJudge(judge)
    every.ensure([(i, j) for i in range(n) for j in range(n) if i != j])
    return exact_stationary(every.probs, n, "random")


def test_a_bradley_terry_judge_is_recovered_from_the_starting_graph():
    n = 30
    theta = np.random.default_rng(1).normal(size=n)
    judge = judge_of(theta)
    cached, d, figures = design(judge, n, budget=n * (n - 1))
    assert d.stop == "precise" and figures["rounds"] == 0  # the GLM is the truth: nothing left to ask
    assert cached.calls <= MIN_DEGREE * n
    assert total_variation(imputed_estimate(cached.probs, n, "random")[0], truth_of(judge, n)) < 1e-6


def test_an_intransitive_judge_gets_closer_with_every_round_it_is_allowed():
    n = 40
    judge = judge_of(np.random.default_rng(2).normal(size=n), noise_sd=0.5)
    truth = truth_of(judge, n)
    tv = []
    for budget in (200, 600, 1200):
        cached, d, _ = design(judge, n, budget=budget, precision=1e-9)
        assert d.stop == "budget" and cached.calls <= budget + SpmcmcConfig().round_size
        tv.append(total_variation(imputed_estimate(cached.probs, n, "random")[0], truth))
    assert tv[0] > tv[1] > tv[2], tv
    cached, d, _ = design(judge, n, budget=n * (n - 1), precision=1e-9)
    assert d.stop == "complete" and cached.calls == n * (n - 1)  # every comparison: the exact answer
    assert total_variation(imputed_estimate(cached.probs, n, "random")[0], truth) < 1e-9


def test_a_flat_prompt_stops_early_and_leaves_the_shared_budget_to_a_sharp_one():
    n = 30
    flat = judge_of(np.zeros(n), noise_sd=0.02, bias=1.9)  # SmolLM2-like: position bias, no preference
    sharp = judge_of(np.random.default_rng(3).normal(size=n), noise_sd=0.5)
    # vectorised over pairs; prompt 2's candidates are ids n .. 2n-1 (each pair stays within its prompt)
    both = lambda f, s: np.where(f < n, flat(f % n, s % n), sharp(f % n, s % n))  # noqa: E731
    cached = CachedJudge(both)
    designs = [PromptDesign(n, 0), PromptDesign(n, n)]
    figures = run_design(designs, cached.probs, cached.ensure, SpmcmcConfig(mode="active", budget=400, precision=1e-9))
    assert designs[0].stop == "flat" and designs[1].stop == "budget"
    assert 2 * len(designs[0].edges) <= MIN_DEGREE * n  # the flat prompt: its starting graph only
    assert 2 * len(designs[1].edges) > 400  # the sharp prompt used more than its own share of the 800
    assert figures["comparisons"] <= 800 + SpmcmcConfig().round_size and figures["stops"]["flat"] == 1


def test_the_same_seed_chooses_the_same_comparisons_and_another_seed_others():
    n = 30
    judge = judge_of(np.random.default_rng(4).normal(size=n), noise_sd=0.5)
    first, again, other = (design(judge, n, budget=400, precision=1e-9, seed=seed)[1].edges for seed in (0, 0, 1))
    assert first == again and first != other


def test_a_run_killed_mid_design_replays_from_its_cache_to_the_same_design():
    n = 30
    judge = judge_of(np.random.default_rng(5).normal(size=n), noise_sd=0.5)
    sc = SpmcmcConfig(mode="active", budget=500, precision=1e-9)
    full = CachedJudge(judge)
    whole = PromptDesign(n, 0)
    run_design([whole], full.probs, full.ensure, sc)

    killed, asked = CachedJudge(judge), []

    def ask_then_die(pairs):
        killed.ensure(pairs)
        asked.append(len(pairs))
        if len(asked) == 4:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_design([PromptDesign(n, 0)], killed.probs, ask_then_die, sc)
    resumed = CachedJudge(judge, dict(killed.probs))  # what the pair cache holds
    again = PromptDesign(n, 0)
    run_design([again], resumed.probs, resumed.ensure, sc)
    assert again.edges == whole.edges
    assert killed.calls + resumed.calls == full.calls  # nothing judged twice


def test_a_budget_below_the_starting_graph_is_refused_not_silently_exceeded():
    from pipeline.artifacts import StageError
    from pipeline.config import ConfigError

    judge = judge_of(np.zeros(12))
    with pytest.raises(StageError, match=r"spmcmc.budget=20 per prompt \(20 for 1 prompt\(s\)\) is below the active "
                                         r"design's starting graph, (\d+) comparisons.*raise spmcmc.budget to at least"):
        design(judge, 12, budget=20)
    _, d, figures = design(judge, 12, budget=4 * MIN_DEGREE * 12)
    assert figures["comparisons"] <= figures["budget"]
    with pytest.raises(ConfigError, match="spmcmc.budget: must be >= 1"):
        SpmcmcConfig(mode="active", budget=0).validate()


def test_the_active_estimate_uses_only_the_design_and_has_a_consistency():
    n = 30
    judge = judge_of(np.random.default_rng(6).normal(size=n), noise_sd=0.3)
    cached, d, _ = design(judge, n, budget=500, precision=1e-9)
    est, rel = all_estimates(cached.probs, n, "random", "active", d.edges, None, 0, 1, 0.01, 0, 10, 0)
    stray = dict(cached.probs)
    stray.update({(a, b): 0.99 for a in range(n) for b in range(n) if a != b and (a, b) not in cached.probs})
    est_stray, _ = all_estimates(stray, n, "random", "active", d.edges, None, 0, 1, 0.01, 0, 10, 0)
    assert np.allclose(est["active"][0], est_stray["active"][0])  # an earlier round's cache does not leak in
    assert rel["score"]["consistency"] > 0.5 and np.all(est["active"][1] > 0)


@pytest.mark.slow
def test_the_active_design_resumes_to_the_same_artifact(tmp_path, finished, killed):
    args = ["recipe=tiny", "stages=[sample_space,spmcmc]", "sample_space.num_samples=40", "sample_space.chunk_size=8",
            "sample_space.batch_size=8", "spmcmc.mode=active", "spmcmc.budget=260", "spmcmc.precision=1e-9",
            "spmcmc.flat_w=0.5", "spmcmc.design_chunk=16"]  # never flat or precise: rounds until the budget
    # the starting graph is ~10 chunks of 16; the 12th is in the rounds that follow it
    summary, computed = design_resumes(tmp_path, finished, killed, args, "spmcmc.design_chunk:12")
    assert summary["mode"] == "active" and summary["active"]["stop"] == "budget"
    assert summary["active"]["budget"] == 260 and summary["active"]["rounds"] >= 1  # the keys the README promises
    assert computed == summary["design_comparisons"] == summary["judge_calls"] > 200  # nothing judged twice
