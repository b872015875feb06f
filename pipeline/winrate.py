"""The tuned policy's win rate, and the yardstick that says how much of what the judge could award it got.

On the evaluation prompts (the prompts held out of training; for one query, that query) every policy writes
`evaluate.winrate_samples` fresh answers with the sample space's sampling settings (`policy_answers`). The
reference is the base policy's own answers drawn that way: the same normalisation, nothing filtered, so the
tuned answers and the reference are measured alike (the sample space itself drops truncated and too short
answers, which a policy's real answers include). Against that reference, with the same judge:

- win rate: mean over prompts of the tuned answers' order-averaged W against the base answers (0.5 = no better);
- the ceiling: the base policy's best of n answers, as the judge picks it, against another base answer. The pick
  and the score use different comparisons (the winner's curse otherwise: pure judge noise read 0.549 for 0.500):
  each reference answer is picked by its W against the null answers below and scored by its W against the other
  reference answers outside the contest (never itself, never the contest's losers); every n-subset of the K
  reference answers, in closed form over the ranks, for n = 4, 8 and sample_space.num_samples where
  n < K = evaluate.winrate_samples. `headroom_share` = (win - 1/2) / (BoN-8 - 1/2), its interval by the delta
  method with the ceiling's own variance;
- the null: a second, independent draw of base answers against the reference (it should be 1/2);
- a length-controlled win rate (a GLM of W on the length and base-log-probability differences,
  read at zero difference, the AlpacaEval construction with pipeline/confounds.py's confounds), fitted per prompt
  and pooled with the t interval over prompts (a prompt's cells share its answers: they are not independent);
  for one query, the GLM's coefficient with a covariance clustered two ways, by tuned and by base answer;
- drift: the tuned answers' length and base log-probability against the base answers', and KL(tuned || base) of
  the policies from separate tuned samples at temperature 1 without top-p (the distribution the log-probabilities
  describe; a truncated answer gets no end of turn), as the mean log-ratio and Schulman's k3;
- intervals: Student t over prompts, which holds its coverage with few units where a percentile bootstrap does
  not; for one query a two-sample interval over the tuned and the base answers (both are samples; holding the
  base answers fixed would cover ~85%): tests/test_winrate.py. Fewer than 10 prompts warn.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline import parallel
from pipeline.estimates import order_averaged
from pipeline.metrics import mean_ci_t, mean_of, two_sample_ci

BEST_OF = (4, 8)
MIN_PROMPTS = 10


# ------------------------------------------------------------------------------------ closed forms
def best_of_n(select: np.ndarray, w: np.ndarray, n: int) -> float | None:
    """The base policy's best of n against another of its answers, from K reference answers: over every n-subset S,
    the best in S by `select`, against the answers outside S (W[best, other]), averaged; in closed form over the
    ranks. The opponents are never in the contest (they would be its losers, and the best would look better than it
    is against a random answer); `select` must come from other comparisons than W. None where K < n + 1."""
    k = len(select)
    if n < 1 or k < n + 1:
        return None
    rank = np.empty(k, dtype=int)
    rank[np.argsort(select, kind="stable")] = np.arange(1, k + 1)  # ascending: the best of S has the highest
    below = np.array([math.comb(r - 2, n - 1) if r >= 2 else 0 for r in range(k + 2)], dtype=float)
    level = np.array([math.comb(r - 1, n - 1) if r >= 1 else 0 for r in range(k + 2)], dtype=float)
    # subsets where b is best and b' is outside: b' ranked below b leaves r_b - 2 others to choose from, above r_b - 1
    weight = np.where(rank[None, :] < rank[:, None], below[rank][:, None], level[rank][:, None])
    np.fill_diagonal(weight, 0.0)
    return float((weight * np.asarray(w, float)).sum() / (math.comb(k, n) * (k - n)))


def best_of_n_se(select: np.ndarray, w: np.ndarray, n: int) -> float | None:
    """The jackknife SE of best_of_n over the reference answers (each left out in turn): the one query's ceiling
    varies with which answers the base happened to write."""
    k = len(select)
    if k - 1 < n + 1:
        return None
    keep = [np.delete(np.arange(k), i) for i in range(k)]
    loo = np.array([best_of_n(select[m], w[np.ix_(m, m)], n) for m in keep])
    return float(math.sqrt((k - 1) / k * ((loo - loo.mean()) ** 2).sum()))


def kl_estimates(logp_tuned: np.ndarray, logp_base: np.ndarray) -> dict:
    """KL(tuned || base) from samples of the tuned policy with their sequence log-probabilities under both:
    the mean log-ratio (unbiased, can go negative) and k3 = E[(r - 1) - log r], r = p_base / p_tuned (>= 0)."""
    if not len(logp_tuned):
        return {"kl": None, "kl_k3": None, "samples": 0}
    log_r = np.asarray(logp_base, float) - np.asarray(logp_tuned, float)
    return {"kl": float(np.mean(-log_r)), "kl_k3": float(np.mean(np.expm1(log_r) - log_r)), "samples": int(len(log_r))}


def headroom(win: dict, ceiling: dict) -> dict:
    """(win - 1/2) / (ceiling - 1/2) with a 95% interval by the delta method that carries both estimates' variances
    and their covariance ({mean, var} each, cov in `ceiling`, df for the t quantile). No interval when the
    ceiling's own interval reaches 1/2 (the ratio is then unbounded: Fieller), no share when it is below 1/2."""
    from scipy import stats

    c, w = ceiling.get("mean"), win.get("mean")
    if c is None or w is None or c - 0.5 < 0.005:  # no headroom to share
        return {"mean": None, "ci_low": None, "ci_high": None, "unbounded": False}
    d = c - 0.5
    share = (w - 0.5) / d
    if win.get("var") is None or ceiling.get("var") is None:
        return {"mean": share, "ci_low": None, "ci_high": None, "unbounded": False}
    q = stats.t.ppf(0.975, ceiling["df"])
    if d - q * math.sqrt(ceiling["var"]) <= 0:
        return {"mean": share, "ci_low": None, "ci_high": None, "unbounded": True}
    var = (win["var"] - 2 * share * ceiling.get("cov", 0.0) + share ** 2 * ceiling["var"]) / d ** 2
    half = q * math.sqrt(max(var, 0.0))
    return {"mean": share, "ci_low": share - half, "ci_high": share + half, "unbounded": False}


