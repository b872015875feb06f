"""The kernel with fake Bradley–Terry judges whose stationary distribution is known."""

import numpy as np
import pytest

from pipeline.chains import CachedJudge, Chain, new_chains, run_chains, visit_frequencies
from pipeline.diagnostics import total_variation
from pipeline.estimates import exact_stationary

N = 20
W = np.random.default_rng(7).gamma(2.0, size=N)
PI = W / W.sum()


def bt_judge(bias_logit: float = 0.0):
    """P(first chosen) = sigmoid(log w_first - log w_second + bias)."""
    def judge(first, second):
        return 1.0 / (1.0 + np.exp(-(np.log(W[first]) - np.log(W[second]) + bias_logit)))
    return judge


def all_pairs_cache(judge):
    cached = CachedJudge(judge)
    cached.ensure([(i, j) for i in range(N) for j in range(N) if i != j])
    return cached


def test_visit_frequencies_converge_to_bt_weights():
    chains = new_chains(N, num_chains=8, seed=0)
    trace = run_chains(chains, N, bt_judge(), iterations=6000, order="random")
    assert total_variation(visit_frequencies(trace, N, burn_in=200), PI) <= 0.03


def test_position_bias_is_debiased_by_both_orders():
    bias = 1.5  # a strong preference for whatever is shown first
    cached = all_pairs_cache(bt_judge(bias))
    exact = exact_stationary(cached.probs, N, "both")
    chains = new_chains(N, num_chains=8, seed=1)
    trace = run_chains(chains, N, bt_judge(bias), iterations=6000, order="both")
    freq = visit_frequencies(trace, N, burn_in=200)
    assert total_variation(freq, exact) <= 0.03
    assert np.array_equal(np.argsort(exact), np.argsort(PI))  # the true ranking survives
    measured = float(np.mean(list(cached.probs.values())))
    expected = float(np.mean([bt_judge(bias)(np.array([i]), np.array([j]))[0]
                              for i in range(N) for j in range(N) if i != j]))
    assert measured == pytest.approx(expected) and measured > 0.7  # what was put in, measured back


def test_fixed_order_with_bias_is_a_different_chain():
    cached = all_pairs_cache(bt_judge(1.5))
    assert total_variation(exact_stationary(cached.probs, N, "fixed"), PI) > 0.02


def test_cache_never_recomputes_a_comparison():
    calls = []

    def judge(first, second):
        calls.append(len(first))
        return bt_judge()(first, second)

    cached = CachedJudge(judge)
    trace = run_chains(new_chains(5, 3, seed=0), 5, cached, iterations=400, order="random")
    seen = set(zip(np.where(trace["first_shown"] == trace["current"], trace["current"], trace["proposal"]),
                   np.where(trace["first_shown"] == trace["current"], trace["proposal"], trace["current"])))
    assert sum(calls) == cached.calls == len(seen) == len(cached.probs) <= 20
    assert max(calls) <= 3  # one batched call per step, at most one comparison per chain
    assert cached.hit_rate > 0.9


def test_resume_from_saved_state_gives_the_same_trace():
    full = run_chains(new_chains(N, 4, seed=3), N, bt_judge(), iterations=300)
    chains = new_chains(N, 4, seed=3)
    first = run_chains(chains, N, bt_judge(), iterations=120)
    restored = [Chain.from_state(c.state()) for c in chains]
    rest = run_chains(restored, N, bt_judge(), iterations=300)
    for k in full:
        joined = np.concatenate([first[k], rest[k]])
        order_full = np.lexsort((full["step"], full["chain"]))
        order_joined = np.lexsort((np.concatenate([first["step"], rest["step"]]),
                                   np.concatenate([first["chain"], rest["chain"]])))
        assert np.array_equal(full[k][order_full], joined[order_joined])


def test_needs_two_candidates():
    with pytest.raises(ValueError, match="at least 2"):
        new_chains(1, 2, seed=0)
