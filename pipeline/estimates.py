"""Estimates of the model's preference distribution, each with its uncertainty, and how reliable
they are. Pure numpy: a judge's answers come in as {(first, second): P(first chosen)}.

Designs (which comparisons the judge makes), cheapest first for large N:
  chains   the paper's Metropolis–Hastings chains (uniform proposal, Barker acceptance); the judge
           answers whatever the chains propose.
  sparse   a seeded random connected graph; every candidate compared, in both orders, with about
           `degree` others; all comparisons known up front, so they batch fully.
  exact    every ordered comparison, N(N-1).
  active   chosen in rounds where the estimate is still open, with one budget for every prompt of the
           run (pipeline/active.py); the design is known only once the judge has answered.
The spMCMC chain with a symmetric proposal restricted to a graph (q(i->j) = 1/d_max on the graph's
edges) has the same Barker acceptance; its stationary distribution is solved exactly. On the
complete graph this is the exact stationary distribution of the paper's chain; for a judge that
follows Bradley–Terry it equals the BT strengths on any connected graph (detailed balance), and
otherwise it approximates the complete-graph answer better as the degree grows (Rank Centrality,
Negahban, Oh & Shah 2017).

Estimates (all sum to one over the candidates):
  frequency       visit counts of the chains; SE by batch means over each chain's steps.
  rao_blackwell   E[next state | current, proposal] = p_accept on the proposal, the rest on the
                  current state, averaged over steps: the same trace with the accept/reject coin
                  integrated out; SE by batch means.
  bt              Bradley–Terry on soft wins of the compared pairs (choix); SE by a bootstrap over
                  compared pairs.
  stationary      graph stationary distribution on all pairs (exact design); SE by a bootstrap over pairs.
  sparse          graph stationary distribution on the sparse design's graph; SE likewise.
  active          the exact stationary distribution of the paper's chain with every comparison the
                  active design did not make filled in by the GLM (pipeline/glm.py); SE by the delta
                  method from the GLM's covariance.
Consistency: the evidence split in two halves at random (the graph's pairs, or the chains), the
estimate on each half, the Spearman correlation between the halves, Spearman–Brown corrected
(2r/(1+r)), averaged over several splits: the model's analogue of the human split-half ceiling.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from pipeline.glm import fit_strengths, log_share_sd

MODES = ("exact", "sparse", "active", "chains")
MIN_DEGREE = 4  # two random cycles; one cycle alone estimated worse than chains at the same budget (bench_estimators)
REGULARISE = 1e-3  # half-evidence and bootstrap graphs may fall apart; a little uniform walk rejoins them


# ------------------------------------------------------------------------------------ the design
def choose_mode(mode: str, n: int, budget: int) -> str:
    """auto: exact when all N(N-1) comparisons fit the budget, else the active design when its starting graph
    (degree MIN_DEGREE, MIN_DEGREE * N comparisons) fits, else the chains. Active rather than sparse: from the same
    starting graph it reaches at least the sparse design's accuracy at equal comparisons on every bench judge, and
    stops early where the answer is settled or flat (docs/PERFORMANCE.md, scripts/bench_estimators.py)."""
    if mode != "auto":
        return mode
    if n * (n - 1) <= budget:
        return "exact"
    if MIN_DEGREE * n <= budget:
        return "active"
    return "chains"


def plan_design(sc, n: int) -> tuple[str, list[tuple[int, int]], str]:
    """(mode, the design's edges, why this mode) for N candidates under the `spmcmc` settings `sc`."""
    mode = choose_mode(sc.mode, n, sc.budget)
    why = f"spmcmc.mode={sc.mode}" if sc.mode != "auto" else {
        "exact": f"all N(N-1) = {n * (n - 1)} comparisons fit spmcmc.budget={sc.budget}",
        "sparse": f"N(N-1) = {n * (n - 1)} exceeds spmcmc.budget={sc.budget}; a connected graph fits",
        "active": f"N(N-1) = {n * (n - 1)} exceeds spmcmc.budget={sc.budget}; chosen where the estimate is open",
        "chains": f"even a sparse design ({MIN_DEGREE}N = {MIN_DEGREE * n}) exceeds spmcmc.budget={sc.budget}"}[mode]
    if mode == "exact":
        return mode, design_graph(n, n - 1, sc.seed), why
    if mode == "sparse":
        return mode, design_graph(n, design_degree(n, sc.budget, sc.degree), sc.seed), why
    return mode, [], why  # chains: the chains choose; active: chosen as the judge answers (pipeline/active.py)


def wants_chains(chains: str, mode: str) -> bool:
    """Run the paper's chains too? auto: when they are the design, or cost nothing new (exact design)."""
    return chains == "true" or (chains == "auto" and mode in ("exact", "chains"))


def design_degree(n: int, budget: int, degree: int) -> int:
    """The sparse graph's target degree: `degree` if set (> 0), else as large as the budget allows."""
    d = degree if degree > 0 else budget // n
    return int(min(max(d, MIN_DEGREE), n - 1))


def design_graph(n: int, degree: int, seed: int) -> list[tuple[int, int]]:
    """Edges (i < j) of a seeded random connected graph with degrees at most `degree`: the union of
    degree // 2 random Hamiltonian cycles (one cycle already connects every candidate), so the design
    asks at most degree * N comparisons."""
    if degree >= n - 1:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = np.random.default_rng(seed)
    edges = set()
    for _ in range(max(1, degree // 2)):
        cycle = rng.permutation(n)
        for a, b in zip(cycle, np.roll(cycle, -1)):
            edges.add((int(min(a, b)), int(max(a, b))))
    return sorted(edges)


def ordered(edges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Both presentation orders of each edge: the comparisons a design asks the judge for."""
    return [p for i, j in edges for p in ((i, j), (j, i))]


# ------------------------------------------------------------------------------------ graph solves
def p_first_matrix(probs: dict, n: int) -> np.ndarray:
    """pf[i, j] = P(i chosen | i shown first, j second); NaN where not computed."""
    pf = np.full((n, n), np.nan)
    if probs:
        keys = np.array(list(probs.keys()), dtype=np.int64)
        pf[keys[:, 0], keys[:, 1]] = list(probs.values())
    return pf


def acceptance_matrix(pf: np.ndarray, order: str) -> np.ndarray:
    """A[i, j] = P(the chain at i accepts a proposal j). `random` has the same law as `both`: each
    order is shown half the time."""
    a = 1.0 - pf if order == "fixed" else 0.5 * ((1.0 - pf) + pf.T)
    np.fill_diagonal(a, 0.0)
    return a


def stationary_distribution(t: np.ndarray) -> np.ndarray:
    """pi with pi T = pi, sum(pi) = 1 (one linear solve; T irreducible). T may be a stack (..., n, n): one solve
    each, all in one call."""
    n = t.shape[-1]
    m = np.swapaxes(t, -1, -2) - np.eye(n)
    m[..., -1, :] = 1.0  # one (redundant) balance equation replaced by the normalisation
    b = np.zeros((*t.shape[:-2], n, 1))
    b[..., -1, 0] = 1.0
    pi = np.clip(np.linalg.solve(m, b)[..., 0], 0.0, None)
    return pi / pi.sum(-1, keepdims=True)


def graph_stationary(accept: np.ndarray, weights: np.ndarray, regularise: float = 0.0) -> np.ndarray:
    """Stationary distribution of the Barker chain whose symmetric proposal picks neighbour j of i with
    probability weights[i, j] / max weighted degree (weights symmetric, 0 off the graph). With
    `regularise` > 0, that share of steps proposes uniformly with acceptance 1/2 (keeps a resampled
    or halved graph irreducible). `weights` may be a stack (R, n, n), a bootstrap's: (R, n) out."""
    n = accept.shape[0]
    off = ~np.eye(n, dtype=bool)
    w = np.where((weights > 0) & off, weights, 0.0)
    t = w * np.nan_to_num(accept) / np.maximum(w.sum(-1).max(-1), 1e-12)[..., None, None]
    if regularise:
        t = (1 - regularise) * t + regularise * np.where(off, 0.5 / (n - 1), 0.0)
    diagonal = np.arange(n)
    t[..., diagonal, diagonal] = 1.0 - t.sum(-1)
    return stationary_distribution(t)


def exact_stationary(probs: dict, n: int, order: str) -> np.ndarray:
    """The stationary distribution of the paper's chain (uniform proposal over all N-1 others)."""
    pf = p_first_matrix(probs, n)
    off = ~np.eye(n, dtype=bool)
    if np.isnan(pf[off]).any():
        raise ValueError("exact stationary distribution needs every ordered comparison")
    return graph_stationary(acceptance_matrix(pf, order), off.astype(float))


def imputed_stationary(probs: dict, n: int, order: str, s: np.ndarray, position: float) -> np.ndarray:
    """The exact stationary distribution of the paper's chain with every comparison the design did not make
    filled in by the Bradley-Terry GLM (logit P(first chosen) = position + s_first - s_second): the active
    design's estimate. Equals exact_stationary when every comparison was made; the GLM's strengths when none."""
    pf = p_first_matrix(probs, n)
    model = expit(position + s[:, None] - s[None, :])
    off = ~np.eye(n, dtype=bool)
    return graph_stationary(acceptance_matrix(np.where(np.isnan(pf), model, pf), order), off.astype(float))


def imputed_estimate(probs: dict, n: int, order: str) -> tuple[np.ndarray, np.ndarray]:
    """The active design's estimate and its SE: imputed_stationary on the GLM's fit, the SE by the delta method
    (estimate x the SD of log pi_i: the GLM's covariance plus the imputation's variance, each uncompared pair's
    deviation from the GLM, as pipeline/active.py's stopping rule counts it); uniform without a fit."""
    from pipeline.active import imputation  # active imports this module

    fit = fit_strengths(probs, n)
    if fit is None:
        return np.full(n, 1.0 / n), np.full(n, np.nan)
    value = imputed_stationary(probs, n, order, fit.s, fit.position)
    var_pair, missing = imputation(fit, probs, n)  # the imputed pairs' own deviations, as the stopping rule counts them
    return value, value * np.sqrt(log_share_sd(fit.cov, value) ** 2 + var_pair * missing / (n - 1) ** 2)


def on_edges(probs: dict, edges: list[tuple[int, int]], keep) -> dict:
    """The comparisons (both orders) of the edges where `keep` is true."""
    chosen = {e for e, k in zip(edges, keep) if k}
    return {key: v for key, v in probs.items() if (min(key), max(key)) in chosen}


def edge_weights(n: int, edges: list[tuple[int, int]], counts=None) -> np.ndarray:
    """(n, n) symmetric weights of the edges (`counts` of each, 1 by default); (R, n, n) for counts (R, edges)."""
    counts = np.ones(len(edges)) if counts is None else np.asarray(counts, dtype=float)
    w = np.zeros((*counts.shape[:-1], n, n))
    if edges:
        e = np.array(edges)
        w[..., e[:, 0], e[:, 1]] += counts  # an unordered edge appears once: no repeated index to lose
        w[..., e[:, 1], e[:, 0]] += counts
    return w


def compared_edges(probs: dict) -> list[tuple[int, int]]:
    """Unordered pairs compared in both orders (what a graph solve can use)."""
    return sorted({(min(i, j), max(i, j)) for i, j in probs if (j, i) in probs})


def solve_on_edges(probs: dict, n: int, order: str, edges: list[tuple[int, int]], counts=None,
                   regularise: float = 0.0) -> np.ndarray:
    return graph_stationary(acceptance_matrix(p_first_matrix(probs, n), order), edge_weights(n, edges, counts),
                            regularise)


def soft_wins(probs: dict, n: int, edges=None, counts=None) -> np.ndarray:
    """wins[f, s] += P(first chosen), wins[s, f] += the rest, per comparison; with `edges`, each weighted by its
    unordered pair's count (1 by default, 0 for a pair not listed); counts (R, edges) give (R, n, n)."""
    keys = np.array(list(probs), dtype=np.int64).reshape(-1, 2)
    p = np.fromiter(probs.values(), float, len(probs))
    c = np.ones(len(p))
    if edges is not None:
        index = {e: k for k, e in enumerate(edges)}
        where = [index.get((min(f, s), max(f, s)), len(edges)) for f, s in keys.tolist()]
        counts = np.ones(len(edges)) if counts is None else np.asarray(counts, dtype=float)
        c = np.concatenate([counts, np.zeros((*counts.shape[:-1], 1))], -1)[..., where]  # unlisted: weight 0
    wins = np.zeros((*c.shape[:-1], n, n))
    wins[..., keys[:, 0], keys[:, 1]] += c * p  # dict keys: each ordered pair at most once per statement
    wins[..., keys[:, 1], keys[:, 0]] += c * (1.0 - p)
    return wins


def bradley_terry(probs: dict, n: int, alpha: float, edges=None, counts=None) -> np.ndarray:
    """BT strengths (sum 1) from soft wins: a comparison adds P(first chosen) to first-beats-second and
    the rest to second-beats-first (choix ILSR). `edges`/`counts` reweight unordered pairs; counts (R, edges),
    a bootstrap's, fit all R at once (ilsr_stack) and give (R, n)."""
    import choix

    wins = soft_wins(probs, n, edges, counts)
    params = choix.ilsr_pairwise_dense(wins, alpha=alpha) if wins.ndim == 2 else ilsr_stack(wins, alpha)
    w = np.exp(params - params.max(-1, keepdims=True))
    return w / w.sum(-1, keepdims=True)


def ilsr_stack(wins: np.ndarray, alpha: float, max_iter: int = 100, tol: float = 1e-8) -> np.ndarray:
    """choix.ilsr_pairwise_dense over a stack of win matrices (R, n, n) at once: the same iteration (Luce spectral
    ranking from equal weights, refined until the L1 change of the centred log-weights is at most tol * n), each
    matrix left alone once it has converged. (R, n) centred log-weights; choix's to rounding (tests/test_estimates)."""
    r, n, _ = wins.shape
    params, last = np.zeros((r, n)), None
    live = np.arange(r)
    diagonal = np.arange(n)
    for _ in range(max_iter):
        w = np.exp(params[live] - params[live].mean(-1, keepdims=True))
        w *= n / w.sum(-1, keepdims=True)
        rates = alpha + np.swapaxes(wins[live], 1, 2) / (w[:, :, None] + w[:, None, :])  # choix's LSR chain
        rates[:, diagonal, diagonal] = 0.0
        rates[:, diagonal, diagonal] = -rates.sum(-1)
        new = np.log(stationary_distribution(rates + np.eye(n)))  # pi Q = 0 is pi (Q + I) = pi
        new -= new.mean(-1, keepdims=True)
        moved = None if last is None else np.abs(new - last[live]).sum(-1)
        params[live] = new
        last = params.copy()
        if moved is not None:
            live = live[moved > tol * n]
        if not len(live):
            return params
    raise RuntimeError(f"Bradley-Terry (ILSR) did not converge after {max_iter} iterations")


def pair_edges(probs: dict) -> list[tuple[int, int]]:
    """Every unordered pair compared in at least one order (the units a BT bootstrap resamples)."""
    return sorted({(min(i, j), max(i, j)) for i, j in probs})


def resample_counts(units: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, units): how often each unit is drawn in each resample with replacement."""
    draws = np.random.default_rng(seed).integers(units, size=(resamples, units))
    flat = (draws + units * np.arange(resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=units * resamples).reshape(resamples, units).astype(float)


def bootstrap_se(fit, edges: list[tuple[int, int]], resamples: int, seed: int) -> np.ndarray:
    """Per-candidate standard deviation of `fit(counts)` over compared pairs resampled with replacement (NaN with
    no resamples). `fit` takes every resample's counts at once, (resamples, edges), and returns (resamples, n)."""
    if resamples < 2:
        return np.full(fit(np.ones((1, len(edges)))).shape[-1], np.nan)
    return np.std(fit(resample_counts(len(edges), resamples, seed)), axis=0, ddof=1)


# ------------------------------------------------------------------------------------ from the chains
def batch_means(per_step: np.ndarray, batches: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Mean over (chains, steps, N) contributions and its SE by batch means: each chain's steps cut
    into `batches` consecutive blocks, the blocks' means treated as independent (Markov dependence
    stays inside a block)."""
    chains, steps, n = per_step.shape
    b = max(1, min(batches, steps))
    sizes = np.full(b, steps // b) + (np.arange(b) < steps % b)  # np.array_split's blocks, all chains at once
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    means = (np.add.reduceat(per_step, starts, axis=1) / sizes[None, :, None]).reshape(-1, n)
    est = per_step.reshape(-1, n).mean(0)
    se = means.std(0, ddof=1) / np.sqrt(len(means)) if len(means) > 1 else np.full(n, np.nan)
    return est, se


def chain_contributions(trace: dict, n: int, burn_in: int, thin: int, rao_blackwell: bool) -> np.ndarray:
    """(chains, kept steps, N): a one-hot of the state after each step, or its conditional expectation
    p_accept * e_proposal + (1 - p_accept) * e_current (Rao–Blackwell)."""
    order = np.lexsort((trace["step"], trace["chain"]))
    chains = len(np.unique(trace["chain"]))
    cur, prop = trace["current"][order], trace["proposal"][order]
    if rao_blackwell:
        a = trace["p_accept"][order]
    else:
        a = trace["accepted"][order].astype(float)
    out = np.zeros((len(cur), n))
    rows = np.arange(len(cur))
    np.add.at(out, (rows, prop), a)
    np.add.at(out, (rows, cur), 1.0 - a)
    return out.reshape(chains, -1, n)[:, burn_in::thin]


# ------------------------------------------------------------------------------------ consistency
def spearman_brown(r: float) -> float:
    return 2 * r / (1 + r) if r > -1 else -1.0


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho between each row of a and the same row of b (Pearson's r of their average ranks, as
    scipy's spearmanr computes it), all rows at once; 0 where a row has no ranking."""
    from scipy.stats import rankdata

    # equal answers (a reward function's ties) come out of a solve 1e-15 apart: rounded, they stay ties
    a, b = np.round(a, 12), np.round(b, 12)
    ra, rb = (r - r.mean(1, keepdims=True) for r in (rankdata(a, axis=1), rankdata(b, axis=1)))
    flat = (np.ptp(a, axis=1) == 0) | (np.ptp(b, axis=1) == 0)  # a half with no ranking agrees with nothing
    norm = np.sqrt((ra * ra).sum(1) * (rb * rb).sum(1))
    return np.where(flat, 0.0, (ra * rb).sum(1) / np.where(flat, 1.0, norm))


def split_half(estimate_halves, units: int, splits: int, seed: int) -> dict | None:
    """Spearman between estimates on random halves of the evidence, averaged over `splits` random splits, and its
    Spearman–Brown correction. `estimate_halves(masks)` takes every half at once, (2 * splits, units) boolean masks
    (the splits' first halves, then their complements), and returns one estimate per mask."""
    if units < 4 or splits < 1:
        return None
    rng = np.random.default_rng(seed)
    masks = np.zeros((splits, units), dtype=bool)
    for k in range(splits):
        masks[k, rng.permutation(units)[: units // 2]] = True
    halves = estimate_halves(np.concatenate([masks, ~masks]))
    r = float(np.mean(_spearman_rows(np.asarray(halves[:splits]), np.asarray(halves[splits:]))))
    return {"split_half_r": r, "consistency": spearman_brown(r), "splits": splits, "units": units}


def graph_consistency(probs: dict, n: int, order: str, edges: list, splits: int, seed: int) -> dict | None:
    """Halves of the compared pairs, each solved on its own (regularised) graph: all halves in one stacked solve."""
    out = split_half(lambda masks: solve_on_edges(probs, n, order, edges, masks.astype(float), REGULARISE),
                     len(edges), splits, seed)
    return out and {**out, "evidence": "compared pairs"}


def chain_consistency(contrib: np.ndarray, splits: int, seed: int) -> dict | None:
    """Halves of the chains (at least 4 chains), each half's visit estimate."""
    if contrib.shape[0] < 4:
        return None
    out = split_half(lambda masks: np.array([contrib[m].reshape(-1, contrib.shape[2]).mean(0) for m in masks]),
                     contrib.shape[0], splits, seed)
    return out and {**out, "evidence": "chains"}


# ------------------------------------------------------------------------------------ calibration
def calibration_shift(probs: dict, how: str) -> float:
    """`mean_logit`: the mean label-logit difference logit P(first chosen) over the comparisons (the
    measured position bias, Zhao et al. 2021's contextual calibration); 0 for `none`."""
    if how == "none" or not probs:
        return 0.0
    p = np.clip(np.array(list(probs.values())), 1e-9, 1 - 1e-9)
    return float(np.mean(np.log(p) - np.log1p(-p)))


def shifted(probs: dict, shift: float) -> dict:
    """p' = sigmoid(logit p - shift): the choice with the label-logit difference moved by `shift`."""
    if not shift or not probs:
        return probs
    p = np.clip(np.array(list(probs.values())), 1e-9, 1 - 1e-9)
    return dict(zip(probs.keys(), (1.0 / (1.0 + np.exp(-(np.log(p) - np.log1p(-p) - shift)))).tolist()))


def order_averaged(probs: dict, a: int, b: int) -> float | None:
    """W(a over b) = 1/2 (P(a first chosen) + 1 - P(b first chosen)); None when an order is missing."""
    if (a, b) not in probs or (b, a) not in probs:
        return None
    return 0.5 * (probs[a, b] + 1.0 - probs[b, a])


# ------------------------------------------------------------------------------------ all at once
ESTIMATES = ("frequency", "rao_blackwell", "bt", "stationary", "sparse", "active")
COLUMN = {"frequency": "frequency", "rao_blackwell": "rao_blackwell", "bt": "bt_score", "stationary": "stationary",
          "sparse": "sparse", "active": "active"}  # estimate -> the spmcmc candidates column (its SE: column + "_se")
SCORE_OF_MODE = {"exact": "stationary", "sparse": "sparse", "active": "active", "chains": "bt"}


def all_estimates(probs: dict, n: int, order: str, mode: str, edges: list, trace: dict | None, burn_in: int,
                  thin: int, alpha: float, resamples: int, splits: int, seed: int) -> tuple[dict, dict]:
    """({estimate: (values, standard errors)}, {"score": consistency of the mode's score, "frequency": of
    the chains' visits}) from the judge's answers, the design's edges and the chains' trace (or None)."""
    est, rel = {}, {}
    if trace is not None and len(trace["step"]):
        visits = chain_contributions(trace, n, burn_in, thin, rao_blackwell=False)
        est["frequency"] = batch_means(visits)
        est["rao_blackwell"] = batch_means(chain_contributions(trace, n, burn_in, thin, rao_blackwell=True))
        rel["frequency"] = chain_consistency(visits, splits, seed)
    pairs = pair_edges(probs)
    est["bt"] = (bradley_terry(probs, n, alpha),
                 bootstrap_se(lambda c: bradley_terry(probs, n, alpha, pairs, c), pairs, resamples, seed))
    if mode == "active":
        probs = on_edges(probs, edges, [True] * len(edges))  # the design's own comparisons: not an earlier cache's
        est["active"] = imputed_estimate(probs, n, order)
        rel["score"] = graph_consistency(probs, n, order, edges, splits, seed)  # as sparse: halves of the pairs
    elif mode in ("exact", "sparse"):
        est[SCORE_OF_MODE[mode]] = (solve_on_edges(probs, n, order, edges), bootstrap_se(
            lambda c: solve_on_edges(probs, n, order, edges, c, REGULARISE), edges, resamples, seed))
        rel["score"] = graph_consistency(probs, n, order, edges, splits, seed)
    else:
        out = split_half(lambda masks: bradley_terry(probs, n, alpha, pairs, masks.astype(float)), len(pairs), splits,
                         seed)
        rel["score"] = out and {**out, "evidence": "compared pairs"}
    return est, rel


def measured(raw: dict, n: int, sc, calibration: str, mode: str, edges: list, trace: dict | None, burn_in: int,
             thin: int, resamples: int, splits: int) -> dict:
    """One prompt's preferences from the judge's raw answers (its ids 0 .. n-1), the one sequence the spmcmc stage
    and the spmcmc evaluator share: the calibration shift (judge.calibration), every estimate with its standard
    error, the consistency, and which estimate is the score for the design's mode."""
    shift = calibration_shift(raw, calibration)
    probs = shifted(raw, shift)
    est, rel = all_estimates(probs, n, sc.order, mode, edges, trace, burn_in, thin, sc.bt_alpha, resamples, splits,
                             sc.seed)
    return {"shift": shift, "probs": probs, "est": est, "rel": rel, "score": SCORE_OF_MODE[mode]}