# ------------------------------------------------------------------------------------ the pool
def reference(texts: list[str], logp: list[float]) -> dict:
    """One prompt's base answers as the reference: each draw weighs 1 (a repeated text is drawn more often)."""
    return {"text": texts, "weight": np.ones(len(texts)), "logp": np.asarray(logp, float)}


# ------------------------------------------------------------------------------------ per prompt
def prompt_figures(pool: dict, w_pool: np.ndarray, w_tuned: np.ndarray, w_fresh: np.ndarray, draws: int) -> dict:
    """One prompt: the tuned and fresh-base answers' win against the pool, the best-of-n ceilings, the pool's
    mean length and log-probability. w_tuned[t, b]: W of tuned answer t over pool candidate b."""
    weight = pool["weight"] / pool["weight"].sum()
    out = {"win": float((w_tuned @ weight).mean()), "per_answer": (w_tuned @ weight).tolist(),
           "per_reference": w_tuned.mean(0).tolist(),  # each base answer's loss share: its part of the variance
           "base_fresh_win": float((w_fresh @ weight).mean()) if len(w_fresh) else None,
           "fresh_per_answer": (w_fresh @ weight).tolist() if len(w_fresh) else [],
           "fresh_per_reference": w_fresh.mean(0).tolist() if len(w_fresh) else [],
           "pool_size": len(weight), "pool_chars": float(weight @ np.array([len(t) for t in pool["text"]]))}
    if len(w_fresh):
        select = 1.0 - w_fresh.mean(0)  # each reference answer's W over the null answers: the pick
        for n in sorted({*BEST_OF, draws}):
            if n + 1 <= len(w_pool):
                out[f"ceiling_{n}"] = best_of_n(select, w_pool, n)
        se = best_of_n_se(select, w_pool, 8)
        out["ceiling_8_var"] = None if se is None else se ** 2  # the one query's (over prompts: their spread)
    out["pool_logp"] = float(weight @ pool["logp"]) if np.isfinite(pool["logp"]).all() else None
    return out


