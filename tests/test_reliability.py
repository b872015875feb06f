"""Kill at any moment and lose nothing; every bad input gets one clear line; same seed, same bytes."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from safetensors.numpy import load_file

from conftest import EVERYWHERE, dataset_files, run_cli, stage_paths, tiny_config

STAGES = ["sample_space", "spmcmc", "preferences", "finetune", "evaluate"]


def stages(out: Path) -> dict[str, Path]:
    return stage_paths(out)


def work(path: Path, event: str) -> int:
    lines = (path / "work_log.jsonl").read_text().splitlines() if (path / "work_log.jsonl").exists() else []
    return sum(e["count"] for e in map(json.loads, lines) if e["event"] == event)


@pytest.mark.slow
def test_same_seed_gives_byte_identical_datasets(finished, readme_run):
    """The shared run (in the test process) and the README's command in a fresh interpreter (accelerate launch):
    the same bytes."""
    out, proc = readme_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = stages(finished("recipe=tiny")), stages(out)
    for stage in STAGES:
        assert dataset_files(a[stage]) == dataset_files(b[stage]), stage


@pytest.mark.slow
def test_killed_everywhere_resumes_to_the_same_artifacts_without_redoing_work(finished, resumed_everywhere):
    out, final = resumed_everywhere
    assert final.returncode == 0, final.stderr[-3000:]
    got, ref = stages(out), stages(finished(*EVERYWHERE))
    for stage in ("sample_space", "spmcmc", "preferences"):
        assert dataset_files(got[stage]) == dataset_files(ref[stage]), stage
    a = load_file(str(got["finetune"] / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(ref["finetune"] / "adapter" / "adapter_model.safetensors"))
    assert all(np.allclose(a[k], b[k], atol=1e-6) for k in b)
    m_got = load_from_disk(str(got["evaluate"] / "dataset"))["metrics"].to_pandas()
    m_ref = load_from_disk(str(ref["evaluate"] / "dataset"))["metrics"].to_pandas()
    assert np.allclose(m_got["spearman_r"].astype(float), m_ref["spearman_r"].astype(float), atol=1e-3,
                       equal_nan=True)
    # nothing finished was done twice
    assert work(got["sample_space"], "generated_chunk") == 4
    pairs = load_from_disk(str(got["spmcmc"] / "dataset"))["pairs"].num_rows
    assert work(got["spmcmc"], "judge_comparisons") == pairs
    steps = json.loads((got["finetune"] / "summary.json").read_text())["optimizer_steps"]
    assert work(got["finetune"], "train_step") == steps


def test_no_network_is_needed(tmp_path):
    """With hub access allowed but unreachable, a run on local weights never tries it."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc = run_cli("recipe=tiny", f"output_dir={tmp_path}", "stages=[sample_space]", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_trust_remote_code_is_off_by_default():
    assert tiny_config("x").model.trust_remote_code is False
