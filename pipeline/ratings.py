"""Human ratings: the bundled Jester benchmark or a user file, validated, subset and with a noise ceiling.

Accepted `evaluate.human_ratings`:
  jester          data/jester (100 jokes, 4.1M ratings from 73,421 people; citation below)
  PATH            CSV/TSV/JSONL/parquet with `text` and `rating` (optional `id`, `n_ratings`): one row per item
  PATH (long)     with `item`, `rater`, `rating` (optional `text`; else `item` is the text), averaged per item
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import MIN_RATED_ITEMS, REPO_ROOT
from pipeline.tables import TableError, read_table

JESTER_DIR = REPO_ROOT / "data" / "jester"
JESTER_CITATION = ('Ken Goldberg, Theresa Roeder, Dhruv Gupta, and Chris Perkins. "Eigentaste: A Constant Time '
                   'Collaborative Filtering Algorithm." Information Retrieval, 4(2), 133-151, July 2001.')


def bundled_path(value: str) -> Path | None:
    """The bundled data a file setting names by its alias (`jester`: data/jester), None when it names a path."""
    return JESTER_DIR if value == "jester" else None


@dataclass
class Ratings:
    items: "object"  # DataFrame: id (str), text, rating (mean), n_ratings
    long: "object | None"  # DataFrame: item (id), rater, rating; None when only means are known
    source: str
    citation: str | None


def load_ratings(spec: str) -> Ratings:
    if bundled_path(spec):
        return _jester()
    frame = read_table(spec, [], "evaluate.human_ratings", text=("text", "rating"))  # a bad rating is quoted as written
    if {"item", "rater", "rating"} <= set(frame.columns):
        return _from_long(frame, spec)
    missing = [c for c in ("text", "rating") if c not in frame.columns]
    if missing:
        raise TableError(f"ratings file {spec!r} lacks column(s) {missing}: give text+rating per item, or a long "
                         f"file with item, rater, rating; it has {list(frame.columns)}")
    items = frame.assign(id=frame["id"].astype(str) if "id" in frame.columns else frame.index.astype(str),
                         n_ratings=frame["n_ratings"] if "n_ratings" in frame.columns else np.nan)
    return Ratings(_validate(items[["id", "text", "rating", "n_ratings"]], spec), None, spec, None)


def _jester() -> Ratings:
    import pandas as pd

    jokes = pd.read_csv(JESTER_DIR / "jester_jokes.csv")
    items = pd.DataFrame({"id": jokes["joke_id"].astype(str), "text": jokes["text"], "rating": jokes["mean_rating"],
                          "n_ratings": jokes["n_ratings"]})
    long = pd.read_parquet(JESTER_DIR / "jester_ratings_long.parquet")
    long = pd.DataFrame({"item": long["joke_id"].astype(str), "rater": long["user_id"], "rating": long["rating"]})
    return Ratings(_validate(items, "jester"), long, "jester", JESTER_CITATION)


def _from_long(frame, spec: str) -> Ratings:
    import pandas as pd

    _numeric(frame["rating"], spec)
    frame = frame.assign(item=frame["item"].astype(str), rating=pd.to_numeric(frame["rating"]))
    twice = frame[frame.duplicated(["item", "rater"])]
    if len(twice):
        raise TableError(f"ratings file {spec!r}: rater {twice['rater'].iloc[0]!r} rated item {twice['item'].iloc[0]!r} "
                         "more than once; keep one rating per rater and item")
    texts = frame.groupby("item")["text"].first() if "text" in frame.columns else None
    grouped = frame.groupby("item")["rating"]
    items = pd.DataFrame({"id": grouped.mean().index, "rating": grouped.mean().values,
                          "n_ratings": grouped.size().values})
    items["text"] = items["id"].map(texts) if texts is not None else items["id"]
    long = frame[["item", "rater", "rating"]].astype({"rating": float})
    return Ratings(_validate(items[["id", "text", "rating", "n_ratings"]], spec), long, spec, None)


def _numeric(column, spec: str) -> None:
    import pandas as pd

    blank = column.isna() | (column.astype(str).str.strip() == "")
    values = pd.to_numeric(column.where(~blank), errors="coerce")
    if blank.any():
        raise TableError(f"ratings file {spec!r}: `rating` is empty in row {int(blank.to_numpy().argmax()) + 1}; "
                         "every row needs a number")
    if values.isna().any():
        raise TableError(f"ratings file {spec!r}: `rating` must be numeric, found {column[values.isna()].iloc[0]!r}")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise TableError(f"ratings file {spec!r}: `rating` must be finite, found "
                         f"{column[~np.isfinite(values.to_numpy(dtype=float))].iloc[0]!r}")


def _spread(items, where: str):
    """At least MIN_RATED_ITEMS items whose ratings differ: otherwise no correlation means anything."""
    if len(items) < MIN_RATED_ITEMS:
        raise TableError(f"{where} has {len(items)} items; at least {MIN_RATED_ITEMS} are needed")
    if np.ptp(items["rating"].to_numpy(dtype=float)) == 0:
        raise TableError(f"{where}: every item has the same rating ({items['rating'].iloc[0]:g}); "
                         "there is no human ranking to compare against")
    return items


def _validate(items, spec: str):
    import pandas as pd

    _numeric(items["rating"], spec)
    items = items.assign(rating=pd.to_numeric(items["rating"]).astype(float), text=items["text"].astype(str))
    dup = items["text"][items["text"].duplicated()]
    if len(dup):
        raise TableError(f"ratings file {spec!r}: duplicate item {dup.iloc[0][:60]!r}; give one row per item "
                         "(or a long file with item, rater, rating)")
    if items["id"].duplicated().any():
        raise TableError(f"ratings file {spec!r}: duplicate id {items['id'][items['id'].duplicated()].iloc[0]!r}")
    return _spread(items, f"ratings file {spec!r}").reset_index(drop=True)


def select_items(items, max_items: int, max_chars: int):
    """Deterministic subset: items within max_chars, then max_items spread evenly over the rating
    range (every q-th item by rating), so a small subset still spans funny and unfunny."""
    kept = items[items["text"].str.len() <= max_chars] if max_chars else items
    if len(kept) < MIN_RATED_ITEMS:
        raise TableError(f"only {len(kept)} rated items are at most evaluate.max_chars={max_chars} characters; "
                         f"at least {MIN_RATED_ITEMS} are needed (raise evaluate.max_chars)")
    kept = kept.sort_values(["rating", "id"]).reset_index(drop=True)
    if max_items and len(kept) > max_items:
        kept = kept.iloc[np.linspace(0, len(kept) - 1, max_items).round().astype(int)]
    _spread(kept, f"the rated items chosen by evaluate.max_items={max_items} and max_chars={max_chars}")
    return kept.sort_values("id", key=lambda s: s.str.zfill(12)).reset_index(drop=True)


def noise_ceiling(long, ids: list[str], seed: int, splits: int = 20) -> dict | None:
    """Split-half reliability of the item means (raters split at random into halves; Pearson r
    between the halves' means; Spearman–Brown corrected 2r/(1+r)), averaged over `splits` splits."""
    from scipy.stats import pearsonr

    if long is None:
        return None
    sub = long[long["item"].isin(set(ids))]
    raters = sub["rater"].unique()
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(splits):
        half = set(rng.permutation(raters)[: len(raters) // 2].tolist())
        in_a = sub["rater"].isin(half)
        a = sub[in_a].groupby("item")["rating"].mean().reindex(ids)
        b = sub[~in_a].groupby("item")["rating"].mean().reindex(ids)
        ok = a.notna() & b.notna()
        if ok.sum() >= 3:
            rs.append(pearsonr(a[ok], b[ok]).statistic)
    if not rs:
        return None
    r = float(np.mean(rs))
    return {"split_half_r": r, "spearman_brown": 2 * r / (1 + r), "splits": len(rs), "raters": int(len(raters))}