def length_controlled(w: list[float], d_length: list[float], d_logp: list[float], clusters=None) -> dict:
    """W of tuned over pool answers as a quasi-binomial GLM on the standardised length and base-log-probability
    differences; the win rate read at zero difference, sigmoid(intercept). With `clusters` (one column per way: the
    tuned answer, the base answer) a 95% t interval from the covariance clustered both ways (df: the fewer clusters
    - 1); without, the point estimate only (pooled over prompts by the caller)."""
    import warnings

    import statsmodels.api as sm
    from scipy import stats

    cols = [np.asarray(v, float) for v in (d_length, d_logp) if np.isfinite(v).all() and np.std(v) > 0]
    x = np.column_stack([np.ones(len(w)), *[c / c.std() for c in cols]])
    if len(w) <= x.shape[1] + 1:
        return {"mean": None, "ci_low": None, "ci_high": None}
    model = sm.GLM(np.clip(w, 0, 1), x, family=sm.families.Binomial())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = model.fit(scale="X2") if clusters is None else \
            model.fit(cov_type="cluster", cov_kwds={"groups": np.asarray(clusters)})
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    theta = float(res.params[0])
    if clusters is None:
        return {"mean": sig(theta), "ci_low": None, "ci_high": None}
    df = max(min(len(np.unique(c)) for c in np.asarray(clusters).T) - 1, 1)
    half = stats.t.ppf(0.975, df) * float(res.bse[0])
    return {"mean": sig(theta), "ci_low": sig(theta - half), "ci_high": sig(theta + half)}


def summarise(rows: list[dict], lc: dict, kl: dict, tuned_chars: float, tuned_logp: float | None,
              single_query: bool, prompt_set: bool = False) -> dict:
    """The yardstick over the evaluation prompts: t intervals over prompts; for one query (or a prompt set with one
    held-out prompt, `prompt_set`), the two-sample interval over the tuned answers and the base answers they meet
    (metrics.two_sample_ci)."""
    if single_query:
        win = two_sample_ci(rows[0]["per_answer"], rows[0]["per_reference"])
        null = two_sample_ci(rows[0]["fresh_per_answer"], rows[0]["fresh_per_reference"])
    else:
        win = mean_ci_t([r["win"] for r in rows])
        null = mean_ci_t([r["base_fresh_win"] for r in rows if r["base_fresh_win"] is not None])
    ceilings = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]
                if k.startswith("ceiling_") and k[8:].isdigit() and all(k in r for r in rows)}
    out = {"win_rate": win["mean"], "win_rate_ci": [win["ci_low"], win["ci_high"]],
           "win_rate_units": f"tuned answers (against as many base answers) to {_one(prompt_set)}" if single_query
           else "prompts", "n_units": win["n"],
           "ceiling": ceilings.get("ceiling_8"), "ceilings": ceilings, "headroom_share": None,
           "headroom_share_ci": [None, None], "base_fresh_win_rate": null,
           "length_controlled_win_rate": lc, **kl, "tuned_chars": tuned_chars,
           "base_chars": float(np.mean([r["pool_chars"] for r in rows])), "tuned_logp_base": tuned_logp,
           "base_logp": mean_of([r["pool_logp"] for r in rows]), "prompts": len(rows)}
    h = headroom(*_with_variances(rows, win, single_query))
    out["headroom_share"], out["headroom_share_ci"] = h["mean"], [h["ci_low"], h["ci_high"]]
    out["headroom_share_unbounded"] = h["unbounded"]
    out["warnings"] = _warnings(out, single_query, prompt_set)
    return out


