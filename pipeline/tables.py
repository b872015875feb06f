"""Reading user-supplied tables (CSV, JSONL, parquet) with one-line errors."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import UserError


class TableError(UserError):
    """A user file that cannot be used; printed as one line."""


def read_table(path: str | Path, required: list[str], what: str):
    """A pandas DataFrame with at least the `required` columns."""
    import pandas as pd

    p = Path(path).expanduser()
    if not p.is_file():
        raise TableError(f"{what} file {str(p)!r} does not exist")
    readers = {".csv": pd.read_csv, ".tsv": lambda f: pd.read_csv(f, sep="\t"), ".parquet": pd.read_parquet,
               ".jsonl": lambda f: pd.read_json(f, lines=True), ".json": pd.read_json}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise TableError(f"{what} file {p.name!r}: unsupported format {p.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    try:
        frame = reader(p)
    except Exception as e:  # pandas raises many types for unreadable files
        raise TableError(f"{what} file {p.name!r} could not be read: {type(e).__name__}: {str(e).splitlines()[0]}") \
            from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{what} file {p.name!r} lacks column(s) {missing}; it has {list(frame.columns)}")
    return frame
