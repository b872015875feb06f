"""DPO dose-response on a planted preference: learning rate x epochs x beta -> win rate, headroom share, KL,
answer length and diversity, one row per setting, every run in one output dir (sample_space, spmcmc and
preferences are computed once and reused; each row re-runs finetune and evaluate).

    python scripts/dose_response.py                          # recipe=planted_topics, the default grid
    python scripts/dose_response.py --recipe joke_topics --grid 5e-5:2:0.1 2e-4:2:0.1

Prints a markdown table (docs/PERFORMANCE.md records it with the command, machine and date).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_GRID = ("5e-5:2:0.1", "2e-4:2:0.1", "5e-4:2:0.1", "1e-3:2:0.1", "2e-3:2:0.1", "5e-4:4:0.1", "5e-4:2:0.5")


def run(recipe: str, out: str, lr: str, epochs: str, beta: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "pipeline/run.py", f"recipe={recipe}", f"output_dir={out}", "wandb.mode=disabled",
           f"finetune.learning_rate={lr}", f"finetune.num_epochs={epochs}", f"finetune.beta={beta}", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        fail(errors[-1][len("error: "):] if errors else f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    manifest = json.loads((Path(out) / "manifest.json").read_text())
    return json.loads((Path(out) / manifest["stages"]["evaluate"]["path"] / "summary.json").read_text())


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_grid(items: list[str]) -> list[tuple[str, str, str]]:
    """Every --grid item as (lr, epochs, beta), checked before any run: a bad item stops here in one line, not
    after the items before it have trained."""
    grid = []
    for item in items:
        parts = item.split(":")
        try:
            ok = len(parts) == 3 and float(parts[0]) > 0 and float(parts[1]) > 0 and float(parts[2]) > 0
        except ValueError:
            ok = False
        if not ok:
            fail(f"--grid item {item!r} must be lr:epochs:beta, three positive numbers, e.g. 5e-4:2:0.1")
        grid.append(tuple(parts))
    return grid


def cell(v, spec=".3f") -> str:
    return "n/a" if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="planted_topics")
    ap.add_argument("--out", default="runs/dose_response")
    ap.add_argument("--grid", nargs="+", default=list(DEFAULT_GRID), help="lr:epochs:beta items")
    ap.add_argument("extra", nargs="*", help="more key=value settings for every run")
    args = ap.parse_args()
    args.out = str(Path(args.out).expanduser().resolve())  # the runs start in the repo; --out is read from here
    grid = parse_grid(args.grid)
    print("| learning rate | epochs | beta | optimiser steps | win rate [95% CI] | ceiling (BoN-8) | headroom share "
          "[95% CI] | KL (nats) | length tuned / base | distinct answers |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for lr, epochs, beta in grid:
        s = run(args.recipe, args.out, lr, epochs, beta, args.extra)
        y = s["yardstick"]
        steps = s["upstream"].get("finetune", {}).get("optimizer_steps")
        print(f"| {lr} | {epochs} | {beta} | {steps} | {cell(y['win_rate'])} [{cell(y['win_rate_ci'][0])}, "
              f"{cell(y['win_rate_ci'][1])}] | {cell(y['ceiling'])} | {cell(y['headroom_share'], '.2f')} "
              f"[{cell(y['headroom_share_ci'][0], '.2f')}, {cell(y['headroom_share_ci'][1], '.2f')}] | "
              f"{cell(y['kl'], '.2f')} | {y['tuned_chars']:.0f} / {y['base_chars']:.0f} | "
              f"{cell(y.get('tuned_diversity'), '.2f')} |", flush=True)


if __name__ == "__main__":
    main()
