"""The spMCMC kernel: Metropolis–Hastings over a finite set of candidates, with a judge's binary
choice as the acceptance rule (Barker's rule, symmetric uniform proposal: MCMC with People).

Pure numpy, no model: a judge is any callable mapping arrays of first-shown and second-shown
candidate ids to the probability that the first-shown one is chosen. Every random number comes from
the chain's own seeded generator and is drawn before the judge is asked, so caching or recomputing
a probability never changes the chain's law or its trajectory.

    import numpy as np
    from pipeline.chains import new_chains, run_chains, visit_frequencies
    w = np.random.default_rng(0).gamma(1.0, size=20)          # true preference weights
    judge = lambda first, second: w[first] / (w[first] + w[second])   # Bradley–Terry chooser
    chains = new_chains(n=20, num_chains=4, seed=0)
    trace = run_chains(chains, n=20, judge=judge, iterations=5000)
    freq = visit_frequencies(trace, n=20, burn_in=500)        # -> close to w / w.sum()
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Judge = Callable[[np.ndarray, np.ndarray], np.ndarray]
ORDERS = ("random", "both", "fixed")
TRACE_COLUMNS = ("chain", "step", "current", "proposal", "first_shown", "p_accept", "accepted")


@dataclass
class Chain:
    """One chain over the candidates lo .. lo+size-1 (one prompt's answers, when candidates of several
    prompts share one id space)."""
    id: int
    current: int
    rng: np.random.Generator
    step: int = 0
    lo: int = 0
    size: int = 0

    def state(self) -> dict:
        return {"id": self.id, "current": self.current, "step": self.step, "rng": self.rng.bit_generator.state,
                "lo": self.lo, "size": self.size}

    @classmethod
    def from_state(cls, s: dict) -> "Chain":
        rng = np.random.Generator(np.random.PCG64())
        rng.bit_generator.state = s["rng"]
        return cls(s["id"], s["current"], rng, s["step"], s["lo"], s["size"])


def new_chains(n: int, num_chains: int, seed: int, lo: int = 0, first_id: int = 0) -> list[Chain]:
    """Chains over candidates lo .. lo+n-1 from dispersed (distinct while possible) random starts, each
    with its own generator; chain ids first_id, first_id+1, ..."""
    if n < 2:
        raise ValueError(f"spMCMC needs at least 2 candidates, got {n}")
    seeds = np.random.SeedSequence(seed).spawn(num_chains + 1)
    starts = np.random.default_rng(seeds[0]).permutation(np.resize(np.arange(n), max(n, num_chains)))
    return [Chain(first_id + c, lo + int(starts[c]), np.random.default_rng(seeds[c + 1]), lo=lo, size=n)
            for c in range(num_chains)]


@dataclass
class CachedJudge:
    """Memoises P(first chosen) per ordered pair; the judge only ever sees pairs it has not seen,
    all of one step's in a single call. The cached value is a probability, so reuse is exact."""
    judge: Judge
    probs: dict = field(default_factory=dict)
    on_new: Callable[[list, np.ndarray], None] | None = None
    calls: int = 0  # comparisons computed by the judge
    lookups: int = 0
    hits: int = 0

    def ensure(self, pairs: list[tuple[int, int]]) -> None:
        known = [p in self.probs for p in pairs]
        self.lookups += len(pairs)
        self.hits += sum(known)
        missing = list(dict.fromkeys(p for p, k in zip(pairs, known) if not k))
        if not missing:
            return
        first, second = (np.array(x, dtype=np.int64) for x in zip(*missing))
        probs = np.asarray(self.judge(first, second), dtype=np.float64)
        self.probs.update(zip(missing, probs.tolist()))
        self.calls += len(missing)
        if self.on_new is not None:
            self.on_new(missing, probs)

    def __getitem__(self, pair: tuple[int, int]) -> float:
        return self.probs[pair]

    @property
    def hit_rate(self) -> float:
        return self.hits / self.lookups if self.lookups else 0.0


