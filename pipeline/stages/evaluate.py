"""Stage 5 — evaluate: every evaluator scores human-rated items with the base model and, when a
fine-tuned adapter exists, with the tuned model; agreement with the human means, with intervals.

Evaluators (same model, same items): spmcmc (the spmcmc stage's score estimate under the same
design settings), spmcmc_frequency (the paper's chain visit frequency, when chains run) and
spmcmc_controlled (the preference left with confounds.control held fixed, pipeline/confounds.py),
direct_rating (expected 1-7 answer from the digit tokens; direct_rating_argmax), p_true (P("Yes")
to "is it good/funny?", the paper's importance sampling), logprob (mean token log-probability as
an answer to the query), self_certainty (Kang et al. 2025), random.

Inputs:  all optional: sample_space + spmcmc (paper checks on the generated answers), preferences +
         finetune (tuned model; sharpening on the held-out candidates; the win rate and its yardstick,
         pipeline/winrate.py); in a later round previous (round r-1's finetune: an opponent) and history
         (round r-1's evaluate: the rounds table)
Output:  DatasetDict
           scores:       item_id, text, human, model, evaluator, score
           metrics:      evaluator, model, n_items, pearson_r/_p/_ci_low/_ci_high, spearman_r/_p/_ci_low/_ci_high,
                         kendall_tau, kendall_p, precision_at_k, k, top1_in_human_topk
           comparisons:  model, a, b, diff (spearman a - b), ci_low, ci_high, p
           before_after: evaluator, base_spearman, finetuned_spearman, diff, ci_low, ci_high, p
           heldout_answers: prompt_id, prompt, policy (finetuned, base, base_null, previous), k, text
           winrate:      prompt_id, prompt, win, base_fresh_win, pool_size, pool_chars, ceiling_4, ceiling_8,
                         ceiling_<num_samples>, pool_logp (the yardstick per evaluation prompt; the pool is the
                         base policy's answers, the reference; base_fresh_win the null's win against it)
           rounds, rounds_alignment: every round so far (one row each; Jester alignment per evaluator)
         summary.json, scatter.png, correlations.png, report.md (also copied to OUTPUT_DIR/report.md)
Resume:  judge comparisons are cached in pair_cache.rank0.jsonl as they are computed; the
         other evaluators are single forward passes, recomputed.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline import rounds, winrate
from pipeline.active import PromptDesign, run_design
from pipeline.artifacts import flat_numbers, publish
from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.config import Config
from pipeline.estimates import calibration_shift, measured, ordered, plan_design, shifted, wants_chains
from pipeline.formatting import signed
from pipeline.judge import cached_judge, fill_pairs
from pipeline.metrics import agreement, paired_difference
from pipeline.models import answer_scores, chat_prompt, load_model, next_token_probs, single_token_id
from pipeline.plots import evaluation_plots, rounds_plot
from pipeline.ratings import load_ratings, noise_ceiling, select_items
from pipeline.report import write_report
from pipeline.stages.finetune import adapter_of

NAME, VERSION = "evaluate", 7
SETTINGS = ("model", "judge", "sample_space", "confounds", "spmcmc", "evaluate", "rounds")
DISTRIBUTED = False
OPTIONAL_INPUTS = ("sample_space", "spmcmc", "preferences", "finetune", "history")
ITEM_PROMPT = "Here is a response to the request \"{query}\":\n\n{text}\n\n{question} {instruction}"


def spmcmc_scores(cfg: Config, model, tok, texts: list[str], workdir: Path, adapter_key, extra_cache,
                  answers: list[tuple]) -> dict:
    """spMCMC over the rated items with the spmcmc stage's design, judge code and pair cache: `spmcmc` is
    the stage's score estimate; `spmcmc_frequency` the paper's chain visit frequency, when chains run."""
    sc, n = cfg.spmcmc, len(texts)
    cached, _ = cached_judge(cfg, texts, workdir, lambda: (model, tok), rated_query(cfg),
                                   adapter_key=adapter_key, extra_cache_files=extra_cache)
    mode, edges, _ = plan_design(sc, n)
    if edges:
        fill_pairs(cached, ordered(edges), NAME, f"{adapter_key or 'base'}: {mode} design", distributed=False)
    if mode == "active":  # as the stage: chosen round by round from the answers so far
        design = PromptDesign(n, 0)
        run_design([design], cached.probs, lambda pairs: fill_pairs(
            cached, pairs, NAME, "active round", distributed=False, progress=False), sc)
        edges = design.edges
    trace = None
    if wants_chains(sc.chains, mode):  # as the stage: calibrated choices in the chains, which then add no comparison
        shift = calibration_shift(cached.probs, cfg.judge.calibration)
        judge = cached if not shift else CachedJudge(cached.judge, shifted(cached.probs, shift))
        trace = run_chains(new_chains(n, sc.num_chains, sc.seed), n, judge, cfg.evaluate.spmcmc_iterations, sc.order)
    burn_in = min(sc.burn_in, cfg.evaluate.spmcmc_iterations // 2)
    m = measured(cached.probs, n, sc, cfg.judge.calibration, mode, edges, trace, burn_in, 1, 0, 0)
    out = {"spmcmc": m["est"][m["score"]][0]}
    if "frequency" in m["est"]:
        out["spmcmc_frequency"] = m["est"]["frequency"][0]
    controlled = controlled_scores(cfg, tok, texts, cached.probs, answers)
    if controlled is not None:
        out["spmcmc_controlled"] = controlled
    return out


def controlled_scores(cfg: Config, tok, texts: list[str], raw_probs: dict, answers: list[tuple]):
    """The controlled score of the rated items (pipeline/confounds.py), their confounds measured as for generated
    answers (`answers`: log-probabilities as answers to the rated query; no generation count); None without
    control."""
    from pipeline import confounds, glm

    if not cfg.confounds.control:
        return None
    feats = confounds.candidate_features(texts, [len(tok(t, add_special_tokens=False).input_ids) for t in texts],
                                         [x[0] for x in answers], [x[1] for x in answers], None, cfg.confounds.formats)
    fit = glm.fit_strengths(raw_probs, len(texts))
    x, names = confounds.standardised(feats, list(cfg.confounds.control))
    if fit is None or len(texts) - 1 - len(names) < 2:
        return None
    return confounds.control(fit, x, names).q


def rated_query(cfg: Config) -> str:
    """The request the human-rated items answer."""
    return cfg.evaluate.query if cfg.evaluate.query is not None else cfg.sample_space.query


def item_prompts(tok, cfg: Config, texts: list[str], question: str, instruction: str) -> list[str]:
    return [chat_prompt(tok, ITEM_PROMPT.format(query=rated_query(cfg), text=t, question=question,
                                                instruction=instruction)) for t in texts]


def score_items(cfg: Config, model, tok, texts: list[str], workdir: Path, adapter_key, extra_cache) -> dict:
    ec, out = cfg.evaluate, {}
    answers = None  # log-probabilities and self-certainty as answers to the rated query: three evaluators use them
    if {"spmcmc", "logprob", "self_certainty"} & set(ec.evaluators):
        answers = answer_scores(model, tok, chat_prompt(tok, rated_query(cfg), cfg.sample_space.system_prompt),
                                texts, ec.batch_size, "[evaluate] log-probabilities")
    if "spmcmc" in ec.evaluators:
        out.update(spmcmc_scores(cfg, model, tok, texts, workdir, adapter_key, extra_cache, answers))
    if "direct_rating" in ec.evaluators:
        digits = [single_token_id(tok, str(d), "rating digit") for d in range(1, 8)]
        prompts = item_prompts(tok, cfg, texts, ec.rating_question, "Answer with a single digit from 1 to 7.")
        probs, _ = next_token_probs(model, tok, prompts, digits, ec.batch_size, "[evaluate] direct rating")
        out["direct_rating"] = probs @ np.arange(1, 8)
        out["direct_rating_argmax"] = probs.argmax(1) + 1.0
    if "p_true" in ec.evaluators:
        yes_no = [single_token_id(tok, w, "answer word") for w in ("Yes", "No")]
        prompts = item_prompts(tok, cfg, texts, ec.binary_question, "Answer Yes or No.")
        out["p_true"] = next_token_probs(model, tok, prompts, yes_no, ec.batch_size, "[evaluate] p_true")[0][:, 0]
    if "logprob" in ec.evaluators:
        out["logprob"] = np.array([s[1] for s in answers])
    if "self_certainty" in ec.evaluators:
        out["self_certainty"] = np.array([s[2] for s in answers])
    if "random" in ec.evaluators:
        out["random"] = np.random.default_rng(ec.seed).random(len(texts))
    return out


def run(cfg: Config, inputs: dict, workdir: Path):
    ec = cfg.evaluate
    ratings = load_ratings(ec.human_ratings)
    items = select_items(ratings.items, ec.max_items, ec.max_chars)
    texts, human = items["text"].tolist(), items["rating"].to_numpy()
    print(f"[evaluate] {len(items)} of {len(ratings.items)} rated items from {ratings.source} "
          f"(<= {ec.max_chars or 'any'} chars, spread over the rating range)", flush=True)
    extra_cache = sorted(inputs["spmcmc"].path.glob("pair_cache.rank*.jsonl")) if "spmcmc" in inputs else []
    models = {"base": (None, None)}
    if "finetune" in inputs:
        models["finetuned"] = adapter_of(inputs, "finetune")
    held_out = _held_out(inputs) if "preferences" in inputs and "spmcmc" in inputs else None
    yardstick = None
    if "finetuned" in models and ec.winrate_samples and "preferences" in inputs and "spmcmc" in inputs:
        yardstick = winrate.measure(cfg, evaluation_prompts(inputs), models["finetuned"],
                                    adapter_of(inputs, "previous") if "previous" in inputs else None, extra_cache,
                                    workdir)  # loads the policies it needs itself
    scores, sharpening = {}, {}
    for name, (adapter, adapter_key) in models.items():
        model, tok = load_model(cfg.model, adapter)
        scores[name] = score_items(cfg, model, tok, texts, workdir, adapter_key, extra_cache)
        if held_out is not None:
            sharpening[name] = _sharpening(cfg, model, tok, *held_out)
    return _assemble(cfg, items, human, scores, sharpening, ratings, inputs, workdir, yardstick)


def evaluation_prompts(inputs: dict) -> list[dict]:
    """The prompts the win rate is measured on: those held out of training (preferences' held_out_prompts split),
    else every prompt of the run (one query)."""
    held = inputs["preferences"].load()["held_out_prompts"]
    if held.num_rows:
        return held.to_list()
    cands = inputs["spmcmc"].load()["candidates"]
    return [{"prompt_id": pid, "prompt": p} for pid, p in dict(zip(cands["prompt_id"], cands["prompt"])).items()]


def _held_out(inputs: dict) -> tuple[list[str], list[float], list[str]]:
    """Texts, base spMCMC scores (those the pairs were built from) and prompts of the preferences test
    split's candidates."""
    test = inputs["preferences"].load()["test"]
    score = {**dict(zip(test["chosen_id"], test["chosen_score"])), **dict(zip(test["rejected_id"], test["rejected_score"]))}
    ids = sorted(score)
    cands = inputs["spmcmc"].load()["candidates"]
    text, prompt = dict(zip(cands["id"], cands["text"])), dict(zip(cands["id"], cands["prompt"]))
    return [text[i] for i in ids], [score[i] for i in ids], [prompt[i] for i in ids]


def _sharpening(cfg: Config, model, tok, texts: list[str], scores: list[float], prompts: list[str]) -> dict:
    """On the held-out candidates: Spearman between the policy's mean log-probability of an answer and its
    base spMCMC score, within each prompt (averaged over prompts with at least 3 such candidates)."""
    from scipy.stats import spearmanr

    results = []
    for prompt in dict.fromkeys(prompts):
        rows = [i for i, p in enumerate(prompts) if p == prompt]
        if len(rows) >= 3:
            chat = chat_prompt(tok, prompt, cfg.sample_space.system_prompt)
            logp = [s[1] for s in answer_scores(model, tok, chat, [texts[i] for i in rows], cfg.evaluate.batch_size)]
            results.append(spearmanr(logp, [scores[i] for i in rows]))
    if not results:
        return {"n": len(texts), "prompts": 0, "spearman_r": None, "spearman_p": None}
    return {"n": len(texts), "prompts": len(results), "spearman_r": float(np.mean([r.statistic for r in results])),
            "spearman_p": float(results[0].pvalue) if len(results) == 1 else None}


def paper_checks(inputs: dict) -> dict | None:
    """On the generated sample space: the greedy answer's rank under the spMCMC score (and the chains' visit
    frequency), and whether the model prefers what it generates most often (Spearman of count and score)."""
    from scipy.stats import spearmanr

    if "spmcmc" not in inputs:
        return None
    c = inputs["spmcmc"].load()["candidates"]
    greedy = [i for i, g in enumerate(c["is_greedy"]) if g]
    out = {"n_candidates": c.num_rows, "greedy_text": c["text"][greedy[0]] if greedy else None}
    for column in ("score", "frequency"):
        if None not in c[column]:
            ranks = (-np.array(c[column])).argsort(kind="stable").argsort() + 1
            out[f"greedy_rank_by_{column}"] = int(ranks[greedy[0]]) if greedy else None
    counts, score = np.array(c["count"]), np.array(c["score"])
    if np.ptp(counts) > 0 and np.ptp(score) > 0:
        res = spearmanr(counts, score)
        out.update({"count_vs_score_spearman": float(res.statistic), "count_vs_score_p": float(res.pvalue)})
    return out


def upstream_summaries(inputs: dict) -> dict:
    """What the report states about the preference data: the spmcmc and preferences stages' summaries."""
    return {name: s for name in ("sample_space", "spmcmc", "preferences", "finetune")
            if name in inputs and (s := inputs[name].summary())}


def _assemble(cfg: Config, items, human, scores: dict, sharpening: dict, ratings, inputs: dict, workdir: Path,
              yardstick: dict | None):
    from datasets import Dataset, DatasetDict

    ec = cfg.evaluate
    metrics = [{"evaluator": e, "model": m, **agreement(s, human, ec.top_k, ec.bootstrap, ec.seed)}
               for m, per in scores.items() for e, s in per.items()]
    base = scores["base"]
    comparisons = [{"model": "base", "a": a, "b": b,
                    **paired_difference(base[a], base[b], human, "spearman", ec.bootstrap, ec.seed)}
                   for a, b in combinations(base, 2)]
    before_after = []
    if "finetuned" in scores:
        m = {(r["evaluator"], r["model"]): r for r in metrics}
        before_after = [{"evaluator": e, "base_spearman": m[e, "base"]["spearman_r"],
                         "finetuned_spearman": m[e, "finetuned"]["spearman_r"],
                         **paired_difference(scores["finetuned"][e], base[e], human, "spearman", ec.bootstrap, ec.seed)}
                        for e in base if e in scores["finetuned"]]
    y, up = (yardstick or {}).get("summary"), upstream_summaries(inputs)
    rounds_so_far, alignment = rounds.table(inputs.get("history"), up.get("spmcmc"), up.get("preferences"),
                                            up.get("sample_space"), y, metrics)
    summary = {"ratings": ratings.source, "citation": ratings.citation, "n_items": len(items),
               "item_ids": items["id"].tolist(), "max_items": ec.max_items, "max_chars": ec.max_chars,
               "noise_ceiling": noise_ceiling(ratings.long, items["id"].tolist(), ec.seed),
               "paper_checks": paper_checks(inputs), "sharpening": sharpening or None,
               "upstream": up, "yardstick": y, "rounds": rounds_so_far, "rounds_alignment": alignment,
               "round_warnings": rounds.warnings(rounds_so_far, cfg.rounds),
               # the yardstick's headline figures, at the top level for readers and W&B
               **{k: (y or {}).get(k) for k in ("win_rate", "win_rate_ci", "ceiling", "headroom_share",
                                                "headroom_share_ci")}}
    plots = evaluation_plots(workdir, human, scores, metrics, summary["noise_ceiling"])
    if len(rounds_so_far) > 1:
        plots.append(rounds_plot(workdir, rounds_so_far))
    write_report(cfg, workdir, summary, metrics, comparisons, before_after, plots)
    lines, flat = _lines_and_metrics(metrics, summary)
    publish(workdir, NAME, summary, lines, plots, metrics=flat, tables={"eval/scores": _score_table(items, human, scores)})
    rows = [{"item_id": i, "text": t, "human": float(h), "model": m, "evaluator": e, "score": float(s[k])}
            for m, per in scores.items() for e, s in per.items()
            for k, (i, t, h) in enumerate(zip(items["id"], items["text"], human))]
    return DatasetDict({"scores": Dataset.from_list(rows), "metrics": Dataset.from_list(metrics),
                        "comparisons": _table(comparisons, ("model", "a", "b", *DIFF_COLUMNS)),
                        "before_after": _table(before_after, ("evaluator", "base_spearman", "finetuned_spearman",
                                                              *DIFF_COLUMNS)),
        "heldout_answers": _table([{"prompt_id": p["prompt_id"], "prompt": p["prompt"], "policy": policy, "k": k,
                                    "text": text} for policy, per in (yardstick or {}).get("answers", {}).items()
                                   for p, texts in zip(yardstick["prompts"], per) for k, text in enumerate(texts)],
                                  ("prompt_id", "prompt", "policy", "k", "text")),
        "winrate": _table([{k: v for k, v in r.items() if not k.endswith(("per_answer", "per_reference"))}
                           for r in (yardstick or {}).get("rows", [])], WINRATE_COLUMNS),
        "rounds": _table(rounds_so_far, rounds.COLUMNS), "rounds_alignment": _table(alignment, rounds.ALIGNMENT_COLUMNS)})


WINRATE_COLUMNS = ("prompt_id", "prompt", "win", "base_fresh_win", "pool_size", "pool_chars", "ceiling_4", "ceiling_8",
                   "pool_logp")


DIFF_COLUMNS = ("diff", "ci_low", "ci_high", "p")


def _table(rows: list[dict], columns: tuple[str, ...]):
    """A table that keeps its columns when it has no rows (one evaluator: no pairs of evaluators)."""
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in columns})


