"""scripts/dose_response.py: the grid checked before any run, --out relative to where it is run."""

import os

import pytest

from conftest import REPO, assert_one_error_line, command


def dose_response(*args, cwd):
    return command([str(REPO / "scripts" / "dose_response.py"), *args], cwd, dict(os.environ), 600)


@pytest.mark.parametrize("item", ["1e-3:1", "fast:2:0.1", "5e-4:0:0.1", "5e-4:2:0.1:7"])
def test_a_malformed_grid_item_stops_before_any_run(tmp_path, item):
    proc = dose_response("--recipe", "tiny", "--out", "out", "--grid", "5e-4:1:0.1", item, cwd=tmp_path)
    assert_one_error_line(proc, f"--grid item {item!r} must be lr:epochs:beta")
    assert not (tmp_path / "out").exists()  # the valid item before it did not run


@pytest.mark.slow
def test_a_relative_out_is_read_from_where_the_script_runs(tmp_path):
    proc = dose_response("--recipe", "tiny", "--out", "rel/out", "--grid", "5e-4:1:0.1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "rel" / "out" / "manifest.json").is_file()
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| 5e-4 |")]
    assert len(rows) == 1 and rows[0].count("|") == 11
