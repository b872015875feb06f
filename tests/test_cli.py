"""pipeline/cli.py: `spmcmc inspect`, `annotate` (rating sheets and blind win-rate sheets) and their one-line errors."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, TINY, assert_one_error_line, run_main, run_pipeline, spmcmc_cli, stage_paths, tiny_config, write
from pipeline.cli import main
from pipeline.ratings import load_ratings


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    run_pipeline(tiny_config(out, "stages=[sample_space]", "sample_space.num_samples=24", "sample_space.chunk_size=8"))
    return out


def test_inspect(run_dir, capsys):
    assert main(["inspect", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "sample_space  complete" in out and "columns: id, prompt_id, prompt, text, count" in out
    assert main(["inspect", str(run_dir), "spmcmc"]) == 2


def test_annotate_round_trip_gives_a_ratings_file(run_dir, tmp_path):
    sheet = tmp_path / "sheet.csv"
    assert main(["annotate", "export", str(run_dir), "--out", str(sheet)]) == 0
    blank = pd.read_csv(sheet)
    assert blank["rating"].isna().all() and len(blank) >= 10
    for rater, offset in (("ann", 0), ("bob", 1)):
        blank.assign(rating=[(i + offset) % 7 + 1 for i in range(len(blank))]).to_csv(tmp_path / f"{rater}.csv",
                                                                                       index=False)
    out = tmp_path / "ratings.jsonl"
    assert main(["annotate", "import", str(tmp_path / "ann.csv"), str(tmp_path / "bob.csv"), "--out", str(out)]) == 0
    ratings = load_ratings(str(out))
    assert len(ratings.items) == len(blank) and set(ratings.items["n_ratings"]) == {2}
    assert set(ratings.long["rater"]) == {"ann", "bob"}


def test_annotate_import_rejects_non_numeric(tmp_path, capsys):
    pd.DataFrame({"id": [1], "text": ["a"], "rating": ["funny"]}).to_csv(tmp_path / "s.csv", index=False)
    assert main(["annotate", "import", str(tmp_path / "s.csv"), "--out", str(tmp_path / "r.csv")]) == 2
    assert "rating 'funny' is not a finite number" in capsys.readouterr().err


@pytest.fixture(scope="module")
def space_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("space")
    run_pipeline(tiny_config(out, "stages=[sample_space]"))
    return out


def test_annotate_out_in_a_missing_folder(space_dir, tmp_path):
    assert_one_error_line(spmcmc_cli("annotate", "export", str(space_dir), "--out", "/missing-dir/x.csv"),
                          "folder '/missing-dir' does not exist")
    sheet = write(tmp_path / "s.csv", "id,text,rating\n1,a,3\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(sheet), "--out", "/missing-dir/x.csv"),
                          "folder '/missing-dir' does not exist")


def test_annotate_import_refuses_double_counting(tmp_path):
    sheet = write(tmp_path / "ann.csv", "id,text,rating\n1,a,3\n2,b,4\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(sheet), str(sheet), "--out", str(tmp_path / "r.csv")),
                          "is given twice")
    dup = write(tmp_path / "dup.csv", "id,text,rating,rater\n1,a,3,bob\n1,a,5,bob\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(dup), "--out", str(tmp_path / "r.csv")),
                          "rater 'bob' rated item '1' 2 times")


def test_inspect_a_relative_output_dir_from_elsewhere(tmp_path):
    relative = f"output_dir={Path('runs') / tmp_path.name}"  # relative to the repo
    assert run_main(*TINY, "stages=[sample_space]", relative).returncode == 0
    try:
        proc = spmcmc_cli("inspect", str(REPO / "runs" / tmp_path.name), cwd=tmp_path)
        assert proc.returncode == 0 and "sample_space  complete" in proc.stdout, proc.stderr[-2000:]
    finally:
        shutil.rmtree(REPO / "runs" / tmp_path.name, ignore_errors=True)


def test_inspect_a_damaged_manifest(space_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(space_dir, copy)
    write(copy / "manifest.json", "{not json")
    assert_one_error_line(spmcmc_cli("inspect", str(copy)), "manifest.json is damaged")


def winrate_files(tmp_path, key_rows: str, choices: str = "item,choice\na-0,A\nb-0,A\n"):
    key = write(tmp_path / "w.key.csv", "item,prompt_id,tuned\n" + key_rows)
    sheet = write(tmp_path / "rater1.csv", choices)
    return ["annotate", "import", "--winrate", "--key", str(key), str(sheet), "--out", str(tmp_path / "w.json")]


@pytest.mark.parametrize("rows, message", [
    ("a-0,a,X\nb-0,b,A\n", "item 'a-0' has tuned='X'; it must be A or B"),
    ("a-0,a,\nb-0,b,A\n", "item 'a-0' has tuned=''; it must be A or B"),
    ("a-0,a,A\nb-0,b,A\na-0,a,A\n", "item 'a-0' is listed twice"),
    ("a-0,a,A\nb-0,b,A\na-0,a,B\n", "item 'a-0' is listed twice"),
    ("a-0,,A\nb-0,b,A\n", "row 1 has no prompt_id"),
], ids=["unknown side", "blank side", "duplicate row", "contradicting rows", "blank prompt id"])
def test_a_damaged_winrate_key_is_refused(tmp_path, rows, message):
    assert_one_error_line(spmcmc_cli(*winrate_files(tmp_path, rows)), message)
    assert not (tmp_path / "w.json").exists()


def test_a_lower_case_winrate_key_reads_as_upper_case(tmp_path):
    proc = spmcmc_cli(*winrate_files(tmp_path, "a-0,a,a\nb-0,b,a\n"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "w.json").read_text())["mean"] == 1.0  # the tuned answer was picked every time


def test_winrate_sheets_without_choices_are_one_line(tmp_path):
    proc = spmcmc_cli(*winrate_files(tmp_path, "a-0,a,A\nb-0,b,A\n", "item,choice\na-0,\nb-0, \n"))
    assert_one_error_line(proc, "the sheets hold no choices")
    assert not (tmp_path / "w.json").exists()


def test_annotate_import_refuses_infinite_ratings(tmp_path):
    sheet = write(tmp_path / "s.csv", "id,text,rating\n1,a,inf\n2,b,1e309\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(sheet), "--out", str(tmp_path / "r.csv")),
                          "rating 'inf' is not a finite number")


def test_inspect_and_export_of_a_stage_without_its_dataset(space_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(space_dir, copy)
    shutil.rmtree(stage_paths(copy)["sample_space"] / "dataset")
    proc = spmcmc_cli("inspect", str(copy))
    assert proc.returncode == 0 and "sample_space  damaged" in proc.stdout and "Traceback" not in proc.stderr
    assert_one_error_line(spmcmc_cli("annotate", "export", str(copy), "--out", str(tmp_path / "s.csv")),
                          "stage has missing or damaged dataset files")


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("complete"), "entry 'sample_space' lacks a path, fingerprint or complete flag"),
    (lambda e: e.update(path="/etc"), "entry 'sample_space' points outside the output_dir"),
    (lambda e: e.update(path="../../.."), "entry 'sample_space' points outside the output_dir"),
], ids=["no complete flag", "absolute path", "path upwards"])
def test_inspect_a_manifest_entry_that_is_damaged(space_dir, tmp_path, change, message):
    copy = tmp_path / "copy"
    shutil.copytree(space_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest["stages"]["sample_space"])
    write(copy / "manifest.json", json.dumps(manifest))
    assert_one_error_line(spmcmc_cli("inspect", str(copy)), message)


@pytest.mark.slow
def test_blind_winrate_sheets_round_trip(three_prompts, tmp_path):
    from pipeline.cli import main

    sheet = tmp_path / "w.csv"
    assert main(["annotate", "export", str(three_prompts), "--winrate", "--out", str(sheet)]) == 0
    blank, key = pd.read_csv(sheet), pd.read_csv(tmp_path / "w.key.csv")
    assert len(blank) == 3 and "tuned" not in blank.columns and set(key["tuned"]) <= {"A", "B"}
    tuned = dict(zip(key["item"], key["tuned"]))
    blank.assign(choice=[tuned[i] for i in blank["item"]]).to_csv(tmp_path / "ann.csv", index=False)  # always tuned
    out = tmp_path / "human.json"
    assert main(["annotate", "import", "--winrate", "--key", str(tmp_path / "w.key.csv"), str(tmp_path / "ann.csv"),
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["mean"] == 1.0 and result["choices"] == 3 and result["raters"] == 1
