"""report.md: the tables and plots a reader needs, with the settings and the citations."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.config import Config

SPMCMC_CITATION = ("spMCMC builds on Markov chain Monte Carlo with People: A. N. Sanborn and T. L. Griffiths, "
                   "\"Markov Chain Monte Carlo with People\", Advances in Neural Information Processing Systems 20, 2007.")
SELF_CERTAINTY_CITATION = ("Self-certainty: Z. Kang, X. Zhao and D. Song, \"Scalable Best-of-N Selection for Large "
                           "Language Models via Self-Certainty\", 2025.")


def _n(v, fmt=".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _ci(r: dict, kind: str) -> str:
    return f"{_n(r[f'{kind}_r'])} [{_n(r[f'{kind}_ci_low'])}, {_n(r[f'{kind}_ci_high'])}]"


def write_report(cfg: Config, workdir: Path, summary: dict, metrics: list[dict], comparisons: list[dict],
                 before_after: list[dict], plots: list[Path]) -> Path:
    ec = cfg.evaluate
    lines = ["# spMCMC evaluation report", "",
             f"- recipe: `{cfg.recipe}`; model: `{cfg.model.name_or_path}`; query: {cfg.sample_space.query!r}",
             f"- human ratings: `{summary['ratings']}`; {summary['n_items']} items (max_items={ec.max_items}, "
             f"max_chars={ec.max_chars}, chosen evenly over the rating range): ids {', '.join(summary['item_ids'])}",
             f"- judge question: {cfg.judge.question!r}, labels {list(cfg.judge.labels)}, order {cfg.spmcmc.order}; "
             f"bootstrap resamples: {ec.bootstrap}; k = {ec.top_k}", ""]
    ceiling = summary["noise_ceiling"]
    if ceiling:
        lines += [f"Human noise ceiling (split-half reliability of the item means over {ceiling['raters']} raters, "
                  f"Spearman–Brown corrected, {ceiling['splits']} random splits): **{ceiling['spearman_brown']:.4f}** "
                  f"(split-half r = {ceiling['split_half_r']:.4f}).", ""]
    lines += ["## Agreement with human ratings", "",
              "| evaluator | model | Pearson r [95% CI] | p | Spearman ρ [95% CI] | p | Kendall τ | P@k | top-1 in human top-k |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['evaluator']} | {r['model']} | {_ci(r, 'pearson')} | {_n(r['pearson_p'], '.3g')} | "
              f"{_ci(r, 'spearman')} | {_n(r['spearman_p'], '.3g')} | {_n(r['kendall_tau'])} | "
              f"{r['precision_at_k']:.2f} | {r['top1_in_human_topk']} |" for r in metrics]
    if before_after:
        lines += ["", "## Before and after fine-tuning (Spearman ρ with human ratings)", "",
                  "| evaluator | base | fine-tuned | difference [95% CI] | p |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['evaluator']} | {_n(r['base_spearman'])} | {_n(r['finetuned_spearman'])} | "
                  f"{_n(r['diff'], '+.3f')} [{_n(r['ci_low'])}, {_n(r['ci_high'])}] | {_n(r['p'], '.3g')} |"
                  for r in before_after]
    lines += ["", "## Paired comparisons between evaluators (base model; Spearman ρ of a minus b)", "",
              "| a | b | difference [95% CI] | p |", "| --- | --- | --- | --- |"]
    lines += [f"| {r['a']} | {r['b']} | {_n(r['diff'], '+.3f')} [{_n(r['ci_low'])}, {_n(r['ci_high'])}] | "
              f"{_n(r['p'], '.3g')} |" for r in comparisons]
    checks = summary["paper_checks"]
    if checks:
        lines += ["", "## On the generated sample space", "",
                  f"- candidates: {checks['n_candidates']}; greedy answer's rank by spMCMC frequency: "
                  f"{checks['greedy_rank_by_frequency']}" + (f", by the exact distribution: "
                                                             f"{checks.get('greedy_rank_by_stationary')}"
                                                             if "greedy_rank_by_stationary" in checks else ""),
                  f"- greedy answer: {checks['greedy_text']!r}",
                  f"- Spearman(generation count, spMCMC frequency): {_n(checks.get('count_vs_frequency_spearman'))} "
                  f"(p = {_n(checks.get('count_vs_frequency_p'), '.3g')})"]
    if summary["sharpening"]:
        lines += ["", "## Sharpening on held-out candidates", "",
                  "Spearman between the policy's mean log-probability and the base spMCMC score, on the candidates "
                  "of the preferences test split:", ""]
        lines += [f"- {m}: ρ = {_n(s['spearman_r'])} (p = {_n(s['spearman_p'], '.3g')}, n = {s['n']})"
                  for m, s in summary["sharpening"].items()]
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Citations", "", f"- {SPMCMC_CITATION}", f"- {SELF_CERTAINTY_CITATION}"]
    if summary["citation"]:
        lines.append(f"- Human ratings: {summary['citation']}")
    path = workdir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def publish_report(artifact, output_dir: str) -> None:
    """OUTPUT_DIR/report.md: the evaluate artifact's report with its image links made relative to OUTPUT_DIR."""
    src = artifact.path / "report.md"
    if not src.is_file():
        return
    rel = artifact.path.relative_to(Path(output_dir)) if artifact.path.is_relative_to(output_dir) else artifact.path
    text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", lambda m: f"![{m.group(1)}]({rel}/{m.group(2)})", src.read_text())
    (Path(output_dir) / "report.md").write_text(text)
