import pandas as pd
import pytest

from conftest import run_pipeline, tiny_config
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
    assert "is not a number" in capsys.readouterr().err
