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
           scores:       item_id, prompt_id (None: one query), text, human, model, evaluator, score
           metrics:      evaluator, model, n_items, pearson_r/_p/_ci_low/_ci_high, spearman_r/_p/_ci_low/_ci_high,
                         kendall_tau, kendall_p, precision_at_k, k, top1_in_human_topk
           comparisons:  model, a, b, diff (spearman a - b), ci_low, ci_high, p
           before_after: evaluator, base_spearman, finetuned_spearman, diff, ci_low, ci_high, p
           heldout_answers: prompt_id, prompt, policy (finetuned, base, base_null, previous), k, text
           winrate:      prompt_id, prompt, win, base_fresh_win, pool_size, pool_chars, ceiling_4, ceiling_8,
                         ceiling_<num_samples>, pool_logp (the yardstick per evaluation prompt; the pool is the
                         base policy's answers, the reference; base_fresh_win the null's win against it)
           rounds, rounds_alignment: every round so far (one row each; Jester alignment per evaluator)
           prompt_metrics: model, evaluator, prompt_id, n_items, pearson, spearman, kendall, pair_agreement,
                         resolved_pairs, ceiling, in_training (ratings with a `prompt` column: every figure within
                         each prompt; `metrics` then holds the means over prompts with t intervals over prompts,
                         pipeline/within_prompts.py, and comparisons/before_after the mean within-prompt differences)
         summary.json, scatter.png, correlations.png, report.md (also copied to OUTPUT_DIR/report.md)
Resume:  judge comparisons are cached in pair_cache.rank<r>.jsonl as they are computed; the
         other evaluators are single forward passes, recomputed.
Processes: under `accelerate launch` / torchrun every process runs the stage: the win rate's answers (in seeded
         batches), the judge's comparisons (in chunks of the sorted design), the rated items' forward passes (in
         batches) and each prompt's log-probabilities are split across processes by index and gathered, each
         piece the same work for any number of processes, so the artifact is the same bytes as one process's.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from pipeline import parallel, rounds, winrate, within_prompts
from pipeline.active import PromptDesign, run_design
from pipeline.artifacts import flat_numbers, publish
from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.config import Config
from pipeline.estimates import calibration_shift, measured, ordered, plan_design, shifted, wants_chains
from pipeline.formatting import signed
from pipeline.judge import cached_judge, fill_pairs
from pipeline.metrics import agreement, paired_difference
from pipeline.models import answer_scores, chat_prompt, load_model, next_token_probs, single_token_id
from pipeline.plots import evaluation_plots, prompt_set_plot, rounds_plot
from pipeline.ratings import check_scale, load_ratings, noise_ceiling, select_items, select_prompt_items
from pipeline.report import write_report
from pipeline.stages.finetune import adapter_of

NAME, VERSION = "evaluate", 13  # 13: log-probabilities as logit - logsumexp (models.answer_scores): last bits move
SETTINGS = ("model", "judge", "sample_space", "confounds", "spmcmc", "evaluate", "rounds")
DISTRIBUTED = True
OPTIONAL_INPUTS = ("sample_space", "spmcmc", "preferences", "finetune", "history")
ITEM_PROMPT = "Here is a response to the request \"{query}\":\n\n{text}\n\n{question} {instruction}"


@dataclass(frozen=True)
class RatedPrompt:
    """One prompt's rated items: rows lo .. lo+n-1 of the evaluated items, answers to `query`."""
    prompt_id: str | None
    query: str
    lo: int
    n: int

    @property
    def rows(self) -> slice:
        return slice(self.lo, self.lo + self.n)


