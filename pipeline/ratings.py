"""Human ratings: the bundled Jester benchmark or a user file, validated, subset and with a noise ceiling.

Accepted `evaluate.human_ratings`:
  jester            data/jester (100 jokes, 4.1M ratings from 73,421 people; citation below)
  caption_contests  data/caption_contests (24 New Yorker cartoons x 30 crowd-rated captions; citation below)
  PATH              CSV/TSV/JSONL/parquet with `text` and `rating` (optional `id`, `n_ratings`): one row per item
  PATH (long)       with `item`, `rater`, `rating` (optional `text`; else `item` is the text), averaged per item
Either kind of file may add `prompt` (the request the item answers) and optional `prompt_id`: items are then
grouped by prompt and every evaluator is scored within each prompt (pipeline/within_prompts.py).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config import MIN_RATED_ITEMS, REPO_ROOT
from pipeline.tables import TableError, read_table, separator_hint

JESTER_DIR = REPO_ROOT / "data" / "jester"
CAPTIONS_DIR = REPO_ROOT / "data" / "caption_contests"
CAPTION_PROMPT = "Write a funny caption for this New Yorker cartoon: {description}"
CAPTIONS_CITATION = ("NEXT caption-contest data (S. Sievert, L. Jain, K. Jamieson, R. Nowak et al., "
                     "github.com/nextml/caption-contest-data-api, CC BY 4.0); The New Yorker Cartoon Caption Contest.")
JESTER_CITATION = ('Ken Goldberg, Theresa Roeder, Dhruv Gupta, and Chris Perkins. "Eigentaste: A Constant Time '
                   'Collaborative Filtering Algorithm." Information Retrieval, 4(2), 133-151, July 2001.')


def bundled_path(value: str) -> Path | None:
    """The bundled data a file setting names by its alias (`jester`: data/jester), None when it names a path."""
    return {"jester": JESTER_DIR, "caption_contests": CAPTIONS_DIR}.get(value)


ITEM_COLUMNS = ["id", "text", "rating", "n_ratings", "prompt_id", "prompt"]
# per-category vote counts, where a file gives them: `votes_<rating>` columns (e.g. votes_1, votes_2, votes_3), or
# the caption contests' own names. They give each item's rating variance exactly (pipeline/within_prompts.py).
CAPTION_VOTES = {"unfunny": 1.0, "somewhat_funny": 2.0, "funny": 3.0}


def vote_columns(columns) -> dict[str, float]:
    """{column: the rating its votes give} for the per-category vote-count columns among `columns`."""
    out = {c: v for c, v in CAPTION_VOTES.items() if c in columns}
    for c in columns:
        if isinstance(c, str) and c.startswith("votes_"):
            try:
                out[c] = float(c[len("votes_"):])
            except ValueError:
                raise TableError(f"vote-count column {c!r} must be votes_<rating>, e.g. votes_3") from None
    return out if len(out) >= 2 else {}


@dataclass
class Ratings:
    items: "object"  # DataFrame: id (str), text, rating (mean), n_ratings, prompt_id, prompt (None: one query)
    long: "object | None"  # DataFrame: item (id), rater, rating; None when only means are known
    source: str
    citation: str | None

    @property
    def has_prompts(self) -> bool:
        return self.items["prompt"].notna().any()


def load_ratings(spec: str) -> Ratings:
    if spec == "jester":
        return _jester()
    if spec == "caption_contests":
        return _captions()
    frame = read_table(spec, [], "evaluate.human_ratings", text=("text", "rating", "prompt", "prompt_id"))
    _no_repeated_header(frame, spec)
    if {"item", "rater", "rating"} <= set(frame.columns):
        return _from_long(frame, spec)
    missing = [c for c in ("text", "rating") if c not in frame.columns]
    if missing:
        raise TableError(f"ratings file {spec!r} lacks column(s) {missing}: give text+rating per item, or a long "
                         f"file with item, rater, rating; it has {list(frame.columns)}" + separator_hint(Path(spec)))
    items = frame.assign(id=frame["id"].astype(str) if "id" in frame.columns else frame.index.astype(str),
                         n_ratings=_counts(frame, spec))
    return Ratings(_validate(_with_prompts(items, frame, spec), spec), None, spec, None)


def _counts(frame, spec: str):
    """`n_ratings` as numbers (votes per item: the parametric noise ceiling reads them), NaN when absent."""
    import pandas as pd

    if "n_ratings" not in frame.columns:
        return np.nan
    counts = pd.to_numeric(frame["n_ratings"], errors="coerce")
    bad = counts.isna() | (counts < 1) | (counts % 1 != 0)
    if bad.any():
        raise TableError(f"ratings file {spec!r}: `n_ratings` must be a count >= 1, found "
                         f"{str(frame['n_ratings'][bad].iloc[0])!r} in row {int(bad.to_numpy().argmax()) + 1}")
    return counts.astype(float)


def _with_prompts(items, frame, spec: str):
    """`prompt_id` and `prompt` columns: both None without a `prompt` column; a missing `prompt_id` numbers the
    distinct prompts in order of appearance."""
    if "prompt" not in frame.columns:
        if "prompt_id" in frame.columns:
            raise TableError(f"ratings file {spec!r} has `prompt_id` but no `prompt`: give the request each item "
                             "answers in a `prompt` column")
        return items.assign(prompt_id=None, prompt=None)[ITEM_COLUMNS + list(vote_columns(items.columns))]
    # compared as the model reads them: a trailing space or another Unicode form of the same text is the same prompt
    prompts = prompt_key(frame["prompt"])
    blank = prompts == ""
    if blank.any():
        raise TableError(f"ratings file {spec!r}: `prompt` is empty in row {int(blank.to_numpy().argmax()) + 1}")
    if "prompt_id" in frame.columns:
        ids = frame["prompt_id"].astype(str).str.strip()
        clash = prompts.groupby(ids).nunique()
        if (clash > 1).any():
            raise TableError(f"ratings file {spec!r}: prompt_id {clash[clash > 1].index[0]!r} names "
                             f"{int(clash.max())} different prompts; give each prompt one id")
        shared = ids.groupby(prompts).unique()
        for text, named in shared[shared.map(len) > 1].items():
            print(f"[evaluate] warning: ratings file {spec!r}: the prompt {text[:60]!r} has {len(named)} ids "
                  f"({', '.join(map(repr, sorted(named)))}); they are pooled as {len(named)} independent prompts. "
                  "Give it one id if it is one prompt", flush=True)
    else:
        ids = prompts.map({p: str(k) for k, p in enumerate(dict.fromkeys(prompts))})
    return items.assign(prompt_id=ids.to_numpy(), prompt=prompts.to_numpy())[ITEM_COLUMNS + list(vote_columns(items.columns))]


def _no_repeated_header(frame, spec: str) -> None:
    """pandas renames a repeated header (rating, rating -> rating, rating.1): which one is meant cannot be known."""
    for column in map(str, frame.columns):
        m = re.fullmatch(r"(.+)\.(\d+)", column)
        if m and m.group(1) in frame.columns:
            raise TableError(f"ratings file {spec!r}: the column {m.group(1)!r} appears more than once in the header; "
                             "keep one")


def check_scale(ratings: Ratings, scale: list[float] | None) -> None:
    """Every rating (each rater's, else each item's mean) within evaluate.rating_scale, where it is set: a rating
    outside it is a mistake in the file or in the setting, and the noise ceiling computed from it is wrong."""
    if not scale:
        return
    lo, hi = scale
    frame, column, what = ((ratings.long, "rating", "rating") if ratings.long is not None
                           else (ratings.items, "rating", "mean rating"))
    values = frame[column].to_numpy(dtype=float)
    outside = (values < lo) | (values > hi)
    if outside.any():
        k = int(outside.argmax())
        where = f"item {frame['item'].iloc[k]!r}" if "item" in frame.columns else f"item {frame['id'].iloc[k]!r}"
        raise TableError(f"ratings file {ratings.source!r}: {what} {values[k]:g} of {where} (row {k + 1}) is outside "
                         f"evaluate.rating_scale=[{lo:g}, {hi:g}]; fix the file or the scale")


def _jester() -> Ratings:
    import pandas as pd

    jokes = pd.read_csv(JESTER_DIR / "jester_jokes.csv")
    items = pd.DataFrame({"id": jokes["joke_id"].astype(str), "text": jokes["text"], "rating": jokes["mean_rating"],
                          "n_ratings": jokes["n_ratings"]})
    long = pd.read_parquet(JESTER_DIR / "jester_ratings_long.parquet")
    long = pd.DataFrame({"item": long["joke_id"].astype(str), "rater": long["user_id"], "rating": long["rating"]})
    items = items.assign(prompt_id=None, prompt=None)
    return Ratings(_validate(items, "jester"), long, "jester", JESTER_CITATION)


def _captions() -> Ratings:
    """The bundled caption contests: the contest is the prompt id, its cartoon's description the prompt."""
    import pandas as pd

    c = pd.read_csv(CAPTIONS_DIR / "caption_contests.csv", dtype={"text": str, "caption_id": str},
                    keep_default_na=False)
    repeat = c.groupby("caption_id").cumcount()  # tied ranks repeat an id (`<contest>-r<rank>`): numbered apart
    ids = c["caption_id"].where(repeat == 0, c["caption_id"] + "." + repeat.astype(str))
    items = pd.DataFrame({"id": ids, "text": c["text"], "rating": c["rating"],
                          "n_ratings": c["n_ratings"].astype(float), "prompt_id": c["contest"].astype(str),
                          "prompt": [CAPTION_PROMPT.format(description=d) for d in c["description"]],
                          **{k: c[k].astype(float) for k in vote_columns(c.columns)}})
    return Ratings(_validate(items, "caption_contests"), None, "caption_contests", CAPTIONS_CITATION)