def _with_variances(rows: list[dict], win: dict, single_query: bool) -> tuple[dict, dict]:
    """({mean, var} of the win rate, {mean, var, cov, df} of the best-of-8 ceiling) for headroom(): over prompts,
    the per-prompt pairs' sample (co)variances / P; for one query, the two-sample variance of the win and the
    ceiling's within-query variance (each reference answer's score is a mean over the others)."""
    if any("ceiling_8" not in r for r in rows):
        return win, {"mean": None}
    c = np.array([r["ceiling_8"] for r in rows])
    if single_query:
        r, b = np.asarray(rows[0]["per_answer"], float), np.asarray(rows[0]["per_reference"], float)
        var = r.var(ddof=1) / r.size + b.var(ddof=1) / b.size if r.size > 1 and b.size > 1 else None
        return {**win, "var": var}, {"mean": float(c[0]), "var": rows[0].get("ceiling_8_var"), "cov": 0.0,
                                     "df": max(len(rows[0]["per_reference"]) - 1, 1)}
    w = np.array([r["win"] for r in rows])
    if len(rows) < 2:
        return {**win, "var": None}, {"mean": float(c.mean()), "var": None}
    cov = np.cov(w, c, ddof=1) / len(rows)
    return ({**win, "var": float(cov[0, 0])},
            {"mean": float(c.mean()), "var": float(cov[1, 1]), "cov": float(cov[0, 1]), "df": len(rows) - 1})


def _one(prompt_set: bool) -> str:
    return "the one held-out prompt" if prompt_set else "the one query"


def _warnings(s: dict, single_query: bool, prompt_set: bool = False) -> list[str]:
    out = []
    if single_query and prompt_set:
        out.append("one held-out prompt: the win rate's interval is over the answers to it and says nothing about "
                   "other prompts; hold out more (preferences.test_fraction) to measure generalisation")
    elif single_query:
        out.append("one query: the win rate's interval is over the answers to it and says nothing about other "
                   "prompts; a prompt set with held-out prompts measures generalisation")
    elif s["prompts"] < MIN_PROMPTS:
        out.append(f"only {s['prompts']} evaluation prompts (< {MIN_PROMPTS}): the interval is wide and a few prompts "
                   "decide the win rate; hold out more (preferences.test_fraction) or use a larger prompt set")
    if s["ceiling"] is None:
        out.append("no best-of-8 ceiling: it needs more than 8 reference answers per prompt "
                   "(evaluate.winrate_samples >= 9: 8 in the contest, one outside to face) and the null answers to "
                   "pick them by")
    if s["ceiling"] is not None and s["ceiling"] - 0.5 < 0.02:
        out.append(f"the judge's best-of-8 ceiling is {s['ceiling']:.3f}: it barely prefers any base answer over another, "
                   "so no win rate can show much; a stronger judge (judge.model, judge.function) would")
    return out


# ------------------------------------------------------------------------------------ the measurement
def policy_answers(cfg, model, tok, prompts: list[str], seed: int, policy: str) -> tuple[list[list[str]], list[list[str]]]:
    """`evaluate.winrate_samples` sampled answers per prompt with the sample space's sampling settings, seeded:
    (normalised texts, raw texts)."""
    from pipeline.generation import generate_blocks, normalise
    from pipeline.models import chat_prompt

    sc, k = cfg.sample_space, cfg.evaluate.winrate_samples
    chats = [chat_prompt(tok, p, sc.system_prompt) for p in prompts for _ in range(k)]
    raw = [a["text"] for a in generate_blocks(model, tok, chats, sc, seed, f"[evaluate] {policy} answers", True)]
    texts = [normalise(a, sc.preamble_patterns) or a.strip() or "(empty answer)" for a in raw]
    return [texts[j * k:(j + 1) * k] for j in range(len(prompts))], [raw[j * k:(j + 1) * k] for j in range(len(prompts))]


