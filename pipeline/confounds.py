"""What a judge's preference tracks, and the preference left when that is held fixed.

A judge that prefers shorter answers, or answers likely under itself, ranks them first whatever their
quality; pairs built from that ranking teach "shorter and likelier". This module measures it and takes
it out, per prompt:

Confounds   per candidate: length (log characters), tokens (log tokens), logprob (summed token
            log-probability under the policy), mean_logprob, count (log(1 + generation count)), and
            format features named in `confounds.formats` ("name=regex": 1 where the text matches).
Strengths   the GLM of pipeline/glm.py on the comparisons already made: logit P(first shown chosen) =
            c + s_first - s_second, c the position bias, with the covariance of s from the judge's own
            disagreeing readings.
Control     s split into what the controlled confounds predict and the rest: s = B beta + q with
            q orthogonal to [1, B] (an ordinary least-squares split; the same fit as the GLM
            logit = c + (q_f - q_s) + beta (b_f - b_s) with that constraint, the AlpacaEval
            length-controlled construction). B holds each confound's z-score and, where the
            candidates allow, a cubic in its rank (control_basis): a judge monotone in a confound,
            not only linear in it, has nothing left. q is the preference at zero confound difference; its
            covariance is the GLM's, projected. A true quality that correlates with a confound in this
            sample is partly removed with it: control is for what you did not ask the judge to reward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.glm import StrengthFit, fit_strengths, softmax_se, strengths_on_subsets

FEATURES = ("length", "tokens", "logprob", "mean_logprob", "count")
FEATURE_MEANING = {"length": "log characters", "tokens": "log tokens", "logprob": "summed log-probability under "
                   "the policy", "mean_logprob": "mean token log-probability", "count": "log(1 + times generated)"}


# ------------------------------------------------------------------------------------ features
def parse_formats(formats: list[str]) -> list[tuple[str, str]]:
    """'name=regex' items -> [(name, regex)] (validated in pipeline/config.py)."""
    return [tuple(item.split("=", 1)) for item in formats]


def features_of(rows: dict, formats: list[str]) -> dict:
    """The confounds of a prompt's candidates from their sample-space (or spmcmc candidates) columns."""
    return candidate_features(rows["text"], rows.get("n_tokens"), rows.get("sum_logprob"), rows.get("mean_logprob"),
                              rows.get("count"), formats)


def candidate_features(texts: list[str], n_tokens=None, sum_logprob=None, mean_logprob=None, count=None,
                       formats: list[str] = ()) -> dict[str, np.ndarray]:
    """{feature: value per candidate}; a feature without its column (e.g. count for rated items) is left out."""
    out = {"length": np.log([max(len(t), 1) for t in texts])}
    given = {"tokens": (n_tokens, lambda v: np.log(np.maximum(v, 1))), "logprob": (sum_logprob, None),
             "mean_logprob": (mean_logprob, None), "count": (count, np.log1p)}
    for name, (values, transform) in given.items():
        if values is not None and None not in list(values):
            v = np.asarray(values, dtype=float)
            out[name] = transform(v) if transform else v
    from pipeline import user_patterns

    for name, pattern in parse_formats(formats):
        rx = user_patterns.compiled(pattern)
        out[name] = np.array([1.0 if user_patterns.search(rx, t, "confounds.formats") else 0.0 for t in texts])
    return out


def spearman_ci(x, y) -> dict:
    """Spearman rho, a 95% interval (Fisher z with the Bonett–Wright variance (1 + rho^2/2)/(n - 3)) and
    its p-value; None where a side is constant or n < 4."""
    return spearman_cis(x, {"y": y})["y"]


