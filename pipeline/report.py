"""report.md: the tables and plots a reader needs, with the settings and the citations."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import Config

SPMCMC_CITATION = ("spMCMC builds on Markov chain Monte Carlo with People: A. N. Sanborn and T. L. Griffiths, "
                   "\"Markov Chain Monte Carlo with People\", Advances in Neural Information Processing Systems 20, 2007.")
SELF_CERTAINTY_CITATION = ("Self-certainty: Z. Kang, X. Zhao and D. Song, \"Scalable Best-of-N Selection for Large "
                           "Language Models via Self-Certainty\", 2025.")


def number(v, spec: str = ".3f", missing: str = "n/a") -> str:
    """How the pipeline writes a figure that may be missing (report tables, printed lines, plot titles)."""
    return missing if v is None else format(v, spec)


def signed(v) -> str:
    """A correlation in a column of them: the sign always shown, a missing one as wide as a number."""
    return number(v, "+.3f", "  n/a")


def _ci(r: dict, kind: str) -> str:
    return f"{number(r[f'{kind}_r'])} [{number(r[f'{kind}_ci_low'])}, {number(r[f'{kind}_ci_high'])}]"


def write_report(cfg: Config, workdir: Path, summary: dict, metrics: list[dict], comparisons: list[dict],
                 before_after: list[dict], plots: list[Path]) -> Path:
    ec = cfg.evaluate
    lines = ["# spMCMC evaluation report", "",
             f"- recipe: `{cfg.recipe}`; model: `{cfg.model.name_or_path}`; "
             + (f"query: {cfg.sample_space.query!r}" if cfg.sample_space.query is not None else
                f"prompt set: {cfg.sample_space.prompts!r}; rated items answer {cfg.evaluate.query!r}"),
             f"- human ratings: `{summary['ratings']}`; {summary['n_items']} items (max_items={ec.max_items}, "
             f"max_chars={ec.max_chars}, chosen evenly over the rating range): ids {', '.join(summary['item_ids'])}",
             f"- judge question: {cfg.judge.question!r}, labels {list(cfg.judge.labels)}, order {cfg.spmcmc.order}; "
             f"bootstrap resamples: {ec.bootstrap}; k = {ec.top_k}", ""]
    ceiling = summary["noise_ceiling"]
    if ceiling:
        lines += [f"Human noise ceiling (split-half reliability of the item means over {ceiling['raters']} raters, "
                  f"Spearman–Brown corrected, {ceiling['splits']} random splits): **{ceiling['spearman_brown']:.4f}** "
                  f"(split-half r = {ceiling['split_half_r']:.4f}).", ""]
    lines += preference_section(summary.get("upstream") or {})
    lines += ["## Agreement with human ratings", "",
              "| evaluator | model | Pearson r [95% CI] | p | Spearman ρ [95% CI] | p | Kendall τ | P@k | top-1 in human top-k |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['evaluator']} | {r['model']} | {_ci(r, 'pearson')} | {number(r['pearson_p'], '.3g')} | "
              f"{_ci(r, 'spearman')} | {number(r['spearman_p'], '.3g')} | {number(r['kendall_tau'])} | "
              f"{number(r['precision_at_k'], '.2f')} | {number(r['top1_in_human_topk'], '')} |" for r in metrics]
    if before_after:
        lines += ["", "## Before and after fine-tuning (Spearman ρ with human ratings)", "",
                  "| evaluator | base | fine-tuned | difference [95% CI] | p |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['evaluator']} | {number(r['base_spearman'])} | {number(r['finetuned_spearman'])} | "
                  f"{number(r['diff'], '+.3f')} [{number(r['ci_low'])}, {number(r['ci_high'])}] | {number(r['p'], '.3g')} |"
                  for r in before_after]
    lines += ["", "## Paired comparisons between evaluators (base model; Spearman ρ of a minus b)", "",
              "| a | b | difference [95% CI] | p |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['a']} | {r['b']} | {number(r['diff'], '+.3f')} [{number(r['ci_low'])}, {number(r['ci_high'])}] | "
              f"{number(r['p'], '.3g')} |" for r in comparisons]
    checks = summary["paper_checks"]
    if checks:
        ranks = ", ".join(f"by {k.removeprefix('greedy_rank_by_')}: {v}" for k, v in checks.items()
                          if k.startswith("greedy_rank_by_") and v is not None)
        lines += ["", "## On the generated sample space", "",
                  f"- candidates: {checks['n_candidates']}; the greedy answer's rank {ranks or 'n/a (no greedy answer)'}",
                  f"- greedy answer: {checks['greedy_text']!r}",
                  f"- Spearman(generation count, spMCMC score): {number(checks.get('count_vs_score_spearman'))} "
                  f"(p = {number(checks.get('count_vs_score_p'), '.3g')})"]
    if summary.get("win_rate"):
        lines += ["", "## Improvement on held-out prompts", "",
                  "The tuned policy and its opponent each answer every prompt held out of training; the judge compares "
                  "every tuned answer with every opponent answer of the same prompt, in both orders. Win rate = mean "
                  "order-averaged choice of the tuned answer (0.5 = no difference), 95% bootstrap interval over prompts.",
                  "", "| judge | opponent | tuned win rate [95% CI] | prompts | answers per policy | comparisons |",
                  "| --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {judge} model | {opponent} policy | {w['mean']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] | "
                  f"{w['n']} | {w['answers_per_policy']} | {w['comparisons']} |"
                  for judge, per in summary["win_rate"].items() for opponent, w in per.items()]
    lines += rounds_section(summary.get("rounds") or [], summary.get("round_warnings") or [],
                            summary.get("rounds_alignment") or [])
    if summary["sharpening"]:
        lines += ["", "## Sharpening on held-out candidates", "",
                  "Spearman between the policy's mean log-probability and the base spMCMC score, on the candidates "
                  "of the preferences test split:", ""]
        lines += [f"- {m}: ρ = {number(s['spearman_r'])} (p = {number(s['spearman_p'], '.3g')}, n = {s['n']})"
                  for m, s in summary["sharpening"].items()]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Citations", "", f"- {SPMCMC_CITATION}", f"- {SELF_CERTAINTY_CITATION}"]
    if summary["citation"]:
        lines.append(f"- Human ratings: {summary['citation']}")
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _value_ci(value, low, high) -> str:
    return "n/a" if value is None else f"{value:.3f} [{number(low)}, {number(high)}]"


def _ci3(row: dict, key: str) -> str:
    return _value_ci(row[key], row[f"{key}_low"], row[f"{key}_high"])


def rounds_section(rounds: list[dict], warnings: list[str], alignment: list[dict]) -> list[str]:
    """The self-improvement rounds, one row each (only when there is more than one)."""
    if len(rounds) < 2:
        return []
    lines = ["", "## Rounds", "",
             "Reliability: the preference reliability of the round's judge; entropy: of its preference distribution "
             "(1 = uniform; falling = sharpening); diversity: distinct answers among the policy's samples per prompt "
             "(falling = collapse); win rates of the round's tuned policy on held-out prompts, base-model judge.", "",
             "| round | reliability | pairs kept / dropped | entropy | diversity | win vs base [95% CI] | "
             "win vs previous round [95% CI] | win vs base, tuned judge |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['round']} | {number(r['reliability'])} | {r['pairs_kept']} / {r['pairs_dropped']} | "
              f"{number(r['entropy'])} | {number(r['diversity'])} | {_ci3(r, 'win_vs_base')} | {_ci3(r, 'win_vs_previous')} | "
              f"{_ci3(r, 'win_vs_base_tuned_judge')} |" for r in rounds]
    lines += [f"- warning: {w}" for w in warnings]
    tuned = {(a["round"], a["evaluator"]): a for a in alignment if a["model"] == "finetuned"}
    evaluators = list(dict.fromkeys(a["evaluator"] for a in alignment if a["model"] == "finetuned"))
    if evaluators:
        lines += ["", "Jester alignment of each round's tuned model (Spearman ρ with the human mean [95% CI]):", "",
                  "| evaluator | " + " | ".join(f"round {r['round']}" for r in rounds) + " |",
                  "| --- |" + " --- |" * len(rounds)]
        cell = lambda a: _value_ci(a["spearman_r"], a["ci_low"], a["ci_high"]) if a else "n/a"  # noqa: E731
        lines += [f"| {e} | " + " | ".join(cell(tuned.get((r["round"], e))) for r in rounds) + " |" for e in evaluators]
    return lines + ["", "![rounds](rounds.png)"]


def preference_section(up: dict) -> list[str]:
    """How well the model's preferences were measured, and what the training pairs rest on."""
    sp, pr = up.get("spmcmc"), up.get("preferences")
    if not sp:
        return []
    rel = sp.get("reliability") or {}
    lines = ["## The model's preferences: how well they were measured", "",
             f"- design: **{sp['mode']}** ({sp['mode_reason']}); {sp['judge_calls']} judge comparisons; score: "
             f"`{sp['score_estimate']}` — {sp['score_reason']}",
             f"- **preference reliability** (evidence split in halves by {rel.get('evidence', 'n/a')}, Spearman between "
             f"the halves' estimates, Spearman–Brown corrected, {rel.get('splits', 'n/a')} splits): "
             f"**{number(rel.get('reliability'))}** (split-half ρ = {number(rel.get('split_half_r'))}); the human analogue "
             "is the noise ceiling below",
             f"- **preference strength**: the model's order-averaged choice between two candidates is on average "
             f"{number(sp['strength']['mean_abs_w_minus_half'])} away from a coin flip (strongest "
             f"{number(sp['strength']['max_w'])}); "
             f"the score ranges {sp['strength']['bottom_over_uniform']:.2f}x–{sp['strength']['top_over_uniform']:.2f}x "
             "the uniform share",
             f"- position bias P(first shown chosen) = {sp['position_bias']:.3f}; label mass {number(sp['label_mass_mean'])}; "
             f"cyclic triads {number(sp['intransitive_share'])}; calibration: {sp['calibration']}", "",
             f"| estimate | TV vs {sp['estimates']['reference']} | Spearman vs {sp['estimates']['reference']} | "
             "range | mean SE |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {k} | {e['tv_vs_reference']:.3f} | {number(e['spearman_vs_reference'])} | {e['min']:.4f}–{e['max']:.4f} | "
              f"{e['mean_se']:.4f} |" for k, e in sp["estimates"].items() if k != "reference"]
    if pr:
        lines += ["", f"- DPO pairs: **{pr['train_pairs']} kept** of {pr['pairs_measured']} measured (the unfiltered "
                  f"selection had {pr['unfiltered_pairs']}); the model's own order-averaged choice inverts "
                  f"{number(pr['inverted_direct_unfiltered'], '.2f')} of the unfiltered pairs and "
                  f"{number(pr['inverted_direct_kept'], '.2f')} of the kept; the exact distribution inverts "
                  f"{number(pr['inverted_exact_unfiltered'], '.2f')} / {number(pr['inverted_exact_kept'], '.2f')}",
                  f"- confidence of kept pairs (W, 0.5 = a coin flip): {pr['confidence_min']:.3f}–"
                  f"{pr['confidence_max']:.3f}, mean {pr['confidence_mean']:.3f} (unfiltered mean "
                  f"{number(pr['confidence_unfiltered_mean'])}); median score gap {pr['gap_z_median']:.2f} standard errors"]
    if sp.get("n_prompts", 1) > 1:
        lines += ["", f"Per prompt ({sp['n_prompts']} prompts; reliability mean {number(rel.get('reliability'))}, worst "
                  f"{number(rel.get('min'))} for {rel.get('worst_prompt')}):", "",
                  "| prompt | candidates | mode | comparisons | reliability | top / uniform | position bias |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['prompt'][:60]} | {r['n_candidates']} | {r['mode']} | {r['judge_calls']} | "
                  f"{number(r['reliability'])} | {number(r['top_over_uniform'], '.2f')} | {number(r['position_bias'])} |"
                  for r in sp["per_prompt"]]
    lines += [f"- warning: {w}" for w in sp.get("warnings", [])]
    return lines + [""]


