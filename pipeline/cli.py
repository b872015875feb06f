"""Console commands.

    spmcmc run recipe=NAME [key.sub=value ...]        the pipeline (as python pipeline/run.py; --help lists settings)
    spmcmc inspect OUTPUT_DIR [STAGE]                 stages, state, rows, columns, first rows
    spmcmc annotate export OUTPUT_DIR --out S.csv     a shuffled rating sheet of the sample space
    spmcmc annotate import S1.csv S2.csv --out R.csv  filled sheets -> evaluate.human_ratings=R.csv
    spmcmc annotate export OUTPUT_DIR --winrate --out W.csv
                                                      blind base-vs-tuned sheets of the held-out prompts
                                                      (and W.key.csv, which raters must not see)
    spmcmc annotate import --winrate --key W.key.csv W1.csv W2.csv --out human_winrate.json
                                                      filled choices -> the human win rate of the tuned policy
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
    from pipeline.artifacts import dataset_intact, read_manifest

    stages = read_manifest(output_dir)["stages"]
    if stage is not None and stage not in stages:
        raise UserError(f"stage {stage!r} is not in {output_dir}/manifest.json; it lists {list(stages)}")
    for name, entry in stages.items():
        if stage is not None and name != stage:
            continue
        path = Path(entry["path"])
        intact = entry["complete"] and dataset_intact(path / "dataset")
        state = "complete" if intact else "damaged" if entry["complete"] else "incomplete"
        print(f"{name:13s} {state:10s} {entry['fingerprint']}  {entry['path']}")
        if entry["complete"] and not intact:
            print("    its dataset files are missing or damaged: the pipeline command recomputes it")
        if intact:
            _show(path, rows if stage else min(rows, 3))
            summary = path / "summary.json"
            if stage and summary.is_file():
                print("    summary: " + json.dumps(json.loads(summary.read_text()))[:2000])


def _stage_path(output_dir: str, stage: str) -> Path:
    from pipeline.artifacts import dataset_intact, read_manifest

    entry = read_manifest(output_dir)["stages"].get(stage)
    if not entry or not entry["complete"]:
        raise UserError(f"{output_dir} has no complete {stage} stage; run it first")
    if not dataset_intact(Path(entry["path"]) / "dataset"):
        raise UserError(f"{output_dir}'s {stage} stage has missing or damaged dataset files; run the pipeline command "
                        "again to recompute it")
    return Path(entry["path"])


def _out_path(out: str, suffixes: tuple[str, ...]) -> Path:
    """--out: a writable file in an existing folder, with a known suffix (checked before any work)."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in suffixes:
        raise UserError(f"--out must end in {', '.join(suffixes)}, not {path.suffix or 'nothing'!r}")
    if not path.parent.is_dir():
        raise UserError(f"--out {out}: folder {str(path.parent)!r} does not exist; create it first")
    if path.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name")
    return path


def annotate_export(output_dir: str, out: str, seed: int) -> None:
    """A shuffled rating sheet of the sample space: one copy per rater, who fills in `rating`."""
    import numpy as np
    import pandas as pd
    from datasets import load_from_disk

    path = _out_path(out, (".csv",))
    space = load_from_disk(str(_stage_path(output_dir, "sample_space") / "dataset"))
    order = np.random.default_rng(seed).permutation(space.num_rows)
    sheet = pd.DataFrame({"id": np.array(space["id"])[order], "text": np.array(space["text"], dtype=object)[order],
                          "rating": ""})
    sheet.to_csv(path, index=False)
    print(f"wrote {len(sheet)} items to {out}; each rater fills `rating` (e.g. 1-7) in a copy of it")


