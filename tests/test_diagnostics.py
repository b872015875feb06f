"""pipeline/diagnostics.py: cyclic triads and whether the chains agree."""

import numpy as np

from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.diagnostics import chain_diagnostics, intransitivity

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
