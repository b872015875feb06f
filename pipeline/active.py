"""The active design (spmcmc.mode=active): comparisons chosen in rounds, each time where the estimate is still
open, with one budget shared by every prompt of the run.

Per prompt the design starts from the sparse design's smallest graph, two seeded random cycles (each candidate
compared with about four others): one cycle fits the GLM exactly, leaving no residual to measure the judge's noise
by, and a design that stopped there would call itself precise (TV 0.27 from the truth on the intransitive bench
judge at N = 45).
Then, round after round, the judge's answers so far are fitted by the Bradley-Terry GLM of pipeline/confounds.py
(logit P(first chosen) = c + s_first - s_second, quasi-binomial), and the next comparisons go where they cut the
expected error of the score most:

- the score is pi = softmax(s); its expected total-variation error is ~ 1/2 sqrt(2/pi) sum_i pi_i sd_i, with sd_i
  the standard deviation of log pi_i (the GLM's covariance, re-centred by pi);
- an edge (i, j), judged in both orders, adds about 2 p (1 - p) / dispersion to the information on s_i and s_j
  (p the GLM's own P(i over j)); its value is the drop it buys in pi_i sd_i + pi_j sd_j;
- the best new edges, no candidate twice in a round, spmcmc.round_size comparisons a round (shared by all prompts).

A prompt stops when its expected TV error from the exact answer (every comparison) is at most spmcmc.precision (an
absolute total variation: for a judge whose whole preference is a TV of ~0.02 from uniform, 0.03 is not precise
about its order; the summary warns when a prompt stopped "precise" below 2 x precision from uniform),
when it is flat (no pair, of all N(N-1)/2, has an order-averaged choice that can reach spmcmc.flat_w at the
upper 95% bound of its strength gap; flat_w defaults to preferences.min_confidence, the filter it protects: no
DPO pair could pass there, so comparisons are not spent on it), or when
it has every comparison. The run stops when every prompt has stopped or spmcmc.budget x prompts is spent.

Everything is a function of the seed and the answers already in the pair cache: a killed run replays the same
rounds from the cache (nothing judged twice) and ends with the same design; a finished one replays in seconds.
The expected TV is an approximation (independent, normal errors of log pi): on the bench's intransitive judge it
runs about 1.5x below the TV actually reached, on its order-biased judge above it (docs/PERFORMANCE.md).
The estimate on the final design is the stationary distribution of the paper's chain on the complete graph,
with each pair the design did not compare filled in by the GLM (pipeline/estimates.py: imputed_stationary).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.special import expit

from pipeline.estimates import MIN_DEGREE, design_graph
from pipeline.glm import fit_strengths, log_share_sd

Z95 = 1.959963984540054


@dataclass
class PromptDesign:
    """One prompt's active design so far: its candidates are global ids lo .. lo+n-1; edges local (i < j)."""
    n: int
    lo: int
    edges: list[tuple[int, int]] = field(default_factory=list)
    stop: str | None = None  # precise | flat | complete | budget
    expected_tv: float | None = None
    distance: float | None = None  # the estimate's TV from uniform: how sharp the preference is

    def comparisons(self) -> list[tuple[int, int]]:
        """The global, ordered comparisons of the edges (both orders)."""
        return [(self.lo + a, self.lo + b) for i, j in self.edges for a, b in ((i, j), (j, i))]


@dataclass
class Assessment:
    pi: np.ndarray  # the GLM's score, softmax(s)
    var_fit: np.ndarray  # the GLM's variance of log pi_i
    var_pair: float  # one uncompared pair's logit error: the judge's pair-level noise the GLM cannot impute
    missing: np.ndarray  # per candidate, the others it was not compared with
    expected_tv: float
    distance: float  # TV of pi from uniform
    max_w_upper: float  # the largest order-averaged W any pair could have, upper 95% bound
    s: np.ndarray
    position: float
    dispersion: float


def assess(local: dict, n: int) -> Assessment | None:
    """The GLM on one prompt's comparisons (local ids) and what it says about the score's precision.

    Two errors: the GLM's own (its covariance) and the imputation's. The estimate fills every uncompared pair with
    the GLM's probability, but the truth (every comparison) holds each pair's own deviation from the GLM (an
    intransitive judge's), of logit variance ~ dispersion / mean w (w = mu (1 - mu), the quasi-binomial residual on
    the logit scale). In the exact stationary distribution log pi_i moves by about the mean of candidate i's pair
    logits, so candidate i's m_i uncompared pairs add m_i var_pair / (N - 1)^2."""
    fit = fit_strengths(local, n)
    if fit is None:
        return None
    s, cov = fit.s, fit.cov
    pi = np.exp(s - s.max())
    pi /= pi.sum()
    var_fit = log_share_sd(cov, pi) ** 2
    var_pair, missing = imputation(fit, local, n)
    sd = np.sqrt(var_fit + var_pair * missing / (n - 1) ** 2)
    # flat: no pair, of all N(N-1)/2, can reach flat_w at the upper 95% bound of its strength gap
    gap_sd = np.sqrt(np.clip(np.diag(cov)[:, None] + np.diag(cov)[None, :] - 2 * cov, 0.0, None))
    gap = float((np.abs(s[:, None] - s[None, :]) + Z95 * gap_sd)[np.triu_indices(n, 1)].max())
    max_w = 0.5 * (expit(fit.position + gap) + 1.0 - expit(fit.position - gap))
    return Assessment(pi=pi, var_fit=var_fit, var_pair=var_pair, missing=missing,
                      expected_tv=float(0.5 * math.sqrt(2 / math.pi) * np.sum(pi * sd)),
                      distance=float(0.5 * np.abs(pi - 1.0 / n).sum()), max_w_upper=float(max_w), s=s,
                      position=fit.position, dispersion=max(fit.dispersion, 1e-6))


