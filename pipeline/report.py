"""report.md: the tables and plots a reader needs, with the settings and the citations."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import Config
from pipeline.formatting import number, signed

if TYPE_CHECKING:  # the summaries' shapes, owned by the stages that write them
    from pipeline.stages import finetune, preferences, spmcmc

SPMCMC_CITATION = ("spMCMC builds on Markov chain Monte Carlo with People: A. N. Sanborn and T. L. Griffiths, "
                   "\"Markov Chain Monte Carlo with People\", Advances in Neural Information Processing Systems 20, 2007.")
SELF_CERTAINTY_CITATION = ("Self-certainty: Z. Kang, X. Zhao and D. Song, \"Scalable Best-of-N Selection for Large "
                           "Language Models via Self-Certainty\", 2025.")


def _ci(r: dict, kind: str) -> str:
    return f"{number(r[f'{kind}_r'])} [{number(r[f'{kind}_ci_low'])}, {number(r[f'{kind}_ci_high'])}]"


def write_report(cfg: Config, workdir: Path, summary: dict, metrics: list[dict], comparisons: list[dict],
                 before_after: list[dict], plots: list[Path]) -> Path:
    ec = cfg.evaluate
    lines = ["# spMCMC evaluation report", "",
             f"- recipe: `{cfg.recipe}`; model: `{cfg.model.name_or_path}`; "
             + ("rated items answer their own prompts (the ratings file's `prompt`)" if summary.get("prompt_set") else
                f"query: {cfg.sample_space.query!r}" if cfg.sample_space.query is not None else
                f"prompt set: {cfg.sample_space.prompts!r}; rated items answer {cfg.evaluate.query!r}"),
             f"- human ratings: `{summary['ratings']}`; {summary['n_items']} items (max_items={ec.max_items}"
             + (" per prompt" if summary.get("prompt_set") else "") + f", max_chars={ec.max_chars}, chosen evenly "
             "over the rating range)" + ("" if summary.get("prompt_set") else f": ids {', '.join(summary['item_ids'])}"),
             f"- judge question: {cfg.judge.question!r}, labels {list(cfg.judge.labels)}, order {cfg.spmcmc.order}; "
             f"bootstrap resamples: {ec.bootstrap}; k = {ec.top_k}", ""]
    ceiling = summary["noise_ceiling"]
    if ceiling:
        lines += [f"Human noise ceiling (split-half reliability of the item means over {ceiling['raters']} raters, "
                  f"Spearman–Brown corrected, {ceiling['splits']} random splits): **{ceiling['spearman_brown']:.4f}** "
                  f"(split-half r = {ceiling['split_half_r']:.4f}).", ""]
    lines += preference_section(summary.get("upstream") or {})
    lines += dpo_section((summary.get("upstream") or {}).get("finetune"))
    if summary.get("prompt_set"):
        lines += prompt_set_section(summary["prompt_set"], metrics)
    else:
        lines += ["## Agreement with human ratings", "",
                  "| evaluator | model | Pearson r [95% CI] | p | Spearman ρ [95% CI] | p | Kendall τ | P@k | "
                  "top-1 in human top-k |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['evaluator']} | {r['model']} | {_ci(r, 'pearson')} | {number(r['pearson_p'], '.3g')} | "
                  f"{_ci(r, 'spearman')} | {number(r['spearman_p'], '.3g')} | {number(r['kendall_tau'])} | "
                  f"{number(r['precision_at_k'], '.2f')} | {number(r['top1_in_human_topk'], '')} |" for r in metrics]
    within = " (mean within-prompt difference, 95% t CI over prompts)" if summary.get("prompt_set") else ""
    if before_after:
        lines += ["", f"## Before and after fine-tuning (Spearman ρ with human ratings){within}", "",
                  "| evaluator | base | fine-tuned | difference [95% CI] | p |", "| --- | --- | --- | --- | --- |"]
        lines += [f"| {r['evaluator']} | {number(r['base_spearman'])} | {number(r['finetuned_spearman'])} | "
                  f"{number(r['diff'], '+.3f')} [{number(r['ci_low'])}, {number(r['ci_high'])}] | {number(r['p'], '.3g')} |"
                  for r in before_after]
    lines += ["", f"## Paired comparisons between evaluators (base model; Spearman ρ of a minus b){within}", "",
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
    lines += yardstick_section(summary.get("yardstick"))
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


def prompt_set_section(ps: dict, pooled: list[dict]) -> list[str]:
    """A prompt set rated by people: the pooled table (mean within-prompt correlations, t intervals over prompts,
    pair agreement) and every prompt's row (its ceiling, each evaluator's Spearman ρ for the base model)."""
    kinds = sorted({p["ceiling_kind"] for p in ps["prompts"]})
    lines = ["## Agreement with human ratings within each prompt", "",
             f"{len(ps['prompts'])} prompts; each figure is computed within a prompt, then averaged over prompts with "
             "a 95% Student t interval over prompts (p: one-sample t test against 0). Pair agreement: the share of a "
             "prompt's item pairs whose human means differ by more than 1.96 standard errors that the evaluator "
             f"orders the same way (chance 0.5). Rating scale {ps['scale']}; noise ceiling: {', '.join(kinds)} "
             "(the correlation the true mean rating would reach, √reliability).", ""]
    lines += [f"- warning: {w}" for w in ps["warnings"]]
    lines += [f"- left out: prompt {pid!r}: {why}" for pid, why in ps["left_out"].items()]
    lines += ["", "| evaluator | model | prompts | Spearman ρ [95% CI] | p | Pearson r [95% CI] | Kendall τ [95% CI] | "
              "pair agreement [95% CI] | mean ceiling (Pearson; Kendall's on its scale) |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['evaluator']} | {r['model']} | {r['n_prompts']} | {_ci(r, 'spearman')} | "
              f"{number(r['spearman_p'], '.3g')} | {_ci(r, 'pearson')} | "
              f"{_value_ci(r['kendall_tau'], r['kendall_ci_low'], r['kendall_ci_high'])} | "
              f"{_value_ci(r['pair_agreement'], r['pair_agreement_ci_low'], r['pair_agreement_ci_high'])} | "
              f"{number(r['mean_ceiling'])}; {number(r.get('mean_kendall_ceiling'))} |" for r in pooled]
    evaluators = list(dict.fromkeys(r["evaluator"] for r in pooled))
    by = {(r["prompt_id"], r["evaluator"]): r for r in ps.get("rows") or [] if r["model"] == "base"}
    lines += ["", "### Per prompt (base model, Spearman ρ with the human means)", "",
              "| prompt | items | ceiling | in training | " + " | ".join(evaluators) + " |",
              "| --- | --- | --- | --- | " + " | ".join("---" for _ in evaluators) + " |"]
    lines += [f"| {p['prompt_id']} | {p['n_items']} | {number(p['ceiling'])} | {'yes' if p['in_training'] else ''} | "
              + " | ".join(number(by[p["prompt_id"], e]["spearman"]) if (p["prompt_id"], e) in by else "" for e in evaluators)
              + " |" for p in ps["prompts"]]
    lines += [f"| {pid} | left out: {why} |" + " |" * (2 + len(evaluators)) for pid, why in ps["left_out"].items()]
    return lines + [""]


def yardstick_section(y: dict | None) -> list[str]:
    """The tuned policy's win rate with its ceiling, the null, the length-controlled rate and the drift."""
    if not y:
        return []
    ci = lambda v, pair: _value_ci(v, *pair)  # noqa: E731
    lc, fresh = y["length_controlled_win_rate"], y["base_fresh_win_rate"]
    lines = ["", "## Did the policy improve? The win rate and its yardstick", "",
             f"On {y['prompts']} evaluation prompt(s), {y['n_units']} {y['win_rate_units']} as the units of a Student t "
             "interval: each tuned answer against the base policy's own answers to the same prompt (sampled alike, "
             "nothing filtered), both presentation orders, order-averaged W (0.5 = no better). The ceiling is what the "
             "judge could award: the base's best of n answers, picked by the judge against the null answers and scored "
             "against the other base answers (the pick and the score on different comparisons, so the pick's own luck "
             "does not count), drawn without replacement from the reference: only n up to its size.", "",
             "| figure | value [95% CI] |", "| --- | --- |",
             f"| **win rate** of the tuned policy | **{ci(y['win_rate'], y['win_rate_ci'])}** |",
             f"| other base answers against the same reference (the null, ≈ 0.5) | "
             f"{ci(fresh['mean'], (fresh['ci_low'], fresh['ci_high']))} |",
             f"| length-controlled win rate (GLM at zero length and log-probability difference) | "
             f"{ci(lc['mean'], (lc['ci_low'], lc['ci_high']))} |"]
    lines += [f"| ceiling: best of {k[8:]} base samples | {v:.3f} |" for k, v in
              sorted(y["ceilings"].items(), key=lambda t: int(t[0][8:]))]
    lines += [f"| **headroom share** (win − ½) / (best-of-8 − ½), delta-method interval with the ceiling's variance | "
              f"**{ci(y['headroom_share'], y['headroom_share_ci'])}**"
              + (" (unbounded: the ceiling's interval reaches ½)" if y.get("headroom_share_unbounded") else "") + " |",
              f"| answer length, tuned vs base (characters) | {y['tuned_chars']:.0f} vs {y['base_chars']:.0f} |",
              f"| log-probability under the base, tuned vs base answers | {number(y['tuned_logp_base'], '.1f')} vs "
              f"{number(y['base_logp'], '.1f')} |",
              f"| KL(tuned ‖ base), nats per answer (mean log-ratio; k3) | {number(y['kl'], '.2f')}; "
              f"{number(y['kl_k3'], '.2f')} ({y['samples']} samples) |",
              f"| distinct answers per prompt, tuned vs base | {number(y.get('tuned_diversity'), '.2f')} vs "
              f"{number(y.get('base_diversity'), '.2f')} |"]
    for key, label in (("win_vs_previous", "against the previous round's policy"),
                       ("win_rate_tuned_judge", "judged by the tuned model itself")):
        if y.get(key):
            w = y[key]
            lines.append(f"| {label} | {_value_ci(w['mean'], w['ci_low'], w['ci_high'])} |")
    return lines + [f"- warning: {w}" for w in y["warnings"]]


