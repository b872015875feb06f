"""pipeline/tracking.py: W&B never stops a run, and offline it writes only under the output dir."""

from pathlib import Path

import pytest

from conftest import TINY, run_cli


@pytest.mark.parametrize("env", [pytest.param({"WANDB_API_KEY": ""}, id="no api key", marks=pytest.mark.slow),
                                 pytest.param({"WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"},
                                              id="no network", marks=pytest.mark.slow)])  # waits out W&B's timeout
def test_wandb_online_falls_back_to_offline(tmp_path, env):
    env = {**env, "NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
           "WANDB_INIT_TIMEOUT": "3"}  # W&B's own setting, honoured by the pipeline: the test waits 3 s, not 15
    proc = run_cli(*TINY, f"output_dir={tmp_path}", "stages=[sample_space]", "wandb.mode=online", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("[wandb] warning:")]
    assert len(warnings) == 1 and "logging offline" in warnings[0], proc.stdout[-2000:]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


def test_wandb_offline_writes_only_under_the_output_dir(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    env = {"HOME": str(home), "SPMCMC_CACHE": str(Path.home() / ".cache" / "spmcmc-pipeline")}  # the built models
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'out'}", "stages=[sample_space]", "wandb.mode=offline", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert not [p for p in home.rglob("*") if "wandb" in p.name]