def spearman_against(x, columns: list) -> tuple[np.ndarray, np.ndarray]:
    """(Spearman's rho, its two-sided p) of x with each column: scipy's spearmanr arithmetic (Pearson's r of the
    average ranks; Student's t with n - 2 degrees of freedom) for x's row only, the columns ranked in one call.
    spearmanr ranks column by column in Python and tests every pair: ~2 ms a call, three calls a prompt. Equal to
    spearmanr (tests/test_confounds.py)."""
    from scipy.special import stdtr
    from scipy.stats import rankdata

    ranks = rankdata(np.column_stack([x, *columns]), axis=0)
    rho = np.corrcoef(ranks, rowvar=False)[0, 1:]
    dof = len(ranks) - 2
    with np.errstate(divide="ignore"):  # rho = +-1: t infinite, p 0, as in scipy
        t = rho * np.sqrt((dof / ((rho + 1.0) * (1.0 - rho))).clip(0))
    return rho, 2 * stdtr(dof, -np.abs(t))


def spearman_cis(x, ys: dict) -> dict:
    """spearman_ci(x, y) for each y in `ys`, from one spearman_against over the stacked columns (a scipy call per
    confound cost ~0.6 ms, six a prompt)."""
    x = np.asarray(x, float)
    out = {name: {"spearman": None, "ci_low": None, "ci_high": None, "p": None, "n": len(x)} for name in ys}
    cols = {name: np.asarray(y, float) for name, y in ys.items()}
    live = [name for name, y in cols.items() if len(x) >= 4 and np.ptp(x) > 0 and np.ptp(y) > 0]
    if not live:
        return out
    rho, p = spearman_against(x, [cols[name] for name in live])
    for name, rho_k, p_k in zip(live, rho, p):
        r = float(np.clip(rho_k, -0.9999, 0.9999))
        half = 1.959964 * math.sqrt((1 + r * r / 2) / (len(x) - 3))
        out[name] = {"spearman": float(rho_k), "ci_low": math.tanh(math.atanh(r) - half),
                     "ci_high": math.tanh(math.atanh(r) + half), "p": float(p_k), "n": len(x)}
    return out


def standardised(feats: dict[str, np.ndarray], names) -> tuple[np.ndarray, list[str]]:
    """The named features as z-scored columns (constant ones dropped: they explain nothing)."""
    cols, kept = [], []
    for name in names:
        v = feats.get(name)
        if v is not None and np.ptp(v) > 0:
            cols.append((v - v.mean()) / v.std())
            kept.append(name)
    n = len(next(iter(feats.values())))
    return (np.column_stack(cols) if cols else np.zeros((n, 0))), kept