def _from_long(frame, spec: str) -> Ratings:
    import pandas as pd

    _numeric(frame["rating"], spec)
    frame = frame.assign(item=frame["item"].astype(str), rating=pd.to_numeric(frame["rating"]))
    frame = _items_per_prompt(frame)
    twice = frame[frame.duplicated(["item", "rater"])]
    if len(twice):
        raise TableError(f"ratings file {spec!r}: rater {twice['rater'].iloc[0]!r} rated item {twice['item'].iloc[0]!r} "
                         "more than once; keep one rating per rater and item")
    texts = frame.groupby("item")["text"].first() if "text" in frame.columns else None
    grouped = frame.groupby("item")["rating"]
    items = pd.DataFrame({"id": grouped.mean().index, "rating": grouped.mean().values,
                          "n_ratings": grouped.size().values})
    items["text"] = items["id"].map(texts) if texts is not None else items["id"]
    given = [c for c in ("prompt", "prompt_id") if c in frame.columns]
    firsts = frame.groupby("item")[given].first().reindex(items["id"]).reset_index(drop=True) if given else frame
    items = _with_prompts(items, firsts, spec)
    long = frame[["item", "rater", "rating"]].astype({"rating": float})
    return Ratings(_validate(items, spec), long, spec, None)


def prompt_key(column):
    """A prompt column as compared: stripped and in Unicode NFC."""
    return column.astype(str).map(lambda p: unicodedata.normalize("NFC", p).strip())