def sequence_logps(cfg, model, tok, prompts: list[str], answers: list[list[str]],
                   finished: list[list[bool]] | None = None) -> list[list[float]]:
    """Summed log-probability of each answer as a reply to its prompt (end of turn included where it finished);
    prompt j on process j % K."""
    from pipeline.models import answer_scores, chat_prompt

    def prompt_logps(j: int) -> list[float]:
        return [s[0] for s in answer_scores(model, tok, chat_prompt(tok, prompts[j], cfg.sample_space.system_prompt),
                                            answers[j], cfg.evaluate.batch_size,
                                            finished=None if finished is None else finished[j])]

    return parallel.split_map(prompt_logps, list(range(len(prompts))))


def kl_samples(cfg, model, tok, prompts: list[str], seed: int) -> tuple[list[list[str]], list[list[bool]]]:
    """The tuned policy's own answers for the KL, drawn at temperature 1 without top-p: the distribution whose
    log-probabilities sequence_logps computes, so E[log p_tuned - log p_base] over them is KL(tuned || base) of
    the policies (the tempered, nucleus-truncated sampler is another distribution: mixing the two converges to
    neither KL). (raw texts, finished) per prompt."""
    import dataclasses

    from pipeline.generation import generate_blocks
    from pipeline.models import chat_prompt

    sc, k = dataclasses.replace(cfg.sample_space, temperature=1.0, top_p=1.0), cfg.evaluate.winrate_samples
    out = generate_blocks(model, tok, [chat_prompt(tok, p, sc.system_prompt) for p in prompts for _ in range(k)], sc,
                          seed, "[evaluate] tuned answers for the KL (T = 1)", True)
    return ([[a["text"] for a in out[j * k:(j + 1) * k]] for j in range(len(prompts))],
            [[a["finished"] for a in out[j * k:(j + 1) * k]] for j in range(len(prompts))])


class Texts:
    """Every text the judge compares, per prompt (the reference, then the answers), each (prompt, text) once."""

    def __init__(self):
        self.texts, self.prompt_of, self.index = [], [], {}

    def ids(self, j: int, texts: list[str]) -> list[int]:
        out = []
        for t in texts:
            if (j, t) not in self.index:
                self.index[j, t] = len(self.texts)
                self.texts.append(t)
                self.prompt_of.append(j)
            out.append(self.index[j, t])
        return out


def w_matrix(probs: dict, rows: list[int], cols: list[int]) -> np.ndarray:
    """W[r, c] = order-averaged choice of text rows[r] over cols[c]; 1/2 for the same text."""
    return np.array([[0.5 if a == b else order_averaged(probs, a, b) for b in cols] for a in rows], dtype=float)


def both_orders(rows: list[int], cols: list[int]) -> list[tuple[int, int]]:
    return list(dict.fromkeys(q for a in rows for b in cols if a != b for q in ((a, b), (b, a))))