def control_basis(x: np.ndarray) -> np.ndarray:
    """The columns the control removes: each confound's z-score and, for a confound with more than 4 distinct values,
    smooth monotone-capable terms: its square and cube, and a cubic in its mid-rank u in (0, 1) (each z-scored). A
    judge monotone in a confound (linear in characters where the confound is log characters, or in the rank of the
    length) then has nothing left either. Terms are added in that order, all confounds' terms of one kind before the
    next kind, while they leave at least 2/3 of the N - 1 free directions to test: with few candidates the control
    is linear only (the degrees-of-freedom guard)."""
    from scipy.stats import rankdata

    n, k = x.shape
    smooth = [j for j in range(k) if len(np.unique(x[:, j])) > 4]
    u = {j: (rankdata(x[:, j]) - 0.5) / n for j in smooth}
    kinds = (lambda j: x[:, j] ** 2, lambda j: u[j], lambda j: x[:, j] ** 3, lambda j: u[j] ** 2, lambda j: u[j] ** 3)
    extra = [v for kind in kinds for v in (kind(j) for j in smooth)]
    room = max((n - 1) // 3 - k, 0)
    cols = [(v - v.mean()) / v.std() for v in extra[:room] if v.std() > 0]
    return np.column_stack([x, *cols]) if cols else x


def residual_maker(x: np.ndarray) -> np.ndarray:
    """M = I - H for the columns [1, x]: M s is what the columns do not predict."""
    n = x.shape[0]
    a = np.column_stack([np.ones(n), x])
    return np.eye(n) - a @ np.linalg.pinv(a)


def control_residuals(x: np.ndarray) -> np.ndarray:
    """The M the control applies to confounds x: residual_maker of control_basis(x)."""
    return residual_maker(control_basis(x))


@dataclass
class Controlled:
    """The preference at zero difference of the controlled confounds."""
    q: np.ndarray
    cov: np.ndarray
    names: list[str]
    beta: np.ndarray  # per SD of each confound, on the log-strength scale
    beta_se: np.ndarray  # over candidates (statsmodels OLS of s on the confounds)
    beta_p: np.ndarray
    r2: float | None


def control(fit: StrengthFit, x: np.ndarray, names: list[str], m: np.ndarray | None = None) -> Controlled:
    """q = M s and its covariance M cov M', M = control_residuals(x) (`m`: that M, when the caller has it); beta
    (the linear part, per SD of each confound), its SE and p from the candidate-level regression of s on x."""
    import statsmodels.api as sm

    m = control_residuals(x) if m is None else m
    n, k = x.shape
    beta = se = p = np.zeros(0)
    r2 = None
    if k and n > k + 1:
        ols = sm.OLS(fit.s, np.column_stack([np.ones(n), x])).fit()
        beta, se, p = ols.params[1:], ols.bse[1:], ols.pvalues[1:]
        r2 = float(ols.rsquared)
    return Controlled(q=m @ fit.s, cov=m @ fit.cov @ m.T, names=names, beta=np.asarray(beta), beta_se=np.asarray(se),
                      beta_p=np.asarray(p), r2=r2)


@dataclass
class CrossFit:
    """q fitted and controlled on each half of a prompt's compared pairs: `rank` from one half ranks the pairs,
    `test` and `test_cov` from the other test them."""
    rank: np.ndarray
    test: np.ndarray
    test_cov: np.ndarray


def cross_fit(probs: dict, n: int, x: np.ndarray, seed) -> CrossFit | None:
    """The compared pairs (both orders together) split at random into two halves, the GLM and the control fitted on
    each. A pair ranked far apart by the same comparisons that test it is far apart partly by its own noise (the
    winner's curse: with no preference at all, most top-vs-bottom pairs pass gap_z >= 1); ranked on one half and
    tested on the other, its z has the null distribution it claims. None where a half has too few comparisons or does
    not connect the candidates (its strengths would not be identified)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = sorted({(min(f, s), max(f, s)) for f, s in probs})
    side = np.random.default_rng(seed).permutation(len(edges)) < len(edges) // 2
    m = control_residuals(x)
    fits = []
    for half in (True, False):
        kept = np.array([e for e, h in zip(edges, side) if h == half]).reshape(-1, 2)
        graph = coo_matrix((np.ones(len(kept)), (kept[:, 0], kept[:, 1])), shape=(n, n))
        if len(kept) < 2 or connected_components(graph, directed=False)[0] > 1:
            return None
        edge_set = set(map(tuple, kept.tolist()))
        fit = fit_strengths({k: v for k, v in probs.items() if (min(k), max(k)) in edge_set}, n)
        if fit is None:
            return None
        fits.append(fit)
    return CrossFit(rank=m @ fits[0].s, test=m @ fits[1].s, test_cov=m @ fits[1].cov @ m.T)


def explained(s: np.ndarray, x: np.ndarray) -> dict:
    """R^2 (and adjusted) of the log-strengths on the confound columns, ordinary least squares."""
    n, k = x.shape
    if k == 0 or n <= k + 1 or np.ptp(s) == 0:
        return {"r2": None, "r2_adjusted": None, "features": k}
    resid = residual_maker(x) @ s
    r2 = 1.0 - float(resid @ resid) / float(((s - s.mean()) ** 2).sum())
    return {"r2": r2, "r2_adjusted": 1.0 - (1.0 - r2) * (n - 1) / (n - k - 1), "features": k}


# ------------------------------------------------------------------------------------ what is left
def order_averaged_w(delta, position: float):
    """W = 1/2 (P(a chosen | a first) + 1 - P(b chosen | b first)) under the GLM, for strength gap delta = s_a - s_b."""
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    return 0.5 * (sig(position + delta) + 1.0 - sig(position - delta))


def pair_z(values: np.ndarray, cov: np.ndarray, a: int, b: int) -> float:
    """(v_a - v_b) / SE, the SE from the covariance (inf when the judge never disagreed with the model)."""
    var = cov[a, a] + cov[b, b] - 2 * cov[a, b]
    gap = float(values[a] - values[b])
    if var <= 1e-18:
        return math.copysign(math.inf, gap) if gap else 0.0
    return gap / math.sqrt(var)


def strength(values: np.ndarray, cov: np.ndarray, position: float, pairs: list[tuple[int, int]],
             resid_df: int | None = None) -> dict:
    """How much preference the strengths carry: mean |W - 1/2| over `pairs`, on the judge's order-averaged scale (as
    the model would choose between the two), corrected for measurement noise, with a 90% interval.

    Noise makes any estimate look like a preference (|.| of noise is positive), so the figure is computed for
    the estimate shrunk to its noise-free size: lambda = v' cov^+ v estimates the noncentrality of the Wald
    statistic; lambda_true = max(lambda - df, 0) and its interval (inverting the noncentral F, or chi^2 without
    `resid_df`) rescale v by sqrt(lambda_true / lambda). The interval is two-sided 90% so that its lower end is 0
    exactly when the 5% Wald test of "no preference" does not reject; `naive` is mean |W - 1/2| as it stands."""
    if not pairs:
        return {"mean_abs_w_minus_half": None, "naive": None, "ci_low": None, "ci_high": None, "level": LEVEL,
                **wald_test(values, cov, resid_df)}
    a, b = np.array(pairs).T

    def stat(scale):
        return float(np.mean(np.abs(order_averaged_w(scale * (values[a] - values[b]), position) - 0.5)))
    test = wald_test(values, cov, resid_df)
    if test["chi2"] is None or test["chi2"] <= 0:  # no measurement noise at all: the estimate is the preference
        return {"mean_abs_w_minus_half": stat(1.0), "naive": stat(1.0), "ci_low": stat(1.0), "ci_high": stat(1.0),
                "level": LEVEL, **test}
    lam, df = test["chi2"], test["df"]
    low, high = noncentrality_interval(lam, df, resid_df)
    scale = lambda size: math.sqrt(size / lam)  # noqa: E731
    return {"mean_abs_w_minus_half": stat(scale(max(lam - df, 0.0))), "naive": stat(1.0), "ci_low": stat(scale(low)),
            "ci_high": stat(scale(high)), "level": LEVEL, **test}


LEVEL = 0.90  # the strength interval's: its lower end is 0 exactly when the 5% test does not reject
ALPHA = 0.05


def noncentrality_interval(observed: float, df: int, resid_df: int | None = None) -> tuple[float, float]:
    """Two-sided 90% interval for the noncentrality lambda of a Wald statistic observed at `observed` = chi2 (test
    inversion: F = chi2 / df against the noncentral F(df, resid_df, lambda), or the noncentral chi^2 without resid_df;
    beyond where scipy is accurate, the normal approximation mean df + lam, variance 2(df + 2 lam)). The lower end is
    0 exactly when the 5% Wald test does not reject."""
    from scipy import special
    from scipy.optimize import brentq

    tail = (1 - LEVEL) / 2
    if observed > 1e4:
        z = 1.6448536

        def bound(sign):  # observed = df + lam + sign z sqrt(2 (df + 2 lam)), solved for lam
            lam = max(observed - df, 0.0)
            for _ in range(50):
                lam = max(observed - df - sign * z * math.sqrt(2 * (df + 2 * lam)), 0.0)
            return lam
        return bound(1), bound(-1)
    # scipy.special's ufuncs are what scipy.stats' ncx2.sf, ncf.sf, chi2.sf and f.sf compute (to 2e-15 where the
    # root is, both Boost's), without the distribution machinery's ~0.1 ms a call: brentq calls them ~60 times
    if resid_df is None:
        sf = lambda nc: 1 - special.chndtr(observed, df, nc) if nc > 0 else special.chdtrc(df, observed)  # noqa: E731
    else:
        sf = lambda nc: (1 - special.ncfdtr(df, resid_df, nc, observed / df) if nc > 0  # noqa: E731
                         else special.fdtrc(df, resid_df, observed / df))
    top = observed * 4 + 200
    low = 0.0 if sf(0.0) >= tail else brentq(lambda nc: sf(nc) - tail, 0.0, top)
    high = 0.0 if 1 - sf(0.0) <= tail else brentq(lambda nc: (1 - sf(nc)) - tail, 0.0, top)
    return float(low), float(high)


def wald_test(q: np.ndarray, cov: np.ndarray, resid_df: int | None = None) -> dict:
    """Is any preference left? chi2 = q' cov^+ q on df = rank(cov); p from F = chi2 / df against F(df, resid_df)
    when the covariance is estimated from resid_df clusters (the GLM's), else from chi^2(df)."""
    from scipy.special import chdtrc, fdtrc  # what chi2.sf and f.sf compute, without their ~0.03 ms a call

    eig = np.linalg.eigvalsh(cov)
    df = int((eig > eig.max() * 1e-9).sum()) if eig.size and eig.max() > 0 else 0
    if df == 0:
        return {"chi2": None, "df": 0, "resid_df": resid_df, "p": None}
    stat = float(q @ np.linalg.pinv(cov, hermitian=True, rcond=1e-9) @ q)
    tail = max(stat, 0.0)  # a rounding-negative statistic: p 1, as scipy.stats' support gives (the ufuncs give NaN)
    p = chdtrc(df, tail) if resid_df is None else fdtrc(df, resid_df, tail / df)
    return {"chi2": stat, "df": df, "resid_df": resid_df, "p": float(p)}


def consistency(probs: dict, n: int, x: np.ndarray, splits: int, seed: int, m: np.ndarray | None = None) -> dict | None:
    """Split-half consistency of q: the compared pairs (both orders together) split at random, the GLM and the
    control fitted on each half, Spearman between the halves' q, Spearman–Brown corrected, averaged over splits.
    `m`: control_residuals(x), when the caller has it."""
    from pipeline.estimates import split_half

    edges = sorted({(min(f, s), max(f, s)) for f, s in probs})
    if len(edges) < 4:
        return None
    m = control_residuals(x) if m is None else m
    column = {e: k for k, e in enumerate(edges)}
    edge_of = np.array([column[min(k), max(k)] for k in probs])  # each comparison's unordered pair
    out = split_half(lambda masks: strengths_on_subsets(probs, n, masks[:, edge_of]) @ m.T, len(edges), splits, seed)
    return out and {**out, "evidence": "compared pairs"}


# ------------------------------------------------------------------------------------ one prompt
def greedy_rank(values, greedy) -> int | None:
    """1 = the greedy answer is the most preferred; None without a greedy answer."""
    hits = [i for i, g in enumerate(greedy or []) if g]
    if not hits:
        return None
    ranks = (-np.asarray(values, float)).argsort(kind="stable").argsort() + 1
    return int(ranks[hits[0]])


def analyse(probs: dict, n: int, feats: dict[str, np.ndarray], score: np.ndarray, greedy, control_names: list[str],
            splits: int, seed: int) -> tuple[dict, tuple | None, dict]:
    """One prompt: (summary, (controlled score, its SE) or None, arrays for pooling over prompts).

    Summary: each confound's Spearman with the score (95% CI, p); R^2 of the GLM strengths on all confounds and on
    the controlled ones; the GLM's position bias and dispersion; the raw and the controlled strength (mean |W - 1/2|
    on the judge's order-averaged scale, corrected for noise, 95% interval, with the Wald test of "no preference");
    the controlled score's consistency and the greedy answer's rank under both."""
    fit = fit_strengths(probs, n)
    x_all, all_names = standardised(feats, list(feats))
    pairs = sorted({(min(f, s), max(f, s)) for f, s in probs if f != s})
    summary = {"features": spearman_cis(score, feats),
               "greedy_rank": greedy_rank(score, greedy), "controlled": None,
               "explained": {**explained(fit.s, x_all), "names": all_names} if fit else None,
               "glm": {"position": fit.position, "dispersion": fit.dispersion, "comparisons": fit.comparisons}
               if fit else None,
               "raw_strength": strength(fit.s, fit.cov, fit.position, pairs, fit.resid_df) if fit else None}
    pool = {"s": fit.s if fit else None, "x": x_all, "names": all_names}
    x, names = standardised(feats, control_names)
    if fit is None or not control_names or n - 1 - len(names) < 2:
        return summary, None, pool
    m = control_residuals(x)  # once: the control and its consistency remove the same columns
    c = control(fit, x, names, m)
    pool["q"] = c.q
    p, se = softmax_se(c.q, c.cov)
    summary["controlled"] = {
        "control": names, "constant": [k for k in control_names if k not in names],
        "beta": {k: {"per_sd": float(b), "se": float(e), "p": float(pv)} for k, b, e, pv in
                 zip(names, c.beta, c.beta_se, c.beta_p)},
        "r2": c.r2, "strength": strength(c.q, c.cov, fit.position, pairs, fit.resid_df),
        # 0 for the controlled confounds by construction; what the others still explain of it is a finding
        "explained_by_all": {**explained(c.q, x_all), "names": all_names},
        "consistency": consistency(probs, n, x, splits, seed, m),
        "greedy_rank": greedy_rank(p, greedy), "score_spearman_with_raw": spearman_ci(p, score)["spearman"]}
    return summary, (p, se), pool


def controlled_for(ctrl: dict) -> str:
    """'length, evil' as held fixed, naming any controlled confound dropped because it is the same for every answer
    (a format that matches all or none of them): it explains nothing, so nothing is held fixed for it."""
    held, dropped = ", ".join(ctrl["control"]) or "nothing", ctrl.get("constant") or []
    return held + (f" ({', '.join(dropped)} dropped: the same for every answer"
                   + (" of some prompt" if ctrl.get("prompts") else "") + ", it explains nothing)" if dropped else "")


def pooled_explained(pools: list[dict]) -> dict:
    """R^2 of the strengths on the confounds within prompts: each prompt's strengths centred and its confounds
    z-scored (0 where one is constant in a prompt), stacked, one regression."""
    usable = [p for p in pools if p["s"] is not None]
    if not usable:
        return {"r2": None, "r2_adjusted": None, "features": 0, "names": []}
    names = list(dict.fromkeys(k for p in usable for k in p["names"]))  # constant within a prompt: a column of 0

    def column(p, k):
        return p["x"][:, p["names"].index(k)] if k in p["names"] else np.zeros(len(p["s"]))
    s = np.concatenate([p["s"] - p["s"].mean() for p in usable])
    x = np.vstack([np.column_stack([column(p, k) for k in names]) for p in usable])
    n, k = x.shape
    if k == 0 or n <= k + len(usable) or not s.any():
        return {"r2": None, "r2_adjusted": None, "features": k, "names": names}
    beta, *_ = np.linalg.lstsq(x, s, rcond=None)
    resid = s - x @ beta
    r2 = 1.0 - float(resid @ resid) / float(s @ s)
    return {"r2": r2, "r2_adjusted": 1.0 - (1.0 - r2) * (n - len(usable)) / (n - len(usable) - k), "features": k,
            "names": names}


def warning(summary: dict, warn_r2: float, pooled: bool = False) -> str | None:
    """When the confounds explain most of the judge's strengths (adjusted R^2, so that many confounds over few
    candidates do not trip it by chance), a line naming those that track the score."""
    r2 = (summary.get("explained") or {}).get("r2_adjusted")
    if r2 is None or r2 < warn_r2:
        return None
    named = sorted(((k, f) for k, f in summary["features"].items() if f.get("spearman") is not None
                    and (f["ci_low"] > 0 or f["ci_high"] < 0)), key=lambda t: -abs(t[1]["spearman"]))
    what = ", ".join(f"{k} ρ = {f['spearman']:+.2f}" for k, f in named) or "no single confound on its own"
    return (f"the confounds explain R² = {r2:.2f} (adjusted{', within prompts' if pooled else ''}) of the judge's "
            f"preference strengths ({what}): pairs from the raw score mostly teach these; preferences.control=true "
            f"builds them from the controlled score (holding confounds.control fixed)")
