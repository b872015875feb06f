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
    from pipeline.artifacts import Run
    from pipeline.report import publish_report
    from pipeline.stages import evaluate, finetune, preferences, sample_space, spmcmc

    with Run(cfg) as run:
        space = run.stage(sample_space)
        chains = run.stage(spmcmc, sample_space=space)
        prefs = run.stage(preferences, spmcmc=chains)
        tuned = run.stage(finetune, preferences=prefs)
        report = run.stage(evaluate, sample_space=space, spmcmc=chains, preferences=prefs, finetune=tuned)
        if report.complete and parallel.is_main():
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
