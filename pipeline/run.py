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
    from pipeline import parallel, rounds
    from pipeline.artifacts import Run
    from pipeline.prompts import check_lengths
    from pipeline.report import publish_report
    from pipeline.stages import evaluate, finetune, preferences, sample_space, spmcmc
    from pipeline.stages.preferences import NoPairs

    check_lengths(cfg)  # a prompt too long for the model or a setting stops here, before any work
    with Run(cfg) as run:
        loop, report = rounds.Loop(cfg), None  # which artifacts each round's stages read (pipeline/rounds.py)
        for r in range(1, cfg.rounds.count + 1):
            space = run.stage(sample_space, r, **loop.sample_space())
            chains = run.stage(spmcmc, r, **loop.spmcmc(space))
            try:
                prefs = run.stage(preferences, r, **loop.preferences(chains))
            except NoPairs as nothing:
                if r == 1:
                    raise
                print(f"[pipeline] stopping after round {r - 1}: {rounds.stop_reason(r, nothing, space, chains, cfg)}",
                      flush=True)
                break
            tuned = run.stage(finetune, r, **loop.finetune(prefs))
            report = run.stage(evaluate, r, **loop.evaluate(space, chains, prefs, tuned))
            loop.finished(chains, prefs, tuned, report)
        if report is not None and report.complete and parallel.is_main():
            publish_report(report, cfg.output_dir)
            print(f"[pipeline] report: {cfg.output_dir}/report.md", flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(help_text())
        return 0
    cfg = None
    try:
        cfg = load_config(argv)
        pipeline(cfg)
    except UserError as e:
        close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        full = disk_full(e)
        if full is None:
            raise
        close_progress_bars()
        where = Path(full).parent if full else (cfg.output_dir if cfg is not None else "the output folder")
        print(f"error: no space left on the device that holds {where}: free space (or set output_dir= on a larger "
              "disk, copying this one there) and run the same command again; finished work is kept", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def close_progress_bars() -> None:
    """Bars a failed stage left open (the Trainer's, a generation loop's) are closed first, so that the error line is
    the last line, not one a bar redraws over at exit."""
    if "tqdm" in sys.modules:
        from tqdm import tqdm

        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()


def disk_full(e: BaseException) -> str | None:
    """The file being written when the disk filled ('' where the error does not say), or None when `e` is not a full
    disk. Writers wrap it differently: OSError ENOSPC, torch's "file write failed", the tokenizers' "os error 28"."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return str(e.filename or "")
        if "No space left on device" in str(e) or "os error 28" in str(e):
            return ""
        e = e.__cause__ or e.__context__
    return None


if __name__ == "__main__":
    sys.exit(main())
