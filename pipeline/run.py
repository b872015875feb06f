"""The spMCMC pipeline, top to bottom: load the config, then the stages in order.

    accelerate launch pipeline/run.py recipe=jokes_dpo [key.sub=value ...]
    python pipeline/run.py --help          every setting with its default

Each stage is skipped when its artifact for these settings is complete, resumes when a previous
run was killed inside it, and is computed otherwise (see pipeline/artifacts.py).
"""

import sys
from pathlib import Path

if __package__ in (None, ""):  # run by path: the repo root, not pipeline/, goes first on sys.path
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from pipeline.config import UserError, help_text, load_config  # noqa: E402


def pipeline(cfg) -> None:
    from pipeline import parallel
    from pipeline.artifacts import NoPairs, Run
    from pipeline.judge import judge_is_policy
    from pipeline.prompts import check_lengths
    from pipeline.report import publish_report, stop_reason
    from pipeline.stages import evaluate, finetune, preferences, sample_space, spmcmc

    check_lengths(cfg)  # a prompt too long for the model or a setting stops here, before any work
    with Run(cfg) as run:
        report, previous, earlier = None, {}, []  # round r-1's artifacts; every round's pairs
        for r in range(1, cfg.rounds.count + 1):
            policy = {"policy": previous["finetune"]} if previous else {}  # round 1: the base model
            self_play = previous and cfg.rounds.judge == "policy" and judge_is_policy(cfg.judge)  # else a fixed judge
            judge = {"judge": previous["finetune"]} if self_play else {}
            space = run.stage(sample_space, r, **policy)
            chains = run.stage(spmcmc, r, sample_space=space, **judge, **({"earlier": previous["spmcmc"]} if previous else {}))
            try:
                prefs = run.stage(preferences, r, spmcmc=chains, **judge)
            except NoPairs as nothing:
                if r == 1:
                    raise
                print(f"[pipeline] stopping after round {r - 1}: {stop_reason(r, nothing, space, chains, cfg)}", flush=True)
                break
            init = ({"init": previous["finetune"]} if previous and cfg.rounds.init == "previous"
                    else {f"earlier_{k}": p for k, p in enumerate(earlier, start=1)})
            tuned = run.stage(finetune, r, preferences=prefs, **init)
            report = run.stage(evaluate, r, sample_space=space, spmcmc=chains, preferences=prefs, finetune=tuned,
                               **({"previous": previous["finetune"], "history": previous["evaluate"]} if previous else {}))
            earlier.append(prefs)
            previous = {"finetune": tuned, "spmcmc": chains, "evaluate": report}
        if report is not None and report.complete and parallel.is_main():
            publish_report(report, cfg.output_dir)
            print(f"[pipeline] report: {cfg.output_dir}/report.md", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    try:
        pipeline(load_config(argv))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