def spmcmc_scores(cfg: Config, model, tok, texts: list[str], groups: list[RatedPrompt], workdir: Path, adapter_key,
                  extra_cache, answers: list[tuple]) -> dict:
    """spMCMC over the rated items with the spmcmc stage's design, judge code and pair cache, within each prompt
    (every prompt's design judged together, one budget shared as in the stage): `spmcmc` is the stage's score
    estimate; `spmcmc_frequency` the paper's chain visit frequency, when chains run."""
    sc = cfg.spmcmc
    cached, _ = cached_judge(cfg, texts, workdir, lambda: (model, tok), [g.query for g in groups],
                             prompt_of=[k for k, g in enumerate(groups) for _ in range(g.n)],
                             adapter_key=adapter_key, extra_cache_files=extra_cache, rank=parallel.rank())
    plans = [plan_design(sc, g.n) for g in groups]
    fixed = [(g.lo + a, g.lo + b) for g, (_, edges, _) in zip(groups, plans) for a, b in ordered(edges)]
    if fixed:
        fill_pairs(cached, fixed, NAME, f"{adapter_key or 'base'}: {plans[0][0]} design"
                   + (f" over {len(groups)} prompts" if len(groups) > 1 else ""))
    edges = [e for _, e, _ in plans]
    active = [k for k, (mode, _, _) in enumerate(plans) if mode == "active"]
    if active:  # as the stage: chosen round by round from the answers so far, one budget for every prompt
        from tqdm.auto import tqdm

        designs = [PromptDesign(groups[k].n, groups[k].lo) for k in active]
        with tqdm(total=sc.budget * len(designs), unit="cmp",
                  desc=f"[{NAME}] {adapter_key or 'base'}: active design over {len(designs)} prompt(s)") as bar:
            def ask(pairs):
                fill_pairs(cached, pairs, NAME, "active round", progress=False)  # every process designs alike
                bar.update(sum(2 * len(d.edges) for d in designs) - bar.n)
            run_design(designs, cached.probs, ask, sc)
        for k, d in zip(active, designs):
            edges[k] = d.edges
    out: dict[str, list] = {}
    for k, (g, (mode, _, _)) in enumerate(zip(groups, plans)):
        for name, values in _prompt_spmcmc(cfg, tok, texts[g.rows], cached, g.lo, mode, edges[k], answers[g.rows],
                                           sc.seed if k == 0 else sc.seed * 1_000_003 + k).items():
            out.setdefault(name, []).append(values)
    return {name: np.concatenate(parts) for name, parts in out.items() if len(parts) == len(groups)}