def _value_ci(value, low, high) -> str:
    return "n/a" if value is None else f"{value:.3f} [{number(low)}, {number(high)}]"


def _ci3(row: dict, key: str) -> str:
    return _value_ci(row[key], row[f"{key}_low"], row[f"{key}_high"])


def rounds_section(rounds: list[dict], warnings: list[str], alignment: list[dict]) -> list[str]:
    """The self-improvement rounds, one row each (only when there is more than one)."""
    if len(rounds) < 2:
        return []
    lines = ["", "## Rounds", "",
             "Consistency: the preference consistency of the round's judge; entropy: of its preference distribution "
             "(1 = uniform; falling = sharpening); diversity: distinct answers among the policy's samples per prompt "
             "(falling = collapse); win rates of the round's tuned policy on held-out prompts, base-model judge.", "",
             "| round | consistency | pairs kept / dropped | entropy | diversity | win vs base [95% CI] | ceiling (BoN-8) | "
             "headroom share [95% CI] | KL | length (base) | win vs previous round [95% CI] | win vs base, tuned judge |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['round']} | {number(r['consistency'])} | {r['pairs_kept']} / {r['pairs_dropped']} | "
              f"{number(r['entropy'])} | {number(r['diversity'])} | {_ci3(r, 'win_vs_base')} | {number(r.get('ceiling'))} | "
              f"{_ci3(r, 'headroom_share')} | {number(r.get('kl'), '.2f')} | {number(r.get('tuned_chars'), '.0f')} "
              f"({number(r.get('base_chars'), '.0f')}) | {_ci3(r, 'win_vs_previous')} | {_ci3(r, 'win_vs_base_tuned_judge')} |"
              for r in rounds]
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
    """How the model's preferences were measured, what they track besides quality, and what the pairs rest on."""
    sp: spmcmc.Summary | None = up.get("spmcmc")
    pr: preferences.Summary | None = up.get("preferences")
    if not sp:
        return []
    rel = sp["consistency"] or {}
    lines = ["## The model's preferences: how they were measured", "",
             f"- design: **{sp['mode']}** ({sp['mode_reason']}); {sp['judge_calls']} judge comparisons; score: "
             f"`{sp['score_estimate']}` — {sp['score_reason']}",
             f"- **consistency** {number(rel.get('consistency'))} (evidence split in halves by "
             f"{rel.get('evidence', 'n/a')}, Spearman between the halves' estimates {number(rel.get('split_half_r'))}, "
             f"Spearman–Brown corrected, {rel.get('splits', 'n/a')} splits). It shows that the judge gives the same "
             "ranking from either half of its comparisons; it cannot show what the ranking is about: a judge that "
             "looks only at length scores 1.0. Read it next to the confounds below and the alignment with people.",
             f"- **preference strength**: the judge's order-averaged choice between two candidates is on average "
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
    lines += confound_section(sp["confounds"], sp["n_prompts"] > 1)
    if pr:
        lines += pairs_section(pr)
    if sp["n_prompts"] > 1:
        lines += ["", f"Per prompt ({sp['n_prompts']} prompts; consistency mean {number(rel.get('consistency'))}, worst "
                  f"{number(rel.get('min'))} for {rel.get('worst_prompt')}):", "",
                  "| prompt | candidates | mode | comparisons | consistency | top / uniform | position bias | "
                  "ρ length | ρ logprob | R² | controlled strength |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {r['prompt'][:60]} | {r['n_candidates']} | {r['mode']} | {r['judge_calls']} | "
                  f"{number(r['consistency'])} | {number(r['top_over_uniform'], '.2f')} | {number(r['position_bias'])} | "
                  f"{signed(r.get('spearman_length'))} | {signed(r.get('spearman_logprob'))} | "
                  f"{number(r.get('confound_r2'), '.2f')} | {number(r.get('controlled_strength'), '.4f')} |"
                  for r in sp["per_prompt"]]
    lines += [f"- warning: {w}" for w in sp["warnings"]]
    return lines + [""]


def dpo_section(ft: finetune.Summary | None) -> list[str]:
    """Held-out DPO evidence: TRL's eval loss over training, and the held-out pairs ranked right, base vs tuned."""
    if not ft:
        return []
    distinct = ft["distinct_test_texts"]
    lines = ["## Held-out DPO evidence", "",
             f"{ft['train_pairs']} train pairs, {ft['optimizer_steps']} optimiser steps; on the {ft['test_pairs']} held-out "
             f"pairs ({distinct['chosen']} distinct chosen and {distinct['rejected']} distinct rejected "
             f"texts) the final DPO loss is {number(ft['final_eval_loss'], '.4f')} and the implicit-reward accuracy "
             f"{number(ft['final_eval_reward_accuracy'], '.2f')} (the `eval_log` split has the curve).", "",
             "| held-out pairs ranked right by log-probability | base | tuned |", "| --- | --- | --- |"]
    lines += [f"| {label} | " + " | ".join(number(ft[f"{tag}_test_accuracy{key}"], ".2f") for tag in ("base", "tuned"))
              + " |" for label, key in (("per pair", ""), ("per distinct chosen text", "_per_chosen_text"),
                                 ("per distinct rejected text", "_per_rejected_text"))]
    if ft["base_already_right"]:
        lines += ["", "- warning: the base model already ranks every held-out chosen answer above its rejected one: at "
                  "the pair level these pairs add nothing it lacked, and held-out accuracy cannot show learning"]
    return lines + [""]


def confound_section(c: dict | None, pooled: bool) -> list[str]:
    """What the judge's preference tracks besides quality, and the preference left when that is held fixed."""
    if not c:
        return []
    from pipeline.confounds import FEATURE_MEANING

    ex, ctrl = c["explained"] or {}, c["controlled"]
    where = "mean within-prompt Spearman, 95% t interval over prompts" if pooled else "Spearman, 95% CI (Fisher z)"
    lines = ["", "### What the preference tracks besides quality", "",
             f"Each confound against the score ({where}); R² = the share of the judge's strengths (GLM on the "
             "comparisons) that the confounds predict together" + (", within prompts" if pooled else "") + ":", "",
             "| confound | what | ρ with the score [95% CI] |", "| --- | --- | --- |"]
    lines += [f"| {k} | {FEATURE_MEANING.get(k, 'format feature')} | {signed(f['spearman'])} [{number(f['ci_low'])}, "
              f"{number(f['ci_high'])}] |" for k, f in c["features"].items()]
    greedy = c.get("greedy_rank_mean") if pooled else c.get("greedy_rank")
    lines += ["", f"- confounds explain **R² = {number(ex.get('r2'), '.2f')}** (adjusted {number(ex.get('r2_adjusted'), '.2f')}, "
              f"{ex.get('features', 0)} confounds: {', '.join(ex.get('names') or [])}); greedy answer's rank "
              f"{'(mean over prompts) ' if pooled else ''}by the score: {number(greedy, '.1f' if pooled else 'd')}"]
    raw = c["raw_strength"] or {}
    if pooled:
        raw = {"mean_abs_w_minus_half": raw.get("mean"), "ci_low": raw.get("ci_low"), "ci_high": raw.get("ci_high")}
    if not ctrl:
        return lines + ["- no controlled score (confounds.control is empty or the candidates are too few)"]
    st = ctrl["strength"]
    if pooled:
        st = {"mean_abs_w_minus_half": st["mean"], "ci_low": st["ci_low"], "ci_high": st["ci_high"]}
    cons = ctrl["consistency"] or {}
    from pipeline.confounds import controlled_for

    lines += [f"- **controlled preference** (holding {controlled_for(ctrl)} fixed: the strengths minus what those "
              "confounds predict): strength mean |W − ½| "
              f"**{number(st['mean_abs_w_minus_half'], '.4f')}** [{number(st['ci_low'], '.4f')}, {number(st['ci_high'], '.4f')}] "
              f"against {number(raw.get('mean_abs_w_minus_half'), '.4f')} [{number(raw.get('ci_low'), '.4f')}, "
              f"{number(raw.get('ci_high'), '.4f')}] raw (both corrected for measurement noise); consistency "
              f"{number(cons.get('mean') if pooled else cons.get('consistency'), '.3f')}"
              + (f"; a preference is left (Wald p < 0.05) in {wald_prompts(ctrl)}"
                 if pooled else f"; Wald test of no preference left: p = {number(ctrl['strength']['p'], '.3g')}; "
                 f"greedy answer's rank by it: {number(ctrl['greedy_rank'], 'd')}")
              + f"; all confounds together still explain R² = {number((ctrl.get('explained_by_all') or {}).get('r2'), '.2f')} "
              "of it (0 for the controlled ones by construction)"]
    if not pooled:
        lines += [f"- per SD of {k} (the other controlled confounds held fixed), the judge's log-strength moves "
                  f"{b['per_sd']:+.3f} (SE {b['se']:.3f} over candidates, p = {b['p']:.3g})" for k, b in ctrl["beta"].items()]
    return lines


def pairs_section(pr: preferences.Summary) -> list[str]:
    """What the DPO pairs rest on and what they teach besides the score."""
    from pipeline.stages.preferences import gap_z_basis, left_out_line

    k = pr["kept_pairs"]
    ranked = f"`{pr['score_column']}`" + (f" (holding {', '.join(pr['control_features'])} fixed)" if pr["control"] else "")
    lines = ["", f"- DPO pairs, ranked by {ranked}: **{pr['train_pairs']} kept** of {pr['pairs_measured']} measured (the "
             f"unfiltered selection had {pr['unfiltered_pairs']}); the judge's own order-averaged choice inverts "
             f"{number(pr['inverted_direct_unfiltered'], '.2f')} of the unfiltered pairs (a kept pair needs W > 0.5)"
             + (f"; the raw exact score orders {pr['inverted_exact_kept']:.2f} of the kept pairs the other way"
                if pr["inverted_exact_kept"] is not None else ""),
             "- confidence of kept pairs (W, 0.5 = a coin flip"
             + ("; the controlled W, at zero confound difference: the raw measured W is `raw_confidence`"
                if pr["control"] else "") + f"): {pr['confidence_min']:.3f}–"
             f"{pr['confidence_max']:.3f}, mean {pr['confidence_mean']:.3f} (unfiltered mean "
             f"{number(pr['confidence_unfiltered_mean'])}); strength gap median {pr['gap_z_median']:.1f} and min "
             f"{pr['gap_z_min']:.1f} standard errors (GLM: against the disagreement between the judge's own readings); "
             f"{gap_z_basis(pr)}"]
    if pr.get("prompts_without_preference_left"):
        lines.append(f"- {left_out_line(pr)}")
    if k:
        lines.append(f"- what the kept pairs teach besides the score: chosen is the **shorter in {k['chosen_shorter']:.0%}** "
                     f"({k['chosen_chars_mean']:.0f} vs {k['rejected_chars_mean']:.0f} characters) and the likelier "
                     f"under the policy in {number(k.get('chosen_likelier'), '.0%')} (summed log-prob "
                     f"{number(k.get('chosen_logprob_mean'), '.1f')} vs {number(k.get('rejected_logprob_mean'), '.1f')}); "
                     f"{k['distinct_chosen']} distinct chosen and {k['distinct_rejected']} distinct rejected texts")
    return lines + [f"- warning: {w}" for w in pr["warnings"]]


def publish_report(artifact, output_dir: str) -> None:
    """OUTPUT_DIR/report.md: the evaluate artifact's report with its image links made relative to OUTPUT_DIR."""
    src = artifact.path / "report.md"
    if not src.is_file():
        return
    rel = artifact.path.relative_to(Path(output_dir)) if artifact.path.is_relative_to(output_dir) else artifact.path
    text = re.sub(r"!\[([^\]]*)\]\(([^)/]+)\)", lambda m: f"![{m.group(1)}]({rel}/{m.group(2)})", src.read_text())
    (Path(output_dir) / "report.md").write_text(text)


def wald_prompts(ctrl: dict) -> str:
    """'40% of 10 prompts' (tested ones), with those that had no test (a noise-free judge) named apart."""
    tested = ctrl["prompts"] - ctrl.get("wald_untested", 0)
    out = f"{number(ctrl['wald_p_below_05'], '.0%')} of {tested} prompts"
    return out + (f" ({ctrl['wald_untested']} without a test: the judge never disagreed with the fit)"
                  if ctrl.get("wald_untested") else "")
