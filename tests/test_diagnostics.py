"""pipeline/diagnostics.py: cyclic triads and whether the chains agree."""

import numpy as np

from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.diagnostics import chain_diagnostics, intransitivity, rank_rhat_and_bulk_ess

N = 20
W = np.random.default_rng(7).gamma(2.0, size=N)


def bt_judge(bias_logit: float = 0.0):
    def judge(first, second):
        return 1 / (1 + np.exp(-(np.log(W[first]) - np.log(W[second]) + bias_logit)))

    return judge


def test_intransitivity_counts_cycles():
    rock_paper_scissors = {(0, 1): 0.9, (1, 2): 0.9, (2, 0): 0.9, (1, 0): 0.1, (2, 1): 0.1, (0, 2): 0.1}
    assert intransitivity(rock_paper_scissors, 3)["intransitive_share"] == 1.0
    cached = CachedJudge(bt_judge())
    cached.ensure([(i, j) for i in range(N) for j in range(N) if i != j])
    assert intransitivity(cached.probs, N)["cyclic_triads"] == 0


def test_diagnostics_flag_unmixed_chains():
    stuck = np.array([[0] * 200, [1] * 200])
    diag = chain_diagnostics(stuck, 3, top_k=2)
    assert diag["max_between_chain_tv"] == 1.0
    trace = run_chains(new_chains(N, 4, seed=0), N, bt_judge(), iterations=3000)
    from pipeline.chains import states_after

    good = chain_diagnostics(states_after(trace)[:, 200:], N, top_k=5)
    assert good["max_rhat"] < 1.05 and good["min_ess_bulk"] > 100


def test_the_stacked_rhat_and_bulk_ess_are_arviz_values():
    """rank_rhat_and_bulk_ess (every top candidate's indicator series at once) gives arviz.rhat and
    arviz.ess(method="bulk") of each series: sticky and mixing chains, odd draws, constant series (R-hat NaN,
    ESS the draws), one chain (R-hat NaN), fewer than 4 draws (both NaN)."""
    import warnings

    import arviz

    rng = np.random.default_rng(0)
    for chains, draws, stay in [(2, 35, 0.5), (4, 81, 0.95), (3, 10, 0.05), (1, 40, 0.6), (2, 3, 0.5), (2, 50, 1.0)]:
        states = np.zeros((chains, draws), dtype=int)
        for c in range(chains):
            x = rng.integers(6)
            for d in range(draws):
                x = x if rng.random() < stay else rng.integers(6)
                states[c, d] = x
        series = (states[None] == np.arange(6)[:, None, None]).astype(float)
        rhat, ess = rank_rhat_and_bulk_ess(series)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want_rhat = [float(arviz.rhat(x)) if chains > 1 else np.nan for x in series]
            want_ess = [float(arviz.ess(x, method="bulk")) for x in series]
        np.testing.assert_allclose(rhat, want_rhat, rtol=1e-12, atol=0, equal_nan=True)
        np.testing.assert_allclose(ess, want_ess, rtol=1e-12, atol=0, equal_nan=True)
        if draws >= 4 and chains > 1:
            assert np.isfinite(rhat).any() or stay == 1.0