def annotate_import(sheets: list[str], out: str) -> None:
    """Filled sheets (rater, id, text, rating) -> a long ratings file for evaluate.human_ratings."""
    import pandas as pd

    from pipeline.tables import read_table

    target = _out_path(out, (".csv", ".jsonl", ".parquet"))
    twice = [p for k, p in enumerate(sheets) if Path(p).resolve() in {Path(q).resolve() for q in sheets[:k]}]
    if twice:
        raise UserError(f"sheet {twice[0]} is given twice: its ratings would count double")
    frames = []
    for path in sheets:
        sheet = read_table(path, ["id", "text", "rating"], "rating sheet", text=("text", "rating"))
        sheet["rating"] = sheet["rating"].where(sheet["rating"].astype(str).str.strip() != "")  # blank: not rated
        rater = sheet["rater"] if "rater" in sheet.columns else Path(path).stem
        frames.append(pd.DataFrame({"item": sheet["id"].astype(str), "text": sheet["text"], "rater": rater,
                                    "rating": pd.to_numeric(sheet["rating"], errors="coerce")}))
        value = frames[-1]["rating"]
        bad = sheet["rating"][(value.isna() & sheet["rating"].notna()) | value.isin([float("inf"), float("-inf")])]
        if len(bad):
            raise UserError(f"{path}: rating {bad.iloc[0]!r} is not a finite number")
    long = pd.concat(frames).dropna(subset=["rating"])
    if long.empty:
        raise UserError("the sheets hold no ratings")
    dup = long[long.duplicated(["rater", "item"], keep=False)]
    if len(dup):
        rater, item = dup["rater"].iloc[0], dup["item"].iloc[0]
        times = int(((dup["rater"] == rater) & (dup["item"] == item)).sum())
        raise UserError(f"rater {rater!r} rated item {item!r} {times} times; keep one rating per rater and item "
                        "(sheets of different raters need a `rater` column or different file names)")
    writers = {".csv": lambda f: long.to_csv(f, index=False), ".parquet": long.to_parquet,
               ".jsonl": lambda f: long.to_json(f, orient="records", lines=True)}
    writers[target.suffix.lower()](target)
    print(f"wrote {len(long)} ratings of {long['item'].nunique()} items by {long['rater'].nunique()} raters to {out}; "
          f"use it as evaluate.human_ratings={out}")


def winrate_export(output_dir: str, out: str, seed: int) -> None:
    """A blind sheet: per held-out prompt and answer index k, the base and the tuned policy's k-th answers as
    response A/B in a seeded random order; the key (which one is tuned) goes to a separate file."""
    import numpy as np
    import pandas as pd
    from datasets import load_from_disk

    path = _out_path(out, (".csv",))
    answers = load_from_disk(str(_stage_path(output_dir, "evaluate") / "dataset"))["heldout_answers"].to_pandas()
    if answers.empty:
        raise UserError(f"{output_dir}'s evaluate stage has no held-out answers: it needs a fine-tuned model, "
                        "preferences.split=prompt with held-out prompts, and evaluate.winrate_samples > 0")
    rng = np.random.default_rng(seed)
    base = answers[answers["policy"] == "base"].set_index(["prompt_id", "k"])
    tuned = answers[answers["policy"] == "finetuned"].set_index(["prompt_id", "k"])
    rows, key = [], []
    for (pid, k), b in base.iterrows():
        t = tuned.loc[(pid, k)]
        tuned_first = bool(rng.random() < 0.5)
        item = f"{pid}-{k}"
        rows.append({"item": item, "prompt": b["prompt"], "response_a": t["text"] if tuned_first else b["text"],
                     "response_b": b["text"] if tuned_first else t["text"], "choice": ""})
        key.append({"item": item, "prompt_id": pid, "tuned": "A" if tuned_first else "B"})
    order = rng.permutation(len(rows))
    pd.DataFrame(rows).iloc[order].to_csv(path, index=False)
    key_path = path.with_suffix(".key.csv")
    pd.DataFrame(key).to_csv(key_path, index=False)
    print(f"wrote {len(rows)} blind pairs to {path} (raters write A or B in `choice`) and the key to {key_path}")


def _winrate_key(key_file: str):
    """The key written by export --winrate, checked: one row per item, a prompt id, and A or B as the tuned side."""
    from pipeline.tables import read_table

    key = read_table(key_file, ["item", "prompt_id", "tuned"], "win-rate key", text=("item", "prompt_id", "tuned"))
    key = key.assign(**{c: key[c].fillna("").astype(str).str.strip() for c in ("item", "prompt_id", "tuned")})
    key["tuned"] = key["tuned"].str.upper()  # as the choices are read
    for column in ("item", "prompt_id"):
        if (key[column] == "").any():
            raise UserError(f"win-rate key {key_file}: row {int((key[column] == '').argmax()) + 1} has no {column}; "
                            "use the key written by annotate export --winrate")
    bad = key[~key["tuned"].isin(["A", "B"])]
    if len(bad):
        raise UserError(f"win-rate key {key_file}: item {bad['item'].iloc[0]!r} has tuned={bad['tuned'].iloc[0]!r}; "
                        "it must be A or B (as written by annotate export --winrate)")
    twice = key[key["item"].duplicated()]
    if len(twice):
        raise UserError(f"win-rate key {key_file}: item {twice['item'].iloc[0]!r} is listed twice; the key has one "
                        "row per item")
    return key