def measure(cfg, prompts: list[dict], tuned_adapter: tuple, previous_adapter: tuple | None, cache_files: list,
            workdir) -> dict:
    """The yardstick (see the module docstring) on `prompts` ({prompt_id, prompt}) for the tuned policy (its (adapter
    folder, key)) and, in a later round, the previous one: answers, judging, figures. `cache_files`: pair caches
    to reuse. Returns {"summary", "rows", "answers", "prompts"}."""
    from pipeline.judge import cached_judge, fill_pairs, judge_is_policy
    from pipeline.models import load_model

    queries, seed = [p["prompt"] for p in prompts], cfg.evaluate.seed
    model, tok = load_model(cfg.model, tuned_adapter[0])
    tuned, _ = policy_answers(cfg, model, tok, queries, seed, "tuned")
    kl_texts, kl_finished = kl_samples(cfg, model, tok, queries, seed + 4)
    logp_tuned = sequence_logps(cfg, model, tok, queries, kl_texts, kl_finished)
    answers = {"finetuned": tuned}
    if previous_adapter is not None:
        answers["previous"] = policy_answers(cfg, *load_model(cfg.model, previous_adapter[0]), queries, seed + 3, "previous")[0]
    model, tok = load_model(cfg.model)
    # seeds of their own: answers drawn with the same random numbers are alike while two policies agree, which
    # would pull every win rate towards 1/2
    answers["base"] = policy_answers(cfg, model, tok, queries, seed + 1, "base")[0]
    answers["base_null"] = policy_answers(cfg, model, tok, queries, seed + 2, "base (null)")[0]  # independent draws: the null
    logp_base_raw = sequence_logps(cfg, model, tok, queries, kl_texts, kl_finished)  # the KL's samples under the base
    logp_base = sequence_logps(cfg, model, tok, queries, tuned)  # as judged: drift and length control
    logp_reference = sequence_logps(cfg, model, tok, queries, answers["base"])
    texts = Texts()
    ids = [{k: texts.ids(j, a[j]) for k, a in answers.items()} for j in range(len(prompts))]
    judge, _ = cached_judge(cfg, texts.texts, workdir, lambda: (model, tok), queries, texts.prompt_of,
                            extra_cache_files=cache_files, rank=parallel.rank())
    need = [q for i in ids for k in ("finetuned", "base_null", "base") for q in both_orders(i[k], i["base"])]
    need += [q for i in ids if "previous" in i for q in both_orders(i["finetuned"], i["previous"])]
    fill_pairs(judge, list(dict.fromkeys(need)), "evaluate", "win rate (base judge)")
    pools = [reference(answers["base"][j], logp_reference[j]) for j in range(len(ids))]
    rows = [_prompt_row(p, pool, i, judge.probs, cfg.sample_space.num_samples) for p, pool, i in zip(prompts, pools, ids)]
    summary = summarise(rows, _lc(pools, ids, judge.probs, answers, logp_base), kl_estimates(
        np.concatenate(logp_tuned), np.concatenate(logp_base_raw)), float(np.mean([len(t) for a in tuned for t in a])),
        float(np.mean(np.concatenate(logp_base))), len(prompts) == 1, cfg.sample_space.query is None)
    summary["tuned_diversity"] = float(np.mean([len(set(a)) / len(a) for a in tuned]))  # distinct answers per prompt
    summary["base_diversity"] = float(np.mean([len(set(a)) / len(a) for a in answers["base"]]))
    if "previous" in answers:
        summary["win_vs_previous"] = mean_ci_t([w_matrix(judge.probs, i["finetuned"], i["previous"]).mean() for i in ids])
    if judge_is_policy(cfg.judge):  # self-play: the tuned model judges its own answers against the same reference
        summary["win_rate_tuned_judge"] = _tuned_judge(cfg, tuned_adapter, workdir, texts, queries, ids)
    return {"summary": summary, "rows": rows, "answers": answers, "prompts": prompts}


def _prompt_row(prompt: dict, pool: dict, ids: dict, probs: dict, draws: int) -> dict:
    figures = prompt_figures(pool, w_matrix(probs, ids["base"], ids["base"]), w_matrix(probs, ids["finetuned"], ids["base"]),
                             w_matrix(probs, ids["base_null"], ids["base"]), draws)
    return {"prompt_id": prompt["prompt_id"], "prompt": prompt["prompt"], **figures}


