"""Generated inputs for the file readers the newer features added: prompt files in every format, win-rate keys and
sheets, long ratings files, damaged manifests. Each reader either returns what an independent computation says,
or raises one UserError; no other exception, no silent wrong answer."""

import json
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.config import SampleSpaceConfig, UserError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
WORDS = st.text(alphabet=string.ascii_letters + string.digits + " ,.?!'\"-", min_size=1, max_size=20)


# ---------------------------------------------------------------- prompt files
def write_prompts(rows: list[dict], path):
    frame = pd.DataFrame({k: pd.Series([r[k] for r in rows], dtype=object) for k in rows[0]})  # ints stay ints
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({k: v for k, v in r.items() if v is not None}) + "\n" for r in rows))
    else:
        frame.to_parquet(path)
    return path


def load(path):
    from pipeline.prompts import load_prompts

    return load_prompts(SampleSpaceConfig(prompts=str(path)))


ID = st.one_of(st.none(), st.integers(0, 50))


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({"id": ID, "prompt": WORDS}), min_size=1, max_size=6))
def test_prompt_ids_agree_across_formats(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("p")
    results = []
    for suffix in (".csv", ".jsonl", ".parquet"):
        try:
            results.append([(p.id, p.text) for p in load(write_prompts(rows, folder / f"p{suffix}"))])
        except UserError as e:
            results.append(type(e).__name__ + str(e).split(":", 1)[1])
    assert results[0] == results[1] == results[2]  # the same prompts, ids and errors whatever the format
    if isinstance(results[0], list):
        given_ids = [str(r["id"]) for r in rows if r["id"] is not None]
        assert [i for i in (p[0] for p in results[0]) if i in given_ids] == given_ids  # an integer id is its digits
        assert len({p[0] for p in results[0]}) == len(rows)


CELL = st.one_of(st.none(), st.just(""), st.just("  "), st.integers(-3, 3), st.floats(allow_nan=True), WORDS,
                 st.booleans())


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({"id": CELL, "prompt": CELL}), min_size=0, max_size=5))
def test_any_jsonl_prompt_file_is_prompts_or_one_user_error(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("p") / "p.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    try:
        prompts = load(path)
    except UserError as e:
        assert "\n" not in str(e)
        return
    assert all(isinstance(p.id, str) and p.id and isinstance(p.text, str) and p.text.strip() for p in prompts)
    assert len({p.id for p in prompts}) == len({p.text for p in prompts}) == len(prompts) == len(rows)


# ---------------------------------------------------------------- win-rate keys and sheets
@st.composite
def winrate_files(draw):
    """A usable key and sheet (each item once in the key; each rater picks once per item), then maybe one damage."""
    items = draw(st.lists(st.sampled_from(["i1", "i2", "i3", "i4", "i5"]), min_size=1, max_size=5, unique=True))
    key = [(i, draw(st.sampled_from(["p1", "p2"])), draw(st.sampled_from(["A", "B", "a", "b", " A "]))) for i in items]
    pairs = draw(st.lists(st.tuples(st.sampled_from(items), st.sampled_from(["r1", "r2"])), min_size=1, max_size=8,
                          unique=True))
    choices = [(i, draw(st.sampled_from(["A", "B", "b", ""])), r) for i, r in pairs]
    damage = draw(st.sampled_from(["none", "none", "side", "blank side", "blank prompt", "key twice", "choice twice",
                                   "unknown item", "no choices"]))
    if damage == "side":
        key[0] = (key[0][0], key[0][1], draw(st.sampled_from(["X", "AB", "1"])))
    elif damage == "blank side":
        key[0] = (key[0][0], key[0][1], "")
    elif damage == "blank prompt":
        key[-1] = (key[-1][0], "", key[-1][2])
    elif damage == "key twice":
        key.append((key[0][0], key[0][1], draw(st.sampled_from(["A", "B"]))))
    elif damage == "choice twice":
        choices.append((choices[0][0], "A", choices[0][2]))
    elif damage == "unknown item":
        choices.append(("i9", "A", "r1"))
    elif damage == "no choices":
        choices = [(i, "", r) for i, _, r in choices]
    return key, choices


@SETTINGS
@given(files=winrate_files())
def test_winrate_import_is_right_or_one_user_error(tmp_path_factory, files):
    from pipeline.cli import winrate_import

    key, choices = files
    folder = tmp_path_factory.mktemp("w")
    pd.DataFrame(key, columns=["item", "prompt_id", "tuned"]).to_csv(folder / "k.csv", index=False)
    pd.DataFrame(choices, columns=["item", "choice", "rater"]).to_csv(folder / "s.csv", index=False)
    truth = expected_winrate(key, choices)
    try:
        winrate_import([str(folder / "s.csv")], str(folder / "k.csv"), str(folder / "w.json"), 0)
    except UserError as e:
        assert "\n" not in str(e) and not (folder / "w.json").exists()
        assert truth is None, f"refused usable files: {e}"
        event("refused")
        return
    event("accepted")
    assert truth is not None, "accepted a key or sheet that an independent check refuses"
    got = json.loads((folder / "w.json").read_text())
    assert got["mean"] == pytest.approx(truth)


def expected_winrate(key, choices) -> float | None:
    """The human win rate computed independently, or None where the files are not usable."""
    side = {}
    for item, prompt, tuned in key:
        if item in side or not prompt or tuned.strip().upper() not in ("A", "B"):
            return None
        side[item] = (prompt, tuned.strip().upper())
    made = [(i, c.upper(), r) for i, c, r in choices if c]
    if not made or len({(i, r) for i, _, r in made}) < len(made) or any(i not in side for i, _, _ in made):
        return None
    per = {}
    for item, choice, _ in made:
        per.setdefault(side[item][0], []).append(choice == side[item][1])
    return float(np.mean([np.mean(v) for v in per.values()]))


# ---------------------------------------------------------------- long ratings files
@st.composite
def long_ratings(draw):
    """Ratings of 10-14 items by up to 4 raters (one each per item), then maybe one damage."""
    n = draw(st.integers(10, 14))
    rows = [(i, r, str(draw(st.integers(1, 7)))) for i in range(n) for r in range(draw(st.integers(1, 4)))]
    damage = draw(st.sampled_from(["none", "none", "repeat", "cell"]))
    if damage == "repeat":
        i, r, _ = draw(st.sampled_from(rows))
        rows.append((i, r, str(draw(st.integers(1, 7)))))
    elif damage == "cell":
        k = draw(st.integers(0, len(rows) - 1))
        rows[k] = (rows[k][0], rows[k][1], draw(st.sampled_from(["", "nan", "inf", "x", "-inf"])))
    return rows


@SETTINGS
@given(rows=long_ratings())
def test_long_ratings_are_per_item_means_or_one_user_error(tmp_path_factory, rows):
    from pipeline.ratings import load_ratings

    path = tmp_path_factory.mktemp("r") / "long.csv"
    path.write_text("item,rater,rating\n" + "".join(f"i{i},r{r},{v}\n" for i, r, v in rows))
    usable = (len({(i, r) for i, r, _ in rows}) == len(rows) and all(v.strip() for _, _, v in rows)
              and all(np.isfinite(float(v)) if v not in ("x",) else False for _, _, v in rows if v.strip()))
    usable = usable and len({v for _, _, v in rows}) > 1
    try:
        items = load_ratings(str(path)).items
    except UserError as e:
        assert "\n" not in str(e)
        assert not usable or "same rating" in str(e), f"refused a usable file: {e}"
        event("refused")
        return
    event("accepted")
    assert usable, "accepted a file with a repeated (item, rater) or a cell that is no finite number"
    values = [(i, r, float(v)) for i, r, v in rows]
    truth = pd.DataFrame(values, columns=["item", "rater", "rating"]).groupby("item")["rating"].agg(["mean", "size"])
    got = items.set_index("id")
    for item, row in truth.iterrows():
        assert got.loc[f"i{item}", "rating"] == pytest.approx(row["mean"])
        assert got.loc[f"i{item}", "n_ratings"] == row["size"]


# ---------------------------------------------------------------- damaged manifests
def valid_manifest(root) -> dict:
    (root / "sample_space" / "abc").mkdir(parents=True)
    return {"recipe": "tiny", "stages": {"sample_space": {"path": "sample_space/abc", "fingerprint": "abc",
                                                          "complete": True, "inputs": {}},
                                         "spmcmc": {"path": "spmcmc/def.partial", "fingerprint": "def",
                                                    "complete": False, "inputs": {"sample_space": "abc"}}}}


DAMAGE = st.sampled_from([
    lambda m: m["stages"]["sample_space"].pop("complete"), lambda m: m["stages"]["sample_space"].pop("path"),
    lambda m: m["stages"]["sample_space"].update(path="/etc"), lambda m: m["stages"]["spmcmc"].update(path="../.."),
    lambda m: m["stages"]["sample_space"].update(complete="yes"), lambda m: m["stages"].update(spmcmc=[1, 2]),
    lambda m: m.update(stages=[]), lambda m: m.pop("stages"), lambda m: m["stages"]["spmcmc"].update(fingerprint=7),
    lambda m: m["stages"]["spmcmc"].update(inputs="abc"), lambda m: None])


@SETTINGS
@given(damage=st.lists(DAMAGE, min_size=1, max_size=3))
def test_a_damaged_manifest_is_read_or_refused_in_one_line(tmp_path_factory, damage):
    from pipeline.artifacts import current, read_manifest

    root = tmp_path_factory.mktemp("m")
    manifest = valid_manifest(root)
    for d in damage:
        try:
            d(manifest)
        except (KeyError, AttributeError, TypeError):
            pass  # an earlier damage removed what this one changes
    (root / "manifest.json").write_text(json.dumps(manifest))
    try:
        stages = read_manifest(root)["stages"]
    except UserError as e:
        assert "\n" not in str(e)
    else:
        for entry in stages.values():
            assert entry["path"].startswith(str(root)) and isinstance(entry["complete"], bool)
    from pipeline.artifacts import Run
    from pipeline.config import load_config

    run = Run(load_config(["recipe=tiny", f"output_dir={root}"]))
    previous = run._previous_stages()  # what a new run of the pipeline starts from: never a crash
    assert isinstance(current(previous, 1), dict)


# ---------------------------------------------------------------- ratings of prompt sets: prompt text, rating scale
FORMS = {"as written": lambda p: p, "trailing space": lambda p: p + " ", "leading spaces": lambda p: "  " + p,
         "NFD": lambda p: __import__("unicodedata").normalize("NFD", p)}


@SETTINGS
@given(forms=st.lists(st.sampled_from(sorted(FORMS)), min_size=12, max_size=12),
       prompt=st.sampled_from(["Caption this café cartoon.", "Écrivez une légende.", "Tell me a joke."]))
def test_one_prompt_written_several_ways_is_one_prompt(tmp_path_factory, forms, prompt):
    """Without prompt_id, a prompt text with a trailing space or in NFD instead of NFC is the same prompt (it was
    split into another, and the noise ceiling fell with it)."""
    import unicodedata

    from pipeline.ratings import load_ratings

    path = tmp_path_factory.mktemp("forms") / "r.csv"
    pd.DataFrame({"text": [f"caption {k}" for k in range(12)], "rating": [k % 3 + 1 for k in range(12)],
                  "prompt": [FORMS[f](prompt) for f in forms]}).to_csv(path, index=False)
    items = load_ratings(str(path)).items
    assert items["prompt_id"].nunique() == 1
    assert set(items["prompt"]) == {unicodedata.normalize("NFC", prompt)}


@SETTINGS
@given(ratings=st.lists(st.integers(0, 6), min_size=12, max_size=12), scale=st.sampled_from([(1, 3), (1, 5), (0, 6)]))
def test_a_rating_outside_the_scale_is_one_user_error_and_only_then(tmp_path_factory, ratings, scale):
    from pipeline.ratings import check_scale, load_ratings

    path = tmp_path_factory.mktemp("scale") / "r.csv"
    pd.DataFrame({"item": [f"i{k // 2}" for k in range(12)], "rater": [f"r{k % 2}" for k in range(12)],
                  "rating": ratings}).to_csv(path, index=False)
    try:
        loaded = load_ratings(str(path))
    except UserError:
        event("refused before the scale (too few items or no spread)")
        return
    outside = [r for r in ratings if not scale[0] <= r <= scale[1]]
    if outside:
        with pytest.raises(UserError, match=rf"rating {outside[0]} of item 'i\d+' \(row \d+\) is outside"):
            check_scale(loaded, list(scale))
    else:
        check_scale(loaded, list(scale))


def test_the_same_prompt_under_two_ids_is_said_to_be_pooled_as_two(tmp_path, capsys):
    from pipeline.ratings import load_ratings

    path = tmp_path / "r.csv"
    pd.DataFrame({"text": [f"caption {k}" for k in range(12)], "rating": [k % 3 + 1 for k in range(12)],
                  "prompt": ["Caption this."] * 12, "prompt_id": ["a"] * 6 + ["b"] * 6}).to_csv(path, index=False)
    assert load_ratings(str(path)).items["prompt_id"].nunique() == 2
    assert "the prompt 'Caption this.' has 2 ids ('a', 'b'); they are pooled as 2 independent prompts" \
        in capsys.readouterr().out