def stop_reason(r: int, nothing: Exception, space, chains, cfg: Config) -> str:
    """Why round r yields no pair, read off its figures: no signal left, or sharpened to a point."""
    s, ss = (a.summary() if a.complete else {} for a in (chains, space))
    rel, entropy, diversity = (s.get("reliability") or {}).get("reliability"), (s.get("strength") or {}).get("entropy"), \
        ss.get("diversity")
    if rel is not None and rel < cfg.spmcmc.min_reliability:
        why = f"its judge has no signal left (preference reliability {rel:.2f} < {cfg.spmcmc.min_reliability})"
    elif (entropy is not None and entropy < 0.8) or (diversity is not None and diversity < cfg.rounds.min_diversity):
        why = (f"its preferences have sharpened to a point (entropy {number(entropy, '.2f')} of 1, answer diversity "
               f"{number(diversity, '.2f')})")
    else:
        why = (f"its preferences are measured (reliability {number(rel, '.2f')}) but too flat to pass the filter (entropy "
               f"{number(entropy, '.2f')} of 1): neither sharpened nor lost, just weak")
    return f"round {r} yields no pair that passes the evidence filters; the figures suggest {why}. ({nothing})"


def publish_report(artifact, output_dir: str) -> None:
    """OUTPUT_DIR/report.md: the evaluate artifact's report with its image links made relative to OUTPUT_DIR."""
    src = artifact.path / "report.md"
    if not src.is_file():
        return
    rel = artifact.path.relative_to(Path(output_dir)) if artifact.path.is_relative_to(output_dir) else artifact.path
    text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", lambda m: f"![{m.group(1)}]({rel}/{m.group(2)})", src.read_text())
    (Path(output_dir) / "report.md").write_text(text)