def _items_per_prompt(frame):
    """A long file may number its items within each prompt (item 1 of cats, item 1 of dogs): then an item is
    (prompt, item), its id `prompt_id/item` (or `prompt/item`); ids unique across prompts are kept as they are."""
    by = "prompt_id" if "prompt_id" in frame.columns else "prompt" if "prompt" in frame.columns else None
    if by is None:
        return frame
    owner = prompt_key(frame[by])
    if (owner.groupby(frame["item"]).nunique() <= 1).all():
        return frame
    return frame.assign(item=owner + "/" + frame["item"])


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
    empty = items["text"].str.strip() == ""
    if empty.any():
        raise TableError(f"ratings file {spec!r}: the item in row {int(empty.to_numpy().argmax()) + 1} has no text; "
                         "every rated item needs its text")
    dup = items["text"][items.duplicated(["prompt_id", "text"])]  # the same caption may answer two prompts
    if len(dup):
        raise TableError(f"ratings file {spec!r}: duplicate item {dup.iloc[0][:60]!r}; give one row per item "
                         "(and prompt), or a long file with item, rater, rating")
    if items["id"].duplicated().any():
        raise TableError(f"ratings file {spec!r}: duplicate id {items['id'][items['id'].duplicated()].iloc[0]!r}")
    return _spread(items, f"ratings file {spec!r}").reset_index(drop=True)


def select_items(items, max_items: int, max_chars: int):
    """Deterministic subset: items within max_chars, then max_items spread evenly over the rating
    range (every q-th item by rating), so a small subset still spans funny and unfunny."""
    kept = _within(items, max_items, max_chars)
    if len(kept) < MIN_RATED_ITEMS:
        raise TableError(f"only {len(kept)} rated items are at most evaluate.max_chars={max_chars} characters; "
                         f"at least {MIN_RATED_ITEMS} are needed (raise evaluate.max_chars)")
    _spread(kept, f"the rated items chosen by evaluate.max_items={max_items} and max_chars={max_chars}")
    return kept


def _within(items, max_items: int, max_chars: int):
    kept = items[items["text"].str.len() <= max_chars] if max_chars else items
    kept = kept.sort_values(["rating", "id"]).reset_index(drop=True)
    if max_items and len(kept) > max_items:
        kept = kept.iloc[np.linspace(0, len(kept) - 1, max_items).round().astype(int)]
    return kept.sort_values("id", key=lambda s: s.str.zfill(12)).reset_index(drop=True)


MIN_PROMPT_ITEMS = 5  # fewer items in a prompt leave its within-prompt correlations meaningless


def select_prompt_items(items, max_items: int, max_chars: int) -> tuple[object, dict[str, str]]:
    """Per prompt, in the file's order, the subset select_items takes of one query (max_items per prompt); a prompt
    left with fewer than MIN_PROMPT_ITEMS items, or whose items all have one rating, is left out with its reason
    ({prompt_id: why}). Raises when no prompt is left."""
    import pandas as pd

    kept, left_out = [], {}
    for pid, group in items.groupby("prompt_id", sort=False):
        sub = _within(group, max_items, max_chars)
        if len(sub) < MIN_PROMPT_ITEMS:
            left_out[pid] = (f"{len(sub)} of its {len(group)} items are at most evaluate.max_chars={max_chars} "
                             f"characters; at least {MIN_PROMPT_ITEMS} are needed")
        elif np.ptp(sub["rating"].to_numpy(dtype=float)) == 0:
            left_out[pid] = "every item has the same rating: no human ranking to compare against"
        else:
            kept.append(sub)
    if not kept:
        raise TableError(f"no prompt of the ratings file has {MIN_PROMPT_ITEMS} usable items with different ratings "
                         f"(evaluate.max_chars={max_chars}); first: {next(iter(left_out.items()))}")
    return pd.concat(kept, ignore_index=True), left_out


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