def _prompt_spmcmc(cfg: Config, tok, texts: list[str], cached: CachedJudge, lo: int, mode: str, edges: list,
                   answers: list[tuple], seed: int) -> dict:
    """One prompt's spMCMC scores: its ids 0 .. n-1 are the run's lo .. lo+n-1."""
    sc, n = cfg.spmcmc, len(texts)

    def local() -> dict:
        return {(f - lo, s - lo): v for (f, s), v in cached.probs.items() if lo <= f < lo + n}

    def judge(first, second):  # a comparison the chains lack goes through the run's cache (and is persisted)
        pairs = [(int(f) + lo, int(s) + lo) for f, s in zip(first, second)]
        cached.ensure(pairs)
        return np.array([cached.probs[p] for p in pairs])

    trace = None
    if wants_chains(sc.chains, mode):  # as the stage: calibrated choices in the chains
        probs = local()
        judge = CachedJudge(judge, shifted(probs, calibration_shift(probs, cfg.judge.calibration)))
        trace = run_chains(new_chains(n, sc.num_chains, seed), n, judge, cfg.evaluate.spmcmc_iterations, sc.order)
    burn_in = min(sc.burn_in, cfg.evaluate.spmcmc_iterations // 2)
    probs = local()
    m = measured(probs, n, sc, cfg.judge.calibration, mode, edges, trace, burn_in, 1, 0, 0)
    out = {"spmcmc": m["est"][m["score"]][0]}
    if "frequency" in m["est"]:
        out["spmcmc_frequency"] = m["est"]["frequency"][0]
    controlled = controlled_scores(cfg, tok, texts, probs, answers)
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


def item_prompts(tok, cfg: Config, texts: list[str], queries: list[str], question: str, instruction: str) -> list[str]:
    return [chat_prompt(tok, ITEM_PROMPT.format(query=q, text=t, question=question, instruction=instruction))
            for t, q in zip(texts, queries)]


def score_items(cfg: Config, model, tok, texts: list[str], groups: list[RatedPrompt], workdir: Path, adapter_key,
                extra_cache) -> dict:
    ec, out = cfg.evaluate, {}
    queries = [g.query for g in groups for _ in range(g.n)]
    answers = None  # log-probabilities and self-certainty as answers to the rated query: three evaluators use them
    if {"spmcmc", "logprob", "self_certainty"} & set(ec.evaluators):
        answers = [a for g in groups for a in answer_scores(
            model, tok, chat_prompt(tok, g.query, cfg.sample_space.system_prompt), texts[g.rows], ec.batch_size,
            "[evaluate] log-probabilities", distributed=True)]
    if "spmcmc" in ec.evaluators:
        out.update(spmcmc_scores(cfg, model, tok, texts, groups, workdir, adapter_key, extra_cache, answers))
    if "direct_rating" in ec.evaluators:
        digits = [single_token_id(tok, str(d), "rating digit") for d in range(1, 8)]
        prompts = item_prompts(tok, cfg, texts, queries, ec.rating_question, "Answer with a single digit from 1 to 7.")
        probs, _ = next_token_probs(model, tok, prompts, digits, ec.batch_size, "[evaluate] direct rating", True)
        out["direct_rating"] = probs @ np.arange(1, 8)
        out["direct_rating_argmax"] = probs.argmax(1) + 1.0
    if "p_true" in ec.evaluators:
        yes_no = [single_token_id(tok, w, "answer word") for w in ("Yes", "No")]
        prompts = item_prompts(tok, cfg, texts, queries, ec.binary_question, "Answer Yes or No.")
        out["p_true"] = next_token_probs(model, tok, prompts, yes_no, ec.batch_size, "[evaluate] p_true", True)[0][:, 0]
    if "logprob" in ec.evaluators:
        out["logprob"] = np.array([s[1] for s in answers])
    if "self_certainty" in ec.evaluators:
        out["self_certainty"] = np.array([s[2] for s in answers])
    if "random" in ec.evaluators:
        out["random"] = np.random.default_rng(ec.seed).random(len(texts))
    return out


def within_context(cfg: Config, items):
    """The rated items that fit the model's context where the judge reads two of them with its prompt (the tightest
    use: the spmcmc evaluator); the others are left out, said in one line (an item past the context would be scored
    on a truncated or overflowing input, silently)."""
    from pipeline.judge import prompt_segments
    from pipeline.models import context_length, load_tokenizer, resolve_model_path

    path = resolve_model_path(cfg.model)
    context = context_length(path, cfg.model)
    if not context:
        return items
    tok = load_tokenizer(path, cfg.model)
    size = lambda text: len(tok(text, add_special_tokens=False).input_ids)  # noqa: E731
    queries = items["prompt"].where(items["prompt"].notna(), rated_query(cfg)).tolist()
    frame = {q: sum(size(s) for s in prompt_segments(tok, cfg.judge, q)) for q in dict.fromkeys(queries)}
    tokens = np.array([size(t) for t in items["text"]])
    room = np.array([(context - frame[q]) // 2 for q in queries])
    long = tokens > room
    if long.any() and parallel.is_main():
        print(f"[evaluate] {int(long.sum())} rated item(s) left out: longer than the model's context of {context} "
              f"tokens allows for two of them in the judge's prompt (the longest {int(tokens.max())} tokens, room "
              f"{int(room[long].min())})", flush=True)
    return items[~long].reset_index(drop=True)


def rated_items(cfg: Config, ratings) -> tuple[object, list[RatedPrompt], dict[str, str]]:
    """The items evaluated, contiguous per prompt; their prompts; the prompts left out and why."""
    ec = cfg.evaluate
    pool = within_context(cfg, ratings.items)
    if not ratings.has_prompts:
        items = select_items(pool, ec.max_items, ec.max_chars)
        return items, [RatedPrompt(None, rated_query(cfg), 0, len(items))], {}
    items, left_out = select_prompt_items(pool, ec.max_items, ec.max_chars)
    groups, lo = [], 0
    for pid, g in items.groupby("prompt_id", sort=False):
        groups.append(RatedPrompt(pid, g["prompt"].iloc[0], lo, len(g)))
        lo += len(g)
    return items, groups, left_out


def run(cfg: Config, inputs: dict, workdir: Path):
    ec = cfg.evaluate
    ratings = load_ratings(ec.human_ratings)
    check_scale(ratings, ec.rating_scale)
    items, groups, left_out = rated_items(cfg, ratings)
    texts, human = items["text"].tolist(), items["rating"].to_numpy()
    if parallel.is_main():
        print(f"[evaluate] {len(items)} of {len(ratings.items)} rated items from {ratings.source} "
              + (f"in {len(groups)} prompts ({len(left_out)} left out) " if ratings.has_prompts else "")
              + f"(<= {ec.max_chars or 'any'} chars, spread over the rating range)", flush=True)
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
        scores[name] = score_items(cfg, model, tok, texts, groups, workdir, adapter_key, extra_cache)
        if held_out is not None:
            sharpening[name] = _sharpening(cfg, model, tok, *held_out)
    if not parallel.is_main():  # every forward pass above was shared and gathered; the figures are the main one's
        return None
    prompt_set = within_prompt_figures(cfg, items, groups, left_out, ratings, scores, inputs) \
        if ratings.has_prompts else None
    return _assemble(cfg, items, human, scores, sharpening, ratings, inputs, workdir, yardstick, prompt_set)


def within_prompt_figures(cfg: Config, items, groups: list[RatedPrompt], left_out: dict, ratings, scores: dict,
                          inputs: dict) -> dict:
    """The prompt set's agreement with people (pipeline/within_prompts.py): per prompt its ceiling and every
    evaluator's correlations; pooled over prompts; paired differences between evaluators and before/after tuning,
    over the prompts not trained on (a rated prompt that is also a training prompt is flagged)."""
    ec = cfg.evaluate
    scale = within_prompts.rating_scale(ratings.items, ec.rating_scale)
    se = within_prompts.item_se(items, ratings.long, scale)
    trained = training_prompts(inputs)
    prompts = []
    for g in groups:
        sub = items.iloc[g.rows]
        prompts.append({"prompt_id": g.prompt_id, "prompt": g.query, "rows": g.rows, "n_items": g.n,
                        "human": sub["rating"].to_numpy(dtype=float), "se": None if se is None else se[g.rows],
                        "in_training": g.query.strip() in trained,
                        **within_prompts.prompt_ceiling(sub, ratings.long, scale, ec.seed)})
    rows = within_prompts.prompt_rows(prompts, scores)
    held = [p["prompt_id"] for p in prompts if not p["in_training"]]
    comparisons = [{"model": "base", "a": a, "b": b, **{k: v for k, v in within_prompts.paired_differences(
        rows, a, b, "base", "base").items() if not k.startswith("mean_")}} for a, b in combinations(scores["base"], 2)]
    before_after = []
    for e in scores.get("finetuned", {}):
        d = within_prompts.paired_differences(rows, e, e, "finetuned", "base", keep=lambda r: r["prompt_id"] in held)
        before_after.append({"evaluator": e, "base_spearman": d.pop("mean_b"), "finetuned_spearman": d.pop("mean_a"),
                             **d})
    warnings = []
    if any(p["in_training"] for p in prompts):
        warnings.append(f"{len(prompts) - len(held)} rated prompt(s) were also training prompts (in_training): "
                        "before/after figures use the other " + str(len(held)))
    if len(prompts) < within_prompts.MIN_PROMPTS_FOR_CI:
        warnings.append(f"only {len(prompts)} rated prompt(s): too few for an interval over prompts (at least "
                        f"{within_prompts.MIN_PROMPTS_FOR_CI}); the correlations are shown without one")
    elif len(prompts) < winrate.MIN_PROMPTS:
        warnings.append(f"only {len(prompts)} rated prompts: the intervals over prompts are wide")
    return {"scale": list(scale), "left_out": left_out, "warnings": warnings,
            "prompts": [{k: v for k, v in p.items() if k not in ("rows", "human", "se")} for p in prompts],
            "rows": rows, "pooled": within_prompts.pooled(rows, ec.top_k), "comparisons": comparisons,
            "before_after": before_after}


def training_prompts(inputs: dict) -> set[str]:
    """The texts of the prompts the tuned policy was trained on (the preferences train split's)."""
    if "preferences" not in inputs or "spmcmc" not in inputs:
        return set()
    ids = set(inputs["preferences"].load()["train"]["prompt_id"][:])  # [:]: a Column read whole, not row by row
    cands = inputs["spmcmc"].load()["candidates"]
    return {p.strip() for pid, p in zip(cands["prompt_id"][:], cands["prompt"][:]) if pid in ids}


def evaluation_prompts(inputs: dict) -> list[dict]:
    """The prompts the win rate is measured on: those held out of training (preferences' held_out_prompts split),
    else every prompt of the run (one query)."""
    held = inputs["preferences"].load()["held_out_prompts"]
    if held.num_rows:
        return held.to_list()
    cands = inputs["spmcmc"].load()["candidates"]
    return [{"prompt_id": pid, "prompt": p} for pid, p in dict(zip(cands["prompt_id"][:], cands["prompt"][:])).items()]


def _held_out(inputs: dict) -> tuple[list[str], list[float], list[str]]:
    """Texts, base spMCMC scores (those the pairs were built from) and prompts of the preferences test
    split's candidates."""
    test = inputs["preferences"].load()["test"]
    score = {**dict(zip(test["chosen_id"][:], test["chosen_score"][:])),
             **dict(zip(test["rejected_id"][:], test["rejected_score"][:]))}
    ids = sorted(score)
    cands = inputs["spmcmc"].load()["candidates"]
    text, prompt = dict(zip(cands["id"][:], cands["text"][:])), dict(zip(cands["id"][:], cands["prompt"][:]))
    return [text[i] for i in ids], [score[i] for i in ids], [prompt[i] for i in ids]


def _sharpening(cfg: Config, model, tok, texts: list[str], scores: list[float], prompts: list[str]) -> dict:
    """On the held-out candidates: Spearman between the policy's mean log-probability of an answer and its
    base spMCMC score, within each prompt (averaged over prompts with at least 3 such candidates)."""
    from scipy.stats import spearmanr

    results, by_prompt = [], {}
    for i, p in enumerate(prompts):  # one pass: a scan of every text per prompt grew as P^2
        by_prompt.setdefault(p, []).append(i)
    for prompt, rows in by_prompt.items():
        if len(rows) >= 3:
            chat = chat_prompt(tok, prompt, cfg.sample_space.system_prompt)
            logp = [s[1] for s in answer_scores(model, tok, chat, [texts[i] for i in rows], cfg.evaluate.batch_size,
                                                distributed=True)]
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
    c = inputs["spmcmc"].load()["candidates"].to_dict()  # columns read whole, not row by row
    greedy = [i for i, g in enumerate(c["is_greedy"]) if g]
    out = {"n_candidates": len(c["id"]), "greedy_text": c["text"][greedy[0]] if greedy else None}
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


def one_query_figures(cfg: Config, human, scores: dict) -> tuple[list[dict], list[dict], list[dict]]:
    """One query's agreement with people over its items (bootstrap over items): metrics, comparisons between the
    base's evaluators, before/after tuning."""
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
    return metrics, comparisons, before_after


def _assemble(cfg: Config, items, human, scores: dict, sharpening: dict, ratings, inputs: dict, workdir: Path,
              yardstick: dict | None, prompt_set: dict | None):
    from datasets import Dataset, DatasetDict

    ec = cfg.evaluate
    if prompt_set is None:
        metrics, comparisons, before_after = one_query_figures(cfg, human, scores)
    else:  # a prompt set: within each prompt, pooled over prompts
        metrics, comparisons, before_after = (prompt_set[k] for k in ("pooled", "comparisons", "before_after"))
    y, up = (yardstick or {}).get("summary"), upstream_summaries(inputs)
    rounds_so_far, alignment = rounds.table(inputs.get("history"), up.get("spmcmc"), up.get("preferences"),
                                            up.get("sample_space"), y, metrics)
    summary = {"ratings": ratings.source, "citation": ratings.citation, "n_items": len(items),
               "item_ids": items["id"].tolist(), "max_items": ec.max_items, "max_chars": ec.max_chars,
               "noise_ceiling": None if prompt_set else noise_ceiling(ratings.long, items["id"].tolist(), ec.seed),
               "prompt_set": prompt_set,
               "paper_checks": paper_checks(inputs), "sharpening": sharpening or None,
               "upstream": up, "yardstick": y, "rounds": rounds_so_far, "rounds_alignment": alignment,
               "round_warnings": rounds.warnings(rounds_so_far, cfg.rounds),
               # the yardstick's headline figures, at the top level for readers and W&B
               **{k: (y or {}).get(k) for k in ("win_rate", "win_rate_ci", "ceiling", "headroom_share",
                                                "headroom_share_ci")}}
    plots = evaluation_plots(workdir, human, scores, metrics, summary["noise_ceiling"]) if prompt_set is None else \
        [prompt_set_plot(workdir, prompt_set["rows"], prompt_set["pooled"])]
    if len(rounds_so_far) > 1:
        plots.append(rounds_plot(workdir, rounds_so_far))
    write_report(cfg, workdir, summary, metrics, comparisons, before_after, plots)
    lines, flat = _lines_and_metrics(metrics, summary)
    publish(workdir, NAME, summary, lines, plots, metrics=flat, tables={"eval/scores": _score_table(items, human, scores)})
    rows = [{"item_id": i, "prompt_id": pid, "text": t, "human": float(h), "model": m, "evaluator": e,
             "score": float(s[k])} for m, per in scores.items() for e, s in per.items()
            for k, (i, pid, t, h) in enumerate(zip(items["id"], items["prompt_id"], items["text"], human))]
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
        "rounds": _table(rounds_so_far, rounds.COLUMNS), "rounds_alignment": _table(alignment, rounds.ALIGNMENT_COLUMNS),
        "prompt_metrics": _table((prompt_set or {}).get("rows", []), PROMPT_METRIC_COLUMNS)})


PROMPT_METRIC_COLUMNS = ("model", "evaluator", "prompt_id", "n_items", "pearson", "spearman", "kendall",
                         "pair_agreement", "resolved_pairs", "ceiling", "kendall_ceiling", "in_training")


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
    if summary["prompt_set"]:
        lines = _prompt_set_lines(metrics, summary["prompt_set"], flat)
    else:
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


def _prompt_set_lines(metrics: list[dict], ps: dict, flat: dict) -> list[str]:
    """A prompt set's printed lines (pooled over prompts); its W&B keys added to `flat`."""
    lines = [f"{r['model']:9s} {r['evaluator']:21s} within-prompt spearman {signed(r['spearman_r'])} "
             f"[{signed(r['spearman_ci_low'])}, {signed(r['spearman_ci_high'])}]  pair agreement "
             f"{signed(r['pair_agreement'])} over {r['n_prompts']} prompts" for r in metrics]
    flat.update({f"eval/{r['model']}/{r['evaluator']}/pair_agreement": r["pair_agreement"] for r in metrics
                 if r["pair_agreement"] is not None})
    ceilings = [p["ceiling"] for p in ps["prompts"] if p["ceiling"] is not None]
    if ceilings:
        flat["eval/noise_ceiling"] = float(np.mean(ceilings))
        lines.append(f"mean human noise ceiling over {len(ceilings)} prompts: {np.mean(ceilings):.4f}")
    return lines + [f"warning: {w}" for w in ps["warnings"]]


def _score_table(items, human, scores):
    """Every evaluator's score of every rated item, side by side (the `scores` split, wide)."""
    import pandas as pd

    return pd.DataFrame({"item_id": items["id"], "human": human,
                         **{f"{m}/{e}": s for m, per in scores.items() for e, s in per.items()}})
