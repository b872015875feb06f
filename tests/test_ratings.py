"""pipeline/ratings.py: human ratings files (one row per item, or long: item, rater, rating), the bundled Jester
set, the deterministic subset and the split-half noise ceiling; every bad file is one clear line."""

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, assert_one_error_line, run_main, write
from pipeline.artifacts import MARKER
from pipeline.ratings import load_ratings, noise_ceiling, select_items
from pipeline.tables import TableError


def write_frame(tmp_path, frame, name="r.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False) if name.endswith(".csv") else frame.to_json(path, orient="records", lines=True)
    return str(path)


@pytest.mark.parametrize("frame, message", [
    (pd.DataFrame({"text": ["a"] * 3}), "lacks column(s) ['rating']"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(12)], "rating": ["x"] + [1] * 11}), "must be numeric, found 'x'"),
    (pd.DataFrame({"text": ["same"] * 12, "rating": range(12)}), "duplicate item 'same'"),
    (pd.DataFrame({"text": [f"t{i}" for i in range(5)], "rating": range(5)}), "has 5 items; at least 10"),
])
def test_ratings_file_validation(tmp_path, frame, message):
    with pytest.raises(TableError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_ratings(write_frame(tmp_path, frame))


def test_missing_and_unreadable_ratings_files(tmp_path):
    with pytest.raises(TableError, match="does not exist"):
        load_ratings(str(tmp_path / "nope.csv"))
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(TableError, match="could not be read"):
        load_ratings(str(tmp_path / "bad.parquet"))


def test_long_ratings_are_averaged(tmp_path):
    rows = [{"item": f"joke {i}", "rater": r, "rating": i + r} for i in range(12) for r in range(3)]
    ratings = load_ratings(write_frame(tmp_path, pd.DataFrame(rows), "long.jsonl"))
    item = ratings.items.set_index("id").loc["joke 4"]
    assert item["rating"] == 5.0 and item["n_ratings"] == 3 and item["text"] == "joke 4"
    assert ratings.long is not None


def test_long_ratings_may_number_items_within_each_prompt(tmp_path):
    """Item 1 of cats and item 1 of dogs are two items (it was refused as one rater rating one item twice)."""
    rows = [{"prompt_id": p, "prompt": f"A joke about {p}.", "item": str(i), "text": f"{p} joke {i}", "rater": r,
             "rating": (i + r) % 3 + 1} for p in ("cats", "dogs") for i in range(10) for r in range(2)]
    items = load_ratings(write_frame(tmp_path, pd.DataFrame(rows))).items
    assert len(items) == 20 and items.groupby("prompt_id").size().to_dict() == {"cats": 10, "dogs": 10}
    assert set(items["id"]) == {f"{p}/{i}" for p in ("cats", "dogs") for i in range(10)}
    assert items.set_index("id").loc["dogs/3", "text"] == "dogs joke 3"


def test_jester_bundle_and_subset():
    jester = load_ratings("jester")
    assert len(jester.items) == 100 and "Eigentaste" in jester.citation
    subset = select_items(jester.items, max_items=20, max_chars=200)
    assert len(subset) == 20 and subset["text"].str.len().max() <= 200
    assert subset["rating"].max() - subset["rating"].min() > 4  # spread over the range
    assert subset.equals(select_items(jester.items, max_items=20, max_chars=200))


def test_noise_ceiling_on_synthetic_raters():
    """Item means of m raters with noise sd s have reliability var(t) / (var(t) + s^2 / m)."""
    rng = np.random.default_rng(0)
    n_items, n_raters, s = 60, 40, 3.0
    truth = rng.normal(size=n_items)
    long = pd.DataFrame([(str(i), r, truth[i] + s * rng.normal()) for i in range(n_items) for r in range(n_raters)],
                        columns=["item", "rater", "rating"])
    expected = truth.var() / (truth.var() + s ** 2 / n_raters)
    got = noise_ceiling(long, [str(i) for i in range(n_items)], seed=0)
    assert got["spearman_brown"] == pytest.approx(expected, abs=0.06)


def ratings_file(tmp_path, ratings):
    return write(tmp_path / "ratings.csv", "text,rating\n" + "".join(f"joke number {i},{r}\n"
                                                                     for i, r in enumerate(ratings)))


@pytest.mark.parametrize("ratings, message", [([4] * 12, "every item has the same rating (4)"),
                                              ([1, 2, "inf"] + [3] * 9, "`rating` must be finite")])
def test_degenerate_ratings(tmp_path, ratings, message):
    path = ratings_file(tmp_path, ratings)
    proc = run_main(*TINY, "stages=[evaluate]", f"evaluate.human_ratings={path}", f"output_dir={tmp_path / 'o'}")
    assert_one_error_line(proc, message)
    assert not list((tmp_path / "o" / "evaluate").glob(f"*/{MARKER}"))


def test_subset_of_constant_ratings_is_refused():
    from pipeline.ratings import TableError, select_items

    items = pd.DataFrame({"id": [str(i) for i in range(40)], "text": [f"t{i}" for i in range(40)],
                          "rating": [1.0] * 20 + [2.0] * 20})
    with pytest.raises(TableError, match="at least 10"):
        select_items(items.head(9), 0, 0)
    with pytest.raises(TableError, match="same rating"):
        select_items(items.head(20), 10, 0)


@pytest.mark.parametrize("text, message", [
    ("item,rater,rating\n" + "".join(f"i{k},r0,{k % 3 + 1}\n" for k in range(12)) + "i0,r0,3\n",
     "rater 'r0' rated item 'i0' more than once"),
    ("text,rating\n" + "".join(f"joke {k},{k % 3 + 1}\n" for k in range(12)) + "joke x,nan\n",
     "`rating` must be numeric, found 'nan'"),
    ("text,rating\n" + "".join(f"joke {k},{k % 3 + 1}\n" for k in range(12)) + "joke x,\n", "`rating` is empty in row 13"),
    ("text,rating,n_ratings\n" + "".join(f"joke {k},{k % 3 + 1},{k + 2}\n" for k in range(12)) + "joke x,3,1.5\n",
     "`n_ratings` must be a count >= 1, found '1.5' in row 13"),
    ("text,rating\n" + "".join(f"joke {k},{k % 3 + 1}\n" for k in range(12)) + "\"  \",3\n",
     "the item in row 13 has no text"),
    ("text,rating,rating\n" + "".join(f"joke {k},{k % 3 + 1},{k % 3 + 1}\n" for k in range(12)),
     "the column 'rating' appears more than once in the header"),
    ("text,rating\n" + "".join(f"joke {k},{k % 3 + 1}\n" for k in range(12)) + "joke x,5\n",
     "rating 5 of item '12' (row 13) is outside evaluate.rating_scale=[1, 3]"),
    ("item,rater,rating\n" + "".join(f"i{k},r{j},{(k + j) % 3 + 1}\n" for k in range(12) for j in range(2))
     + "i0,r9,13\n", "rating 13 of item 'i0' (row 25) is outside evaluate.rating_scale=[1, 3]"),
    ("text;rating\n" + "".join(f"joke {k}, really;{k % 3 + 1}\n" for k in range(12)),
     "the first line separates its columns with ';': separate columns with commas"),
], ids=["repeated rater and item", "nan cell", "empty cell", "fractional count", "empty item", "header twice",
        "mean outside the scale", "rating outside the scale", "semicolons"])
def test_ratings_file_mistakes(tmp_path, text, message):
    path = write(tmp_path / "r.csv", text)
    assert_one_error_line(run_main(*TINY, f"output_dir={tmp_path / 'out'}", "stages=[evaluate]",
                                   f"evaluate.human_ratings={path}", "evaluate.rating_scale=[1,3]"), message)


@pytest.mark.slow
def test_the_jester_recipe_runs_to_a_report(tmp_path):
    """recipe=jester_spmcmc samples nothing (only_extra: the jokes are the sample space), so sample_space's summary
    has no diversity; the rounds table and report must do without it (it ended in KeyError: 'diversity')."""
    proc = run_main("recipe=jester_spmcmc", "model.name_or_path=embedded:tiny-random", "wandb.mode=disabled",
                    f"output_dir={tmp_path}", "sample_space.max_chars=100", "evaluate.max_chars=100",
                    "evaluate.max_items=10", "spmcmc.budget=200")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## " in (tmp_path / "report.md").read_text() and "Traceback" not in proc.stderr


def test_the_jester_recipe_on_any_rated_file_runs_to_a_report(tmp_path):
    """The README's form for any human-rated set: `recipe=jester_spmcmc evaluate.human_ratings=PATH
    sample_space.extra_path=PATH` (the same crash as the bundled one: no diversity when nothing is sampled)."""
    path = write(tmp_path / "rated.csv", "text,rating\n" + "".join(f"Joke number {k} walks into a bar.,{k % 5 + 1}\n"
                                                                    for k in range(12)))
    proc = run_main("recipe=jester_spmcmc", "model.name_or_path=embedded:tiny-random", "wandb.mode=disabled",
                    f"output_dir={tmp_path / 'out'}", f"evaluate.human_ratings={path}", f"sample_space.extra_path={path}",
                    "spmcmc.budget=200", "evaluate.spmcmc_iterations=10")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## " in (tmp_path / "out" / "report.md").read_text() and "Traceback" not in proc.stderr


def test_an_item_past_the_models_context_is_left_out_with_a_note(tmp_path):
    """An item of ~3,500 tokens against the tiny model's 2,048: it is not scored (it was, silently)."""
    rows = "".join(f"joke {k},{k % 3 + 1}\n" for k in range(12)) + "word" + " word" * 3500 + ",2\n"
    path = write(tmp_path / "r.csv", "text,rating\n" + rows)
    proc = run_main(*TINY, f"output_dir={tmp_path / 'out'}", "stages=[evaluate]", f"evaluate.human_ratings={path}",
                    "evaluate.max_chars=0", "evaluate.evaluators=[random,logprob]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 rated item(s) left out: longer than the model's context of 2048 tokens" in proc.stdout
    assert "12 of 13 rated items" in proc.stdout
