"""Reading user-supplied tables (CSV, JSONL, parquet) with one-line errors."""

from __future__ import annotations

from pathlib import Path

from pipeline.config import UserError


class TableError(UserError):
    """A user file that cannot be used; printed as one line."""


def read_table(path: str | Path, required: list[str], what: str, text: tuple[str, ...] = ("text",)):
    """A pandas DataFrame with at least the `required` columns; the `text` columns hold exactly what
    the file holds (a joke reading "None", "NA" or "nan" stays that text, never a missing value)."""
    import pandas as pd

    p = Path(path).expanduser()
    if p.is_dir():
        raise TableError(f"{what} {str(p)!r} is a directory; give a file (.csv, .tsv, .jsonl or .parquet)")
    if not p.is_file():
        raise TableError(f"{what} file {str(p)!r} does not exist")
    as_text = {"keep_default_na": False, "dtype": str}
    readers = {".csv": lambda f, **kw: pd.read_csv(f, **kw), ".tsv": lambda f, **kw: pd.read_csv(f, sep="\t", **kw),
               ".parquet": lambda f, **kw: pd.read_parquet(f),
               # dtype=False also leaves date-like columns as written (pandas 3 deprecates convert_dates=)
               ".jsonl": lambda f, **kw: pd.read_json(f, lines=True, dtype=not kw),
               ".json": lambda f, **kw: pd.read_json(f, dtype=not kw)}
    reader = readers.get(p.suffix.lower())
    if reader is None:
        raise TableError(f"{what} file {p.name!r}: unsupported format {p.suffix!r}; use .csv, .tsv, .jsonl or .parquet")
    try:
        frame = reader(p)
        raw = reader(p, **as_text)  # pandas' NA guessing off: the text columns as written
    except Exception as e:  # pandas raises many types for unreadable files
        raise TableError(f"{what} file {p.name!r} could not be read: {type(e).__name__}: {str(e).splitlines()[0]}"
                         + separator_hint(p)) from None
    for column in set(text) & set(frame.columns):
        frame[column] = raw[column]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise TableError(f"{what} file {p.name!r} lacks column(s) {missing}; it has {list(frame.columns)}"
                         + separator_hint(p))
    return frame


def separator_hint(p: Path) -> str:
    """Why a .csv often fails to parse: its columns are separated by semicolons (a European spreadsheet's export)."""
    if p.suffix.lower() != ".csv":
        return ""
    with open(p, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    return ("; the first line separates its columns with ';': separate columns with commas (or save as .tsv with tabs)"
            if first.count(";") > first.count(",") else "")
