"""Stage 5 — evaluate: every evaluator scores human-rated items with the base model and, when a
fine-tuned adapter exists, with the tuned model; agreement with the human means, with intervals.

Evaluators (same model, same items): spmcmc (the spmcmc stage's score estimate under the same
design settings) and spmcmc_frequency (the paper's chain visit frequency, when chains run),
direct_rating (expected 1-7 answer from the digit tokens; direct_rating_argmax), p_true (P("Yes")
to "is it good/funny?", the paper's importance sampling), logprob (mean token log-probability as
an answer to the query), self_certainty (Kang et al. 2025), random.

Inputs:  all optional: sample_space + spmcmc (paper checks on the generated answers), preferences +
         finetune (tuned model; sharpening on the held-out candidates)
Output:  DatasetDict
           scores:       item_id, text, human, model, evaluator, score
           metrics:      evaluator, model, n_items, pearson_r/_p/_ci_low/_ci_high, spearman_r/_p/_ci_low/_ci_high,
                         kendall_tau, kendall_p, precision_at_k, k, top1_in_human_topk
           comparisons:  model, a, b, diff (spearman a - b), ci_low, ci_high, p
           before_after: evaluator, base_spearman, finetuned_spearman, diff, ci_low, ci_high, p
         summary.json, scatter.png, correlations.png, report.md (also copied to OUTPUT_DIR/report.md)
Resume:  judge comparisons are cached in pair_cache.rank0.jsonl as they are computed; the
         other evaluators are single forward passes, recomputed.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline import tracking
from pipeline.artifacts import write_json
from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.config import Config
from pipeline.estimates import SCORE_OF_MODE, all_estimates, calibration_shift, ordered, plan_design, shifted, wants_chains
from pipeline.judge import cached_model_judge, fill_pairs
from pipeline.metrics import agreement, paired_difference
from pipeline.models import answer_scores, chat_prompt, load_model, next_token_probs, single_token_id
from pipeline.plots import evaluation_plots
from pipeline.ratings import load_ratings, noise_ceiling, select_items

NAME, VERSION = "evaluate", 2
SETTINGS = ("model", "judge", "sample_space", "spmcmc", "evaluate")
OPTIONAL_INPUTS = ("sample_space", "spmcmc", "preferences", "finetune")
ITEM_PROMPT = "Here is a response to the request \"{query}\":\n\n{text}\n\n{question} {instruction}"


def spmcmc_scores(cfg: Config, model, tok, texts: list[str], workdir: Path, adapter_key, extra_cache) -> dict:
    """spMCMC over the rated items with the spmcmc stage's design, judge code and pair cache: `spmcmc` is
    the stage's score estimate; `spmcmc_frequency` the paper's chain visit frequency, when chains run."""
    sc, n = cfg.spmcmc, len(texts)
    cached, _ = cached_model_judge(cfg, texts, workdir, lambda: (model, tok), cfg.sample_space.query,
                                   adapter_key=adapter_key, extra_cache_files=extra_cache)
    mode, edges, _ = plan_design(sc, n)
    if edges:
        fill_pairs(cached, ordered(edges), f"[evaluate] {adapter_key or 'base'}: {mode} design", distributed=False)
    probs = shifted(cached.probs, calibration_shift(cached.probs, cfg.judge.calibration))
    trace = None
    if wants_chains(sc.chains, mode):
        judge = cached if probs is cached.probs else CachedJudge(cached.judge, dict(probs))
        trace = run_chains(new_chains(n, sc.num_chains, sc.seed), n, judge, cfg.evaluate.spmcmc_iterations, sc.order)
        probs = judge.probs
    burn_in = min(sc.burn_in, cfg.evaluate.spmcmc_iterations // 2)
    est, _ = all_estimates(probs, n, sc.order, mode, edges, trace, burn_in, 1, sc.bt_alpha, 0, 0, sc.seed)
    out = {"spmcmc": est[SCORE_OF_MODE[mode]][0]}
    if "frequency" in est:
        out["spmcmc_frequency"] = est["frequency"][0]
    return out


def item_prompts(tok, cfg: Config, texts: list[str], question: str, instruction: str) -> list[str]:
    return [chat_prompt(tok, ITEM_PROMPT.format(query=cfg.sample_space.query, text=t, question=question,
                                                instruction=instruction)) for t in texts]


def score_items(cfg: Config, model, tok, texts: list[str], workdir: Path, adapter_key, extra_cache) -> dict:
    ec, out = cfg.evaluate, {}
    if "spmcmc" in ec.evaluators:
        out.update(spmcmc_scores(cfg, model, tok, texts, workdir, adapter_key, extra_cache))
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
    if {"logprob", "self_certainty"} & set(ec.evaluators):
        scores = answer_scores(model, tok, chat_prompt(tok, cfg.sample_space.query, cfg.sample_space.system_prompt),
                               texts, ec.batch_size, "[evaluate] log-probabilities")
        if "logprob" in ec.evaluators:
            out["logprob"] = np.array([s[1] for s in scores])
        if "self_certainty" in ec.evaluators:
            out["self_certainty"] = np.array([s[2] for s in scores])
    if "random" in ec.evaluators:
        out["random"] = np.random.default_rng(ec.seed).random(len(texts))
    return out


def policy_logprobs(model, tok, cfg: Config, texts: list[str]) -> np.ndarray:
    prompt = chat_prompt(tok, cfg.sample_space.query, cfg.sample_space.system_prompt)
    return np.array([s[1] for s in answer_scores(model, tok, prompt, texts, cfg.evaluate.batch_size)])


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
        models["finetuned"] = (inputs["finetune"].path / "adapter", inputs["finetune"].fingerprint)
    held_out = _held_out(cfg, inputs) if "preferences" in inputs and "spmcmc" in inputs else None
    scores, sharpening = {}, {}
    for name, (adapter, adapter_key) in models.items():
        model, tok = load_model(cfg.model, adapter)
        scores[name] = score_items(cfg, model, tok, texts, workdir, adapter_key, extra_cache)
        if held_out is not None:
            sharpening[name] = _sharpening(cfg, model, tok, *held_out)
        del model
    return _assemble(cfg, items, human, scores, sharpening, ratings, inputs, workdir)


def _held_out(cfg: Config, inputs: dict) -> tuple[list[str], list[float]]:
    """Texts and base spMCMC scores (those the pairs were built from) of the preferences test split's candidates."""
    test = inputs["preferences"].load()["test"]
    score = {**dict(zip(test["chosen_id"], test["chosen_score"])), **dict(zip(test["rejected_id"], test["rejected_score"]))}
    ids = sorted(score)
    cands = inputs["spmcmc"].load()["candidates"]
    text = dict(zip(cands["id"], cands["text"]))
    return [text[i] for i in ids], [score[i] for i in ids]


