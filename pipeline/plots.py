"""Every plot the stages write (PNG, next to the artifact; also sent to W&B by the stage)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.formatting import signed


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _column(rows: list[dict], key: str) -> np.ndarray:
    """rows[key] as floats, NaN where a figure is missing (matplotlib leaves a gap)."""
    return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def estimate_plots(workdir: Path, texts: list[str], est: dict, score: str, states: np.ndarray | None) -> list[Path]:
    """estimates.png: every estimate of the preference distribution, candidates sorted by the score, the
    score with its 95% interval; running_frequency.png: the top candidates' running visit share per chain."""
    plt = _pyplot()
    value, se = est[score]
    order = np.argsort(-value, kind="stable")
    x = np.arange(len(texts))
    fig, ax = plt.subplots(figsize=(max(6, len(texts) * 0.12), 4))
    ax.bar(x, value[order], color="tab:blue", alpha=0.5, label=f"{score} (the score)")
    ax.errorbar(x, value[order], yerr=1.96 * np.nan_to_num(se[order]), fmt="none", color="tab:blue", lw=0.8)
    for (name, (v, _)), style in zip(((k, e) for k, e in est.items() if k != score), ("k.", "r+", "gx", "m1")):
        ax.plot(x, v[order], style, label=name)
    ax.axhline(1 / len(texts), color="grey", ls=":", lw=0.8, label="uniform")
    ax.set_xlabel("candidate (sorted by the score)")
    ax.set_ylabel("preference probability")
    ax.set_title("spMCMC estimates of the model's preference distribution (bars: score ± 1.96 SE)")
    ax.legend(fontsize=7)
    paths = [_save(fig, workdir / "estimates.png")]
    if states is None:
        return paths
    top = order[:5]
    fig, axes = plt.subplots(1, len(top), figsize=(3 * len(top), 2.8), sharey=True, squeeze=False)
    steps = np.arange(1, states.shape[1] + 1)
    for ax, k in zip(axes[0], top):
        for c in range(states.shape[0]):
            ax.plot(steps, np.cumsum(states[c] == k) / steps, lw=0.8)
        ax.axhline(value[k], color="k", ls="--", lw=0.8)
        ax.set_title(f"id {k}: {texts[k][:24]}…", fontsize=7)
        ax.set_xlabel("step")
    axes[0][0].set_ylabel("running frequency")
    fig.suptitle(f"running visit frequency of the top candidates, one line per chain (dashed: {score})", fontsize=9)
    paths.append(_save(fig, workdir / "running_frequency.png"))
    return paths


LABELLED_PROMPTS = 60  # past this a bar and a label per prompt are unreadable, and at 10,000 prompts the figure
# would be wider than a PNG can be (2^16 pixels): one point per prompt on a fixed width instead


def prompt_plots(workdir: Path, rows: list[dict]) -> list[Path]:
    """prompts.png: per prompt, the preference consistency and how far its top candidate stands above uniform."""
    plt = _pyplot()
    labelled = len(rows) <= LABELLED_PROMPTS
    fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.35 * len(rows)) if labelled else 10, 5), sharex=True)
    x = np.arange(len(rows))
    for ax, key, colour in ((axes[0], "consistency", "tab:blue"), (axes[1], "top_over_uniform", "tab:orange")):
        if labelled:
            ax.bar(x, _column(rows, key), color=colour)
        else:
            ax.plot(x, _column(rows, key), ".", ms=2, color=colour)
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8)
    axes[0].set_ylabel("preference consistency")
    axes[1].axhline(1.0, color="grey", ls=":", lw=0.8)
    axes[1].set_ylabel("top score / uniform")
    if labelled:
        axes[1].set_xticks(x, [r["prompt"][:28] for r in rows], rotation=60, ha="right", fontsize=6)
    else:
        axes[1].set_xlabel(f"prompt (the prompt file's order; {len(rows)} prompts, the table has them by name)")
    fig.suptitle("spMCMC per prompt: were the model's preferences measured, and how strong are they?", fontsize=9)
    return [_save(fig, workdir / "prompts.png")]


def confound_plot(workdir: Path, feats: dict, score: np.ndarray, controlled: np.ndarray | None) -> Path:
    """confounds.png: the score against log length and against the summed log-probability, and the controlled
    score against the raw one (what control changed)."""
    plt = _pyplot()
    panels = [(k, label) for k, label in (("length", "log characters"), ("logprob", "summed log-prob under the policy"))
              if k in feats]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.4 * (len(panels) + 1), 3.2), squeeze=False)
    for ax, (k, label) in zip(axes[0], panels):
        ax.scatter(feats[k], score, s=10)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("score", fontsize=8)
    ax = axes[0][-1]
    if controlled is not None:
        ax.scatter(score, controlled, s=10, c=feats["length"], cmap="viridis")
        ax.set_xlabel("score (raw)", fontsize=8)
        ax.set_ylabel("controlled score (colour: log length)", fontsize=8)
    fig.suptitle("what the judge's preference tracks besides quality", fontsize=9)
    return _save(fig, workdir / "confounds.png")


def prompt_confound_plot(workdir: Path, features: dict) -> Path:
    """confounds.png for a prompt set: each confound's mean within-prompt Spearman with the score, 95% t interval."""
    plt = _pyplot()
    names = [k for k, f in features.items() if f["spearman"] is not None]
    rows = [features[k] for k in names]
    y = _column(rows, "spearman")
    lo, hi = _column(rows, "ci_low"), _column(rows, "ci_high")
    fig, ax = plt.subplots(figsize=(max(4, 0.9 * len(names)), 3.2))
    ax.bar(np.arange(len(names)), y, color="tab:purple", alpha=0.7)
    ax.errorbar(np.arange(len(names)), y, yerr=[np.nan_to_num(y - lo), np.nan_to_num(hi - y)], fmt="none", color="k")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(np.arange(len(names)), names, fontsize=8)
    ax.set_ylabel("Spearman with the score (mean over prompts)", fontsize=8)
    return _save(fig, workdir / "confounds.png")