def _lc(pools, ids, probs, answers, logp_base) -> dict:
    """The length-controlled win rate: the GLM per prompt on its (tuned answer, base answer) cells, read at zero
    difference, pooled by the t interval over prompts; for one query, its cells with the two-way clustered interval.
    A prompt's cells share its answers, so they are not independent evidence (treating them so covered 0.44)."""
    per = []
    for j, (pool, i) in enumerate(zip(pools, ids)):
        cells = [(0.5 if t == b else order_averaged(probs, t, b), math.log(max(len(text), 1)) - math.log(max(len(bt), 1)),
                  lp - blp, a, c) for a, (t, text, lp) in enumerate(zip(i["finetuned"], answers["finetuned"][j], logp_base[j]))
                 for c, (b, bt, blp) in enumerate(zip(i["base"], pool["text"], pool["logp"]))]
        w, d_len, d_logp, a, c = (list(v) for v in zip(*cells))
        per.append(length_controlled(w, d_len, d_logp, np.column_stack([a, c]) if len(pools) == 1 else None))
    if len(pools) == 1:
        return per[0]
    pooled = mean_ci_t([r["mean"] for r in per])
    return {"mean": pooled["mean"], "ci_low": pooled["ci_low"], "ci_high": pooled["ci_high"], "prompts": pooled["n"]}


def _tuned_judge(cfg, tuned_adapter: tuple, workdir, texts: Texts, queries, ids) -> dict:
    from pipeline.judge import cached_judge, fill_pairs
    from pipeline.models import load_model

    adapter, key = tuned_adapter
    judge, _ = cached_judge(cfg, texts.texts, workdir, lambda: load_model(cfg.model, adapter), queries,
                            texts.prompt_of, adapter_key=key, rank=parallel.rank())
    fill_pairs(judge, [q for i in ids for q in both_orders(i["finetuned"], i["base"])], "evaluate", "win rate (tuned judge)")
    return mean_ci_t([float(w_matrix(judge.probs, i["finetuned"], i["base"]).mean()) for i in ids])


def lines(y: dict) -> list[str]:
    """What evaluate prints about the yardstick."""
    from pipeline.formatting import number

    ci = lambda v, lo, hi: f"{number(v)} [{number(lo)}, {number(hi)}]"  # noqa: E731
    c = y["ceilings"]
    lc, fresh = y["length_controlled_win_rate"], y["base_fresh_win_rate"]
    ceilings = ", ".join(f"n={k.split('_')[1]} {v:.3f}" for k, v in sorted(c.items(), key=lambda t: int(t[0][8:])))
    out = [f"win rate of the tuned policy against the base's answers ({y['prompts']} prompt(s), t interval over "
           f"{y['n_units']} {y['win_rate_units']}): {ci(y['win_rate'], *y['win_rate_ci'])}; length-controlled "
           f"{ci(lc['mean'], lc['ci_low'], lc['ci_high'])}; other base answers (the null) "
           f"{ci(fresh['mean'], fresh['ci_low'], fresh['ci_high'])}",
           f"the judge's ceiling, the base's best of n (picked against the null answers) against another base "
           f"answer: {ceilings or 'n/a'}; headroom share (win - 1/2) / (best-of-8 - 1/2) = "
           f"{ci(y['headroom_share'], *y['headroom_share_ci'])}"
           + (" (interval unbounded: the ceiling's own interval reaches 1/2)" if y.get("headroom_share_unbounded") else ""),
           f"drift: {y['tuned_chars']:.0f} vs {y['base_chars']:.0f} characters; base log-probability "
           f"{number(y['tuned_logp_base'], '.1f')} vs {number(y['base_logp'], '.1f')}; KL(tuned || base) of the policies (T = 1) "
           f"{number(y['kl'], '.2f')} nats (k3 {number(y['kl_k3'], '.2f')}, {y['samples']} samples); distinct answers "
           f"{number(y.get('tuned_diversity'), '.2f')} (base {number(y.get('base_diversity'), '.2f')})"]
    if y.get("win_vs_previous"):
        w = y["win_vs_previous"]
        out.append(f"against the previous round's policy: {ci(w['mean'], w['ci_low'], w['ci_high'])}")
    if y.get("win_rate_tuned_judge"):
        w = y["win_rate_tuned_judge"]
        out.append(f"judged by the tuned model itself: {ci(w['mean'], w['ci_low'], w['ci_high'])}")
    return out + [f"warning: {w}" for w in y["warnings"]]