def _sharpening(cfg: Config, model, tok, texts: list[str], scores: list[float]) -> dict:
    """On the held-out candidates: Spearman between the policy's log-probability and the base spMCMC score."""
    from scipy.stats import spearmanr

    if len(texts) < 3:
        return {"n": len(texts), "spearman_r": None, "spearman_p": None}
    res = spearmanr(policy_logprobs(model, tok, cfg, texts), scores)
    return {"n": len(texts), "spearman_r": float(res.statistic), "spearman_p": float(res.pvalue)}


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
    import json

    return {name: json.loads((inputs[name].path / "summary.json").read_text())
            for name in ("spmcmc", "preferences") if name in inputs and (inputs[name].path / "summary.json").is_file()}


def _assemble(cfg: Config, items, human, scores: dict, sharpening: dict, ratings, inputs: dict, workdir: Path):
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
    summary = {"ratings": ratings.source, "citation": ratings.citation, "n_items": len(items),
               "item_ids": items["id"].tolist(), "max_items": ec.max_items, "max_chars": ec.max_chars,
               "noise_ceiling": noise_ceiling(ratings.long, items["id"].tolist(), ec.seed),
               "paper_checks": paper_checks(inputs), "sharpening": sharpening or None,
               "upstream": upstream_summaries(inputs)}
    write_json(workdir / "summary.json", summary)
    plots = evaluation_plots(workdir, human, scores, metrics, summary["noise_ceiling"])
    from pipeline.report import write_report

    write_report(cfg, workdir, summary, metrics, comparisons, before_after, plots)
    _log(metrics, summary, plots, items, human, scores)
    rows = [{"item_id": i, "text": t, "human": float(h), "model": m, "evaluator": e, "score": float(s[k])}
            for m, per in scores.items() for e, s in per.items()
            for k, (i, t, h) in enumerate(zip(items["id"], items["text"], human))]
    return DatasetDict({"scores": Dataset.from_list(rows), "metrics": Dataset.from_list(metrics),
                        "comparisons": _table(comparisons, ("model", "a", "b", *DIFF_COLUMNS)),
                        "before_after": _table(before_after, ("evaluator", "base_spearman", "finetuned_spearman",
                                                              *DIFF_COLUMNS))})


DIFF_COLUMNS = ("diff", "ci_low", "ci_high", "p")


def _table(rows: list[dict], columns: tuple[str, ...]):
    """A table that keeps its columns when it has no rows (one evaluator: no pairs of evaluators)."""
    from datasets import Dataset

    return Dataset.from_list(rows) if rows else Dataset.from_dict({c: [] for c in columns})


def _log(metrics, summary, plots, items, human, scores) -> None:
    import pandas as pd

    for r in metrics:
        for k in ("pearson_r", "spearman_r", "kendall_tau", "precision_at_k", "pearson_ci_low", "pearson_ci_high"):
            if r[k] is not None:
                tracking.summary({f"eval/{r['model']}/{r['evaluator']}/{k}": r[k]})
        print(f"[evaluate] {r['model']:9s} {r['evaluator']:21s} pearson {_f(r['pearson_r'])} "
              f"[{_f(r['pearson_ci_low'])}, {_f(r['pearson_ci_high'])}]  spearman {_f(r['spearman_r'])} "
              f"[{_f(r['spearman_ci_low'])}, {_f(r['spearman_ci_high'])}]  P@{r['k']} {r['precision_at_k']:.2f}",
              flush=True)
    if summary["noise_ceiling"]:
        tracking.summary({"eval/noise_ceiling": summary["noise_ceiling"]["spearman_brown"]})
        print(f"[evaluate] human noise ceiling (split-half, Spearman-Brown): "
              f"{summary['noise_ceiling']['spearman_brown']:.4f}", flush=True)
    frame = pd.DataFrame({"item_id": items["id"], "human": human,
                          **{f"{m}/{e}": s for m, per in scores.items() for e, s in per.items()}})
    tracking.table("eval/scores", frame)
    for p in plots:
        tracking.image(f"eval/{p.stem}", p)


def _f(v) -> str:
    return "  n/a" if v is None else f"{v:+.3f}"