def winrate_import(sheets: list[str], key_file: str, out: str, seed: int) -> None:
    """Filled sheets + key -> the human win rate of the tuned policy, with a Student t interval over prompts."""
    import pandas as pd

    from pipeline.metrics import mean_ci_t
    from pipeline.tables import read_table

    target = _out_path(out, (".json",))
    key = _winrate_key(key_file)
    frames = []
    for path in sheets:
        sheet = read_table(path, ["item", "choice"], "win-rate sheet", text=("item", "choice"))
        rater = sheet["rater"].astype(str) if "rater" in sheet.columns else Path(path).stem
        frames.append(pd.DataFrame({"item": sheet["item"].fillna("").astype(str).str.strip(), "rater": rater,
                                    "choice": sheet["choice"].fillna("").str.strip().str.upper()}))
    choices = pd.concat(frames)
    choices = choices[choices["choice"] != ""]
    if choices.empty:
        raise UserError("the sheets hold no choices: raters write A or B in `choice`")
    bad = choices[~choices["choice"].isin(["A", "B"])]
    if len(bad):
        raise UserError(f"choice {bad['choice'].iloc[0]!r} for item {bad['item'].iloc[0]!r}: write A or B")
    if choices.duplicated(["rater", "item"]).any():
        dup = choices[choices.duplicated(["rater", "item"])].iloc[0]
        raise UserError(f"rater {dup['rater']!r} judged item {dup['item']!r} twice; keep one choice per rater and item")
    joined = choices.merge(key, on="item", how="left")
    if joined["tuned"].isna().any():
        raise UserError(f"item {joined['item'][joined['tuned'].isna()].iloc[0]!r} is not in the key {key_file}")
    joined["tuned_won"] = (joined["choice"] == joined["tuned"]).astype(float)
    per_prompt = joined.groupby("prompt_id")["tuned_won"].mean()
    result = {**mean_ci_t(per_prompt.to_numpy()), "choices": len(joined),
              "raters": int(joined["rater"].nunique()), "per_prompt": per_prompt.round(4).to_dict()}
    import json

    target.write_text(json.dumps(result, indent=2))
    from pipeline.formatting import number

    print(f"human win rate of the tuned policy: {result['mean']:.3f} [{number(result['ci_low'])}, "
          f"{number(result['ci_high'])}] over {result['n']} prompt(s){' (one: no interval)' if result['n'] < 2 else ''} "
          f"({result['choices']} choices by {result['raters']} raters); written to {target}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:  # key=value settings, not options: the pipeline's own parser reads them
        from pipeline.run import main as run_main

        return run_main(argv[1:])
    parser = argparse.ArgumentParser(prog="spmcmc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="the pipeline: spmcmc run recipe=NAME [key.sub=value ...] (--help: every setting)")
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
    ex.add_argument("--winrate", action="store_true", help="blind base-vs-tuned sheets of the held-out prompts")
    im = asub.add_parser("import", help="filled sheets -> a ratings file evaluate.human_ratings accepts")
    im.add_argument("sheets", nargs="+")
    im.add_argument("--out", required=True)
    im.add_argument("--winrate", action="store_true", help="choices of blind sheets -> the human win rate")
    im.add_argument("--key", help="the .key.csv written with the win-rate sheets")
    im.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        if args.command == "inspect":
            inspect_run(args.output_dir, args.stage, args.rows)
        elif args.action == "export":
            (winrate_export if args.winrate else annotate_export)(args.output_dir, args.out, args.seed)
        elif args.winrate:
            if not args.key:
                raise UserError("annotate import --winrate needs --key (the .key.csv written by export --winrate)")
            winrate_import(args.sheets, args.key, args.out, args.seed)
        else:
            annotate_import(args.sheets, args.out)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
