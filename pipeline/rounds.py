"""Self-improvement rounds: which artifacts each round's stages read, when the rounds stop, and the table of
every round so far.

Round 1 is the single-round pipeline. Round r > 1 reads round r-1's artifacts, each under one name for its role:

    sample_space  policy           round r-1's finetune: its adapter writes the answers
    spmcmc        judge            round r-1's finetune, when the policy judges (rounds.judge=policy and judge.kind=model
                                   without judge.model); else the fixed judge, and no input
                  previous_spmcmc  round r-1's spmcmc: its pair cache is reused where the judge and texts are the same
    preferences   judge            as for spmcmc
    finetune      init             round r-1's finetune, trained further (rounds.init=previous), or
                  earlier_preferences_1, ...  every earlier round's preferences: a fresh adapter on all pairs (init=base)
    evaluate      previous         round r-1's finetune: the opponent of the win rate against the previous round
                  history          round r-1's evaluate: the rounds table so far
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.config import Config, RoundsConfig
from pipeline.formatting import number

if TYPE_CHECKING:  # the summaries' shapes, owned by the stages that write them
    from pipeline.stages import preferences, sample_space, spmcmc

COLUMNS = ("round", "consistency", "pairs_kept", "pairs_dropped", "entropy", "diversity", "diversity_min",
           *(f"{w}{s}" for w in ("win_vs_base", "win_vs_previous", "win_vs_base_tuned_judge", "headroom_share")
             for s in ("", "_low", "_high")), "ceiling", "kl", "tuned_chars", "base_chars")
ALIGNMENT_COLUMNS = ("round", "model", "evaluator", "spearman_r", "ci_low", "ci_high")


class Loop:
    """The inputs of each stage in the current round (see the module docstring); `finished` moves to the next."""

    def __init__(self, cfg: Config):
        from pipeline.judge import judge_is_policy

        self.cfg, self.previous, self.pairs = cfg, {}, []
        self.self_play = cfg.rounds.judge == "policy" and judge_is_policy(cfg.judge)

    def _judge(self) -> dict:
        return {"judge": self.previous["finetune"]} if self.previous and self.self_play else {}

    def sample_space(self) -> dict:
        return {"policy": self.previous["finetune"]} if self.previous else {}

    def spmcmc(self, space) -> dict:
        return {"sample_space": space, **self._judge(),
                **({"previous_spmcmc": self.previous["spmcmc"]} if self.previous else {})}

    def preferences(self, chains) -> dict:
        return {"spmcmc": chains, **self._judge()}

    def finetune(self, prefs) -> dict:
        if self.previous and self.cfg.rounds.init == "previous":
            return {"preferences": prefs, "init": self.previous["finetune"]}
        return {"preferences": prefs, **{f"earlier_preferences_{k}": p for k, p in enumerate(self.pairs, start=1)}}

    def evaluate(self, space, chains, prefs, tuned) -> dict:
        return {"sample_space": space, "spmcmc": chains, "preferences": prefs, "finetune": tuned,
                **({"previous": self.previous["finetune"], "history": self.previous["evaluate"]} if self.previous else {})}

    def finished(self, chains, prefs, tuned, report) -> None:
        self.pairs.append(prefs)
        self.previous = {"finetune": tuned, "spmcmc": chains, "evaluate": report}


def stop_reason(r: int, nothing: Exception, space, chains, cfg: Config) -> str:
    """Why round r yields no pair, read off its figures: no signal left, or sharpened to a point."""
    sp: spmcmc.Summary | None = chains.summary() if chains.complete else None
    ss: sample_space.Summary | None = space.summary() if space.complete else None
    rel = (sp["consistency"] or {}).get("consistency") if sp else None
    entropy = sp["strength"]["entropy"] if sp else None
    diversity = (ss or {}).get("diversity")  # none when nothing was sampled (only_extra)
    rc = cfg.rounds
    if rel is not None and rel < cfg.spmcmc.min_consistency:
        why = f"its judge has no signal left (preference consistency {rel:.2f} < {cfg.spmcmc.min_consistency})"
    elif (entropy is not None and entropy < rc.min_entropy) or (diversity is not None and diversity < rc.min_diversity):
        why = (f"its preferences have sharpened to a point (entropy {number(entropy, '.2f')} of 1, rounds.min_entropy="
               f"{rc.min_entropy}; answer diversity {number(diversity, '.2f')}, rounds.min_diversity={rc.min_diversity})")
    else:
        why = (f"its preferences are measured (consistency {number(rel, '.2f')}) but too flat to pass the filter (entropy "
               f"{number(entropy, '.2f')} of 1): neither sharpened nor lost, just weak")
    return f"round {r} yields no pair that passes the evidence filters; the figures suggest {why}. ({nothing})"


def table(history, sp: spmcmc.Summary | None, pr: preferences.Summary | None, ss: sample_space.Summary | None,
          y: dict | None, metrics: list[dict]) -> tuple[list[dict], list[dict]]:
    """Every round so far (`history`, the previous round's evaluate artifact, carries the earlier ones) with this
    round's figures appended: preference consistency, pairs kept and dropped, entropy of the preference
    distribution (sharpening), the policy's answer diversity (collapse), the tuned policy's win rates with CIs;
    and each evaluator's human alignment per round. sp, pr, ss: this round's spmcmc, preferences and sample_space
    summaries."""
    done = history.load() if history is not None else None
    rows = done["rounds"].to_list() if done is not None else []
    alignment = done["rounds_alignment"].to_list() if done is not None else []
    r = len(rows) + 1
    row = {"round": r, "consistency": (sp["consistency"] or {}).get("consistency") if sp else None,
           "pairs_kept": pr["train_pairs"] if pr else None, "pairs_dropped": pr["pairs_dropped"] if pr else None,
           "entropy": sp["strength"]["entropy"] if sp else None, "diversity": (ss or {}).get("diversity"),
           "diversity_min": (ss or {}).get("diversity_min")}  # none when nothing was sampled (only_extra)
    y = y or {}
    cis = {"win_vs_base": (y.get("win_rate"), *(y.get("win_rate_ci") or [None, None])),
           "headroom_share": (y.get("headroom_share"), *(y.get("headroom_share_ci") or [None, None])),
           **{name: (w.get("mean"), w.get("ci_low"), w.get("ci_high")) for name, w in
              (("win_vs_previous", y.get("win_vs_previous") or {}), ("win_vs_base_tuned_judge",
                                                                     y.get("win_rate_tuned_judge") or {}))}}
    for name, (mean, low, high) in cis.items():
        row.update({name: mean, f"{name}_low": low, f"{name}_high": high})
    row.update({"ceiling": y.get("ceiling"), "kl": y.get("kl"), "tuned_chars": y.get("tuned_chars"),
                "base_chars": y.get("base_chars")})
    alignment += [{"round": r, "model": m["model"], "evaluator": m["evaluator"], "spearman_r": m["spearman_r"],
                   "ci_low": m["spearman_ci_low"], "ci_high": m["spearman_ci_high"]}
                  for m in metrics if m["model"] == "finetuned" or r == 1]
    return rows + [row], alignment


def warnings(rows: list[dict], rc: RoundsConfig) -> list[str]:
    """Collapse, the known failure of iterated self-training: the policy's answers stop differing."""
    d = rows[-1]["diversity"]
    if d is None or d >= rc.min_diversity:
        return []
    first = rows[0]["diversity"]
    return [f"answer diversity {d:.2f} < rounds.min_diversity={rc.min_diversity} in round {rows[-1]['round']} "
            f"(round 1: {number(first, '.2f')}): the policy repeats itself (mode collapse); stop, lower finetune.learning_rate "
            "or num_epochs, or train fresh adapters (rounds.init=base)"]