def rounds_plot(workdir: Path, rounds: list[dict]) -> Path:
    """rounds.png: per round, the policy's answer diversity, the preference entropy and consistency, and
    the tuned policy's win rates (base judge) with their 95% intervals."""
    plt = _pyplot()
    r = [row["round"] for row in rounds]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, style in (("diversity", "o-"), ("entropy", "s-"), ("consistency", "^-")):
        a.plot(r, _column(rounds, key), style, label=key)
    a.set_xlabel("round")
    a.set_ylim(0, 1.05)
    a.legend(fontsize=7)
    a.set_title("collapse and sharpening", fontsize=9)
    for key, color in (("win_vs_base", "tab:blue"), ("win_vs_previous", "tab:orange")):
        y = _column(rounds, key)
        b.errorbar(r, y, yerr=[y - _column(rounds, f"{key}_low"), _column(rounds, f"{key}_high") - y], fmt="o-", color=color,
                   label=key.replace("_", " "), capsize=3)
    b.axhline(0.5, color="grey", ls="--", lw=0.8)
    b.set_xlabel("round")
    b.set_ylabel("tuned policy's win rate (held-out prompts)")
    b.legend(fontsize=7)
    return _save(fig, workdir / "rounds.png")


def evaluation_plots(workdir: Path, human, scores: dict, metrics: list[dict], ceiling: dict | None) -> list[Path]:
    """scatter.png (model score against human mean, per model and evaluator) and correlations.png."""
    plt = _pyplot()
    evaluators = list(scores["base"])
    fig, axes = plt.subplots(len(scores), len(evaluators), figsize=(2.6 * len(evaluators), 2.6 * len(scores)),
                             squeeze=False, sharey=True)  # one y axis, the human mean: its tick labels drawn once
    m = {(r["evaluator"], r["model"]): r for r in metrics}
    for row, (model, per) in enumerate(scores.items()):
        for col, e in enumerate(evaluators):
            ax = axes[row][col]
            ax.scatter(per[e], human, s=10)
            ax.set_title(f"{model}: {e}\nr={signed(m[e, model]['pearson_r'])}", fontsize=8)
            ax.set_xlabel("model score", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[row][0].set_ylabel("human mean rating", fontsize=7)
    paths = [_save(fig, workdir / "scatter.png")]

    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(evaluators)), 3.5))
    width = 0.8 / len(scores)
    for k, model in enumerate(scores):
        rs = [m[e, model] for e in evaluators]
        y, lo, hi = (_column(rs, k) for k in ("spearman_r", "spearman_ci_low", "spearman_ci_high"))
        x = np.arange(len(evaluators)) + k * width
        ax.bar(x, y, width, label=model, alpha=0.7)
        ax.errorbar(x, y, yerr=[y - lo, hi - y], fmt="none", color="k", lw=0.8)
    if ceiling:
        ax.axhline(ceiling["spearman_brown"], color="grey", ls="--", lw=0.8, label="human noise ceiling")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(np.arange(len(evaluators)) + width * (len(scores) - 1) / 2, evaluators, rotation=30, fontsize=7)
    ax.set_ylabel("Spearman ρ with human mean (95% CI)")
    ax.legend(fontsize=7)
    paths.append(_save(fig, workdir / "correlations.png"))
    return paths


def prompt_set_plot(workdir: Path, rows: list[dict], pooled: list[dict]) -> Path:
    """prompt_correlations.png: each prompt's Spearman ρ per evaluator (dots, base and tuned side by side), the
    mean over prompts with its 95% t interval (bar), and each prompt's human noise ceiling (grey ticks)."""
    plt = _pyplot()
    keys = list(dict.fromkeys((r["evaluator"], r["model"]) for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(keys)), 4))
    rng = np.random.default_rng(0)  # horizontal jitter only
    ceilings = {r["prompt_id"]: r["ceiling"] for r in rows if r["ceiling"] is not None}
    for x, key in enumerate(keys):
        ys = _column([r for r in rows if (r["evaluator"], r["model"]) == key], "spearman")
        ax.scatter(x + rng.uniform(-0.15, 0.15, len(ys)), ys, s=9, alpha=0.6,
                   color="C1" if key[1] == "finetuned" else "C0")
        p = next(r for r in pooled if (r["evaluator"], r["model"]) == key)
        if p["spearman_r"] is not None and p["spearman_ci_low"] is not None:
            ax.errorbar(x + 0.3, p["spearman_r"], yerr=[[p["spearman_r"] - p["spearman_ci_low"]],
                                                       [p["spearman_ci_high"] - p["spearman_r"]]],
                        fmt="s", color="k", ms=4, lw=1)
    if ceilings:
        ax.axhline(float(np.mean(list(ceilings.values()))), color="grey", ls="--", lw=0.8,
                   label="mean human noise ceiling")
        ax.legend(fontsize=7)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(range(len(keys)), [f"{e}\n({m})" for e, m in keys], rotation=30, fontsize=7)
    ax.set_ylabel("within-prompt Spearman ρ with people\n(dots: prompts; square: mean, 95% t CI)", fontsize=8)
    return _save(fig, workdir / "prompt_correlations.png")