def _lines_and_metrics(metrics: list[dict], summary: dict) -> tuple[list[str], dict]:
    """Printed lines, and W&B keys `eval/<model>/<evaluator>/<metric>` side by side for base and tuned."""
    keys = ("pearson_r", "spearman_r", "kendall_tau", "precision_at_k", "pearson_ci_low", "pearson_ci_high")
    flat = {f"eval/{r['model']}/{r['evaluator']}/{k}": r[k] for r in metrics for k in keys if r[k] is not None}
    lines = [f"{r['model']:9s} {r['evaluator']:21s} pearson {signed(r['pearson_r'])} [{signed(r['pearson_ci_low'])}, "
             f"{signed(r['pearson_ci_high'])}]  spearman {signed(r['spearman_r'])} [{signed(r['spearman_ci_low'])}, "
             f"{signed(r['spearman_ci_high'])}]  P@{r['k']} "
             + ("n/a (the same score for every item)" if r["precision_at_k"] is None else f"{r['precision_at_k']:.2f}")
             for r in metrics]
    if summary["noise_ceiling"]:
        flat["eval/noise_ceiling"] = summary["noise_ceiling"]["spearman_brown"]
        lines.append(f"human noise ceiling (split-half, Spearman-Brown): {summary['noise_ceiling']['spearman_brown']:.4f}")
    y = summary["yardstick"]
    if y:
        flat.update(flat_numbers(y, "eval/yardstick"))
        lines += winrate.lines(y)
    if summary.get("rounds"):
        row = summary["rounds"][-1]
        flat.update({f"rounds/{k}": v for k, v in row.items() if isinstance(v, (int, float)) and v is not None})
        lines += [f"warning: {w}" for w in summary["round_warnings"]]
    return lines, flat


def _score_table(items, human, scores):
    """Every evaluator's score of every rated item, side by side (the `scores` split, wide)."""
    import pandas as pd

    return pd.DataFrame({"item_id": items["id"], "human": human,
                         **{f"{m}/{e}": s for m, per in scores.items() for e, s in per.items()}})