def imputation(fit, local: dict, n: int) -> tuple[float, np.ndarray]:
    """(var_pair, missing): one uncompared pair's logit variance around the GLM (the judge's pair-level noise,
    dispersion / mean w) and, per candidate, how many of its pairs were not compared (so imputed)."""
    keys = np.array(list(local))
    mu = expit(fit.position + fit.s[keys[:, 0]] - fit.s[keys[:, 1]])
    var_pair = float(max(fit.dispersion, 0.0) / max(np.mean(mu * (1 - mu)), 1e-6))
    compared = {(min(k), max(k)) for k in local}
    degree = np.bincount(np.array([e for edge in compared for e in edge]), minlength=n)
    return var_pair, (n - 1 - degree).astype(float)


def edge_values(a: Assessment, compared: set) -> np.ndarray:
    """value[i, j] (i < j, not yet compared): the drop in pi_i sd_i + pi_j sd_j that judging (i, j) in both orders
    buys: the information it adds to the fit (diagonal approximation) and one pair less to impute; -inf where no
    edge can be added."""
    n = len(a.s)
    d = a.s[:, None] - a.s[None, :]
    p, q = expit(a.position + d), expit(a.position - d)
    info = (p * (1 - p) + q * (1 - q)) / a.dispersion  # both presentation orders
    fit = np.maximum(a.var_fit, 1e-12)[:, None]
    imputed = (a.var_pair * a.missing / (n - 1) ** 2)[:, None]
    before = np.sqrt(fit + imputed)
    after = np.sqrt(1.0 / (1.0 / fit + info) + np.maximum(imputed - a.var_pair / (n - 1) ** 2, 0.0))
    drop = a.pi[:, None] * (before - after)
    value = drop + drop.T
    mask = np.triu(np.ones((n, n), dtype=bool), 1)
    for i, j in compared:
        mask[i, j] = False
    return np.where(mask, value, -np.inf)


def best_edges(value: np.ndarray, k: int) -> list[tuple[int, int]]:
    """Up to k edges of highest value, no candidate twice (ties by index: deterministic)."""
    flat = np.argsort(-value, axis=None, kind="stable")
    used, out = set(), []
    for idx in flat:
        i, j = divmod(int(idx), value.shape[0])
        if not np.isfinite(value[i, j]) or len(out) == k:
            break
        if i in used or j in used:
            continue
        out.append((i, j))
        used.update((i, j))
    return out


def local_probs(probs: dict, d: PromptDesign) -> dict:
    return {(f - d.lo, s - d.lo): probs[f, s] for f, s in d.comparisons() if (f, s) in probs}


def run_design(designs: list[PromptDesign], probs: dict, ask, sc) -> dict:
    """Rounds of sc.round_size comparisons until every prompt has stopped or the shared budget (sc.budget per prompt) is
    spent. `ask(pairs)` puts the judge's answers for global ordered pairs into `probs` (cache first). Returns the
    run's figures; each design's edges, stop reason and expected error are filled in."""
    from pipeline.config import PreferencesConfig

    total = sc.budget * len(designs)
    # load_config sets flat_w to preferences.min_confidence; a section built alone falls back to that default
    flat_w = sc.flat_w if sc.flat_w is not None else PreferencesConfig().min_confidence
    for d in designs:
        d.edges = design_graph(d.n, MIN_DEGREE, sc.seed * 1_000_003 + d.lo)  # two cycles: see the module docstring
    start = sum(2 * len(d.edges) for d in designs)
    if start > total:
        from pipeline.artifacts import StageError

        raise StageError(f"spmcmc.budget={sc.budget} per prompt ({total} for {len(designs)} prompt(s)) is below the "
                         f"active design's starting graph, {start} comparisons (each candidate compared with "
                         f"{MIN_DEGREE} others, both orders, so that every strength is estimable); raise spmcmc.budget "
                         f"to at least {-(-start // len(designs))}")
    ask([p for d in designs for p in d.comparisons()])
    rounds = 0
    while True:
        spent = sum(2 * len(d.edges) for d in designs)
        offers = []
        for k, d in enumerate(designs):
            if d.stop is not None:
                continue
            if len(d.edges) == d.n * (d.n - 1) // 2:
                d.stop = "complete"
                continue
            a = assess(local_probs(probs, d), d.n)
            if a is None:
                d.stop = "complete"
                continue
            d.expected_tv, d.distance = a.expected_tv, a.distance
            if a.max_w_upper < flat_w:
                d.stop = "flat"
            elif d.expected_tv <= sc.precision:
                d.stop = "precise"
            else:
                value = edge_values(a, set(d.edges))
                offers += [(float(value[i, j]), k, (i, j)) for i, j in best_edges(value, max(1, sc.round_size // 2))]
        if not offers or spent >= total:
            for d in designs:
                d.stop = d.stop or "budget"
            break
        room = max(1, min(sc.round_size, total - spent) // 2)
        chosen = sorted(offers, key=lambda o: (-o[0], o[1], o[2]))[:room]
        for _, k, edge in chosen:
            designs[k].edges.append(edge)
        ask([(designs[k].lo + a, designs[k].lo + b) for _, k, (i, j) in chosen for a, b in ((i, j), (j, i))])
        rounds += 1
    return {"rounds": rounds, "comparisons": sum(2 * len(d.edges) for d in designs), "budget": total,
            "stops": {reason: sum(d.stop == reason for d in designs) for reason in ("precise", "flat", "complete",
                                                                                 "budget")}}