def shown_pairs(current: int, proposal: int, proposal_first: bool, order: str) -> list[tuple[int, int]]:
    """The ordered comparisons one step needs, as (first shown, second shown)."""
    if order == "both":
        return [(current, proposal), (proposal, current)]
    return [(proposal, current)] if proposal_first else [(current, proposal)]


def acceptance(p: CachedJudge, current: int, proposal: int, proposal_first: bool, order: str) -> float:
    """P(the proposal is chosen over the current candidate) under the presentation order."""
    if order == "both":
        return 0.5 * ((1.0 - p[current, proposal]) + p[proposal, current])
    return p[proposal, current] if proposal_first else 1.0 - p[current, proposal]


def step(chains: list[Chain], n: int, cached: CachedJudge, order: str) -> list[tuple]:
    """Advance every chain by one step; the uncached comparisons of all chains go to the judge at once."""
    draws = []
    for c in chains:  # all randomness first, from each chain's own generator
        size = c.size or n
        j = int(c.rng.integers(size - 1))
        proposal = c.lo + j + (c.lo + j >= c.current)
        proposal_first = bool(c.rng.random() < 0.5) if order == "random" else False
        draws.append((proposal, proposal_first, float(c.rng.random())))
    cached.ensure([pr for c, (j, pf, _) in zip(chains, draws) for pr in shown_pairs(c.current, j, pf, order)])
    rows = []
    for c, (proposal, proposal_first, u) in zip(chains, draws):
        p_accept = acceptance(cached, c.current, proposal, proposal_first, order)
        accepted = u < p_accept
        first_shown = -1 if order == "both" else (proposal if proposal_first else c.current)
        rows.append((c.id, c.step, c.current, proposal, first_shown, p_accept, accepted))
        c.current = proposal if accepted else c.current
        c.step += 1
    return rows


def run_chains(chains: list[Chain], n: int, judge: Judge | CachedJudge, iterations: int, order: str = "random",
               on_step: Callable[[list[Chain], list[tuple]], None] | None = None) -> dict[str, np.ndarray]:
    """Run every chain up to `iterations` steps (chains already part-way continue); returns the trace."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    cached = judge if isinstance(judge, CachedJudge) else CachedJudge(judge)
    rows = []
    while active := [c for c in chains if c.step < iterations]:
        new = step(active, n, cached, order)
        rows += new
        if on_step is not None:
            on_step(active, new)
    return trace_arrays(rows)


def trace_arrays(rows: list[tuple]) -> dict[str, np.ndarray]:
    cols = list(zip(*rows)) if rows else [[] for _ in TRACE_COLUMNS]
    dtypes = (np.int64, np.int64, np.int64, np.int64, np.int64, np.float64, bool)
    return {name: np.asarray(col, dtype=dt) for name, col, dt in zip(TRACE_COLUMNS, cols, dtypes)}


def states_after(trace: dict[str, np.ndarray]) -> np.ndarray:
    """The state after each step, shape (chains, steps), sorted by chain then step."""
    order = np.lexsort((trace["step"], trace["chain"]))
    nxt = np.where(trace["accepted"], trace["proposal"], trace["current"])[order]
    n_chains = len(np.unique(trace["chain"]))
    return nxt.reshape(n_chains, -1)


def visit_counts(trace: dict[str, np.ndarray], n: int, burn_in: int = 0, thin: int = 1) -> np.ndarray:
    """Visits per candidate over all chains, after `burn_in` steps per chain, every `thin`-th step."""
    kept = states_after(trace)[:, burn_in::thin]
    return np.bincount(kept.ravel(), minlength=n)


def visit_frequencies(trace: dict[str, np.ndarray], n: int, burn_in: int = 0, thin: int = 1) -> np.ndarray:
    counts = visit_counts(trace, n, burn_in, thin)
    return counts / counts.sum()
