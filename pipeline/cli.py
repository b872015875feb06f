"""Console commands: `spmcmc inspect OUTPUT_DIR [STAGE]`, `spmcmc annotate export|import ...`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pipeline.config import UserError


def _show(path: Path, rows: int, width: int = 100) -> None:
    from datasets import DatasetDict, load_from_disk

    ds = load_from_disk(str(path / "dataset"))
    splits = ds.items() if isinstance(ds, DatasetDict) else [("train", ds)]
    for split, part in splits:
        print(f"    [{split}] {part.num_rows} rows; columns: {', '.join(part.column_names)}")
        for row in part.select(range(min(rows, part.num_rows))):
            cells = ", ".join(f"{k}={str(v)[:40]!s}" for k, v in row.items())
            print(f"      {cells[:width]}")


def inspect_run(output_dir: str, stage: str | None, rows: int) -> None:
    root = Path(output_dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{root} has no manifest.json: not a pipeline output_dir")
    stages = json.loads(manifest.read_text())["stages"]
    if stage is not None and stage not in stages:
        raise UserError(f"stage {stage!r} is not in {manifest}; it lists {list(stages)}")
    for name, entry in stages.items():
        if stage is not None and name != stage:
            continue
        state = "complete" if entry["complete"] else "incomplete"
        print(f"{name:13s} {state:10s} {entry['fingerprint']}  {entry['path']}")
        path = Path(entry["path"])
        if entry["complete"]:
            _show(path, rows if stage else min(rows, 3))
            summary = path / "summary.json"
            if stage and summary.is_file():
                print("    summary: " + json.dumps(json.loads(summary.read_text()))[:2000])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spmcmc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="stages of a run: state, rows, columns, first rows")
    p.add_argument("output_dir")
    p.add_argument("stage", nargs="?")
    p.add_argument("--rows", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            inspect_run(args.output_dir, args.stage, args.rows)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
