"""Console commands.

    spmcmc inspect OUTPUT_DIR [STAGE]                 stages, state, rows, columns, first rows
    spmcmc annotate export OUTPUT_DIR --out S.csv     a shuffled rating sheet of the sample space
    spmcmc annotate import S1.csv S2.csv --out R.csv  filled sheets -> evaluate.human_ratings=R.csv
"""

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


def _stage_path(output_dir: str, stage: str) -> Path:
    manifest = Path(output_dir) / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{output_dir} has no manifest.json: not a pipeline output_dir")
    entry = json.loads(manifest.read_text())["stages"].get(stage)
    if not entry or not entry["complete"]:
        raise UserError(f"{output_dir} has no complete {stage} stage; run it first")
    return Path(entry["path"])


def annotate_export(output_dir: str, out: str, seed: int) -> None:
    """A shuffled rating sheet of the sample space: one copy per rater, who fills in `rating`."""
    import numpy as np
    import pandas as pd
    from datasets import load_from_disk

    space = load_from_disk(str(_stage_path(output_dir, "sample_space") / "dataset"))
    order = np.random.default_rng(seed).permutation(space.num_rows)
    sheet = pd.DataFrame({"id": np.array(space["id"])[order], "text": np.array(space["text"], dtype=object)[order],
                          "rating": ""})
    sheet.to_csv(out, index=False)
    print(f"wrote {len(sheet)} items to {out}; each rater fills `rating` (e.g. 1-7) in a copy of it")


def annotate_import(sheets: list[str], out: str) -> None:
    """Filled sheets (rater, id, text, rating) -> a long ratings file for evaluate.human_ratings."""
    import pandas as pd

    from pipeline.tables import read_table

    frames = []
    for path in sheets:
        sheet = read_table(path, ["id", "text", "rating"], "rating sheet")
        rater = sheet["rater"] if "rater" in sheet.columns else Path(path).stem
        frames.append(pd.DataFrame({"item": sheet["id"].astype(str), "text": sheet["text"], "rater": rater,
                                    "rating": pd.to_numeric(sheet["rating"], errors="coerce")}))
        bad = sheet["rating"][frames[-1]["rating"].isna() & sheet["rating"].notna()]
        if len(bad):
            raise UserError(f"{path}: rating {bad.iloc[0]!r} is not a number")
    long = pd.concat(frames).dropna(subset=["rating"])
    if long.empty:
        raise UserError("the sheets hold no ratings")
    writers = {".csv": lambda f: long.to_csv(f, index=False), ".parquet": long.to_parquet,
               ".jsonl": lambda f: long.to_json(f, orient="records", lines=True)}
    suffix = Path(out).suffix.lower()
    if suffix not in writers:
        raise UserError(f"--out must end in .csv, .jsonl or .parquet, not {suffix!r}")
    writers[suffix](out)
    print(f"wrote {len(long)} ratings of {long['item'].nunique()} items by {long['rater'].nunique()} raters to {out}; "
          f"use it as evaluate.human_ratings={out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spmcmc", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="stages of a run: state, rows, columns, first rows")
    p.add_argument("output_dir")
    p.add_argument("stage", nargs="?")
    p.add_argument("--rows", type=int, default=5)
    a = sub.add_parser("annotate", help="rating sheets for a human study of the sample space")
    asub = a.add_subparsers(dest="action", required=True)
    ex = asub.add_parser("export", help="write a shuffled rating sheet (CSV) of OUTPUT_DIR's sample space")
    ex.add_argument("output_dir")
    ex.add_argument("--out", default="rating_sheet.csv")
    ex.add_argument("--seed", type=int, default=0)
    im = asub.add_parser("import", help="filled sheets -> a ratings file evaluate.human_ratings accepts")
    im.add_argument("sheets", nargs="+")
    im.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            inspect_run(args.output_dir, args.stage, args.rows)
        elif args.action == "export":
            annotate_export(args.output_dir, args.out, args.seed)
        else:
            annotate_import(args.sheets, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
