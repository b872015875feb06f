"""The evaluate stage (pipeline/stages/evaluate.py) on the tiny model: W&B offline, the README's main command,
one evaluator."""

import json
import shutil

import pytest
from datasets import load_from_disk

from conftest import REPO, run_cli, run_pipeline, stage_paths, tiny_config
from pipeline import tracking


def test_stage_on_tiny_model_with_wandb_offline(tmp_path, monkeypatch):
    logged = {}
    original = tracking.summary
    monkeypatch.setattr(tracking, "summary", lambda metrics: (logged.update(metrics), original(metrics)))
    monkeypatch.setenv("WANDB_API_KEY", "secret-key-do-not-leak-0123456789")
    run_pipeline(tiny_config(tmp_path, "stages=[evaluate]", "wandb.mode=offline"))
    path = stage_paths(tmp_path)["evaluate"]
    ds = load_from_disk(str(path / "dataset"))
    metrics = ds["metrics"]
    assert {"evaluator", "model", "n_items", "pearson_r", "pearson_p", "pearson_ci_low", "pearson_ci_high",
            "spearman_r", "spearman_p", "kendall_tau", "precision_at_k"} <= set(metrics.column_names)
    assert set(metrics["model"]) == {"base"} and set(metrics["n_items"]) == {12}
    assert {"spmcmc", "spmcmc_frequency", "direct_rating", "p_true", "logprob", "self_certainty", "random"} <= \
        set(metrics["evaluator"])
    assert ds["scores"].num_rows == 12 * metrics.num_rows
    for key in ("eval/base/spmcmc/spearman_r", "eval/base/p_true/pearson_r", "eval/noise_ceiling"):
        assert key in logged
    assert list((tmp_path / "wandb").glob("offline-run-*"))  # the offline run is stored under output_dir
    assert (tmp_path / "report.md").read_text().startswith("# spMCMC evaluation report")
    for f in [*path.rglob("*.json"), *path.rglob("*.md"), *(tmp_path / "wandb").rglob("*.log")]:
        assert "secret-key-do-not-leak" not in f.read_text(errors="ignore")


@pytest.mark.slow
def test_readme_main_command_on_tiny_model(readme_run, tmp_path):
    """The README's launch command, in a subprocess, on the tiny model: all five stages."""
    out, proc = readme_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["sample_space", "spmcmc", "preferences", "finetune", "evaluate"]
    assert all(entry["complete"] for entry in manifest["stages"].values())
    paths = stage_paths(out)
    for path in paths.values():
        load_from_disk(str(path / "dataset"))
    metrics = load_from_disk(str(paths["evaluate"] / "dataset"))["metrics"]
    assert set(metrics["model"]) == {"base", "finetuned"}
    assert "## Before and after fine-tuning" in (out / "report.md").read_text()
    copy = shutil.copytree(out, tmp_path / "again")
    launcher = ["accelerate", "launch", "--config_file", str(REPO / "accelerate_config.yaml")]
    again = run_cli("recipe=tiny", f"output_dir={copy}", launcher=launcher)
    assert again.stdout.count("up to date") == 5


def test_one_evaluator_is_enough(tmp_path):
    run_pipeline(tiny_config(tmp_path, "stages=[evaluate]", "evaluate.evaluators=[random]"))
    ds = load_from_disk(str(stage_paths(tmp_path)["evaluate"] / "dataset"))
    assert set(ds["metrics"]["evaluator"]) == {"random"} and ds["comparisons"].num_rows == 0
    assert "diff" in ds["comparisons"].column_names
