"""Kill at any moment and lose nothing; every bad input gets one clear line; same seed, same bytes."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from safetensors.numpy import load_file

from conftest import (
    EVERYWHERE,
    EVERYWHERE_KILLS,
    TINY,
    assert_one_error_line,
    dataset_files,
    prompt_args,
    run_cli,
    run_main,
    stage_paths,
    tiny_config,
)
from pipeline.artifacts import MARKER

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


@pytest.mark.slow
def test_two_processes_killed_and_resumed_give_the_one_process_artifacts(three_prompts, tmp_path):
    """A prompt set in 2 processes (gloo; started with the environment torchrun gives its ranks, forked from the warm
    interpreter: tests/warm_start.py), killed in generation and resumed, ends with the dataset bytes of the
    one-process run of the same command for every stage it computes: sample_space (chunks, greedy blocks and scores
    split across processes), spmcmc (the design's chunks), preferences and evaluate (the win rate's answers and
    judging, the rated items' forward passes). Finetune's artifact is the one-process run's, copied: a second
    process trains on its own batches (DDP), which is tested, under torchrun itself, in tests/test_finetune.py."""

    args = ["recipe=tiny", *prompt_args(three_prompts.parent / "prompts.csv"), "evaluate.winrate_samples=3"]
    out = tmp_path / "out"
    out.mkdir()
    shutil.copytree(three_prompts / "finetune", out / "finetune")
    killed = run_cli(*args, f"output_dir={out}", ranks=2, env={"SPMCMC_KILL_AT": "sample_space.chunk:2"})
    assert killed.returncode != 0 and not list((out / "sample_space").glob(f"*/{MARKER}")), killed.stderr[-2000:]
    chunks = list((out / "sample_space").glob("*.partial/_state/chunks/chunk_*.json"))
    assert 0 < len(chunks) < 9, chunks  # a process killed after its second chunk: the others are stopped with it
    resumed = run_cli(*args, f"output_dir={out}", ranks=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, ref = stages(out), stages(three_prompts)
    for stage in ("sample_space", "spmcmc", "preferences", "evaluate"):
        assert json.loads((got[stage] / "meta.json").read_text())["world_size"] == 2, stage
        assert dataset_files(got[stage]) == dataset_files(ref[stage]), stage
    assert "[finetune] up to date" in resumed.stdout
    assert work(got["sample_space"], "generated_chunk") == 9  # the two saved chunks were not generated again


@pytest.mark.slow  # a fresh interpreter by design: the hub's settings are read at import
def test_no_network_is_needed(tmp_path):
    """With hub access allowed but unreachable, a run on local weights never tries it."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc = run_cli("recipe=tiny", f"output_dir={tmp_path}", "stages=[sample_space]", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_tests_commands_run_warm_whatever_pytest_sets_for_each_test():
    """What pytest sets per test phase (PYTEST_CURRENT_TEST) and what the pipeline reads at run time do not send a
    command to a fresh interpreter: before this, only the commands of the test that started a worker's warm
    interpreter ran warm, and every other one paid ~10 s of imports. A variable libraries read at import does."""
    from conftest import _Warm

    run_time = {"PYTEST_CURRENT_TEST": "tests/test_x.py::another (call)", "SPMCMC_KILL_AT": "finalise:1",
                "PYTHONUNBUFFERED": "1"}
    assert _Warm.fits({**os.environ, **run_time})
    assert not _Warm.fits({**os.environ, **run_time, "HF_ENDPOINT": "http://127.0.0.1:9"})


def test_trust_remote_code_is_off_by_default():
    assert tiny_config("x").model.trust_remote_code is False


def adapter_weights(out: Path) -> dict:
    return load_file(str(stage_paths(out)["finetune"] / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_a_checkpoint_cut_short_is_set_aside_and_the_one_before_resumed(finished, killed, tmp_path):
    """Killed after its second checkpoint; that checkpoint's trainer_state.json is then lost (what a full disk
    leaves): the resume removes it, says so, resumes from checkpoint-1 and ends with the uninterrupted adapter."""
    out = killed.copy(EVERYWHERE, EVERYWHERE_KILLS, tmp_path / "out")
    (state,) = out.glob("finetune/*.partial/_state/dpo/checkpoint-2/trainer_state.json")
    state.unlink()
    proc = run_main(*EVERYWHERE, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checkpoint-2 was not written to the end" in proc.stdout and "checkpoint-1" in proc.stdout
    a, b = adapter_weights(out), adapter_weights(finished(*EVERYWHERE))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in b)


@pytest.mark.slow
def test_a_full_disk_stops_in_one_line_and_resumes_once_space_is_freed(finished, tmp_path):
    """The real command on a 3 MB tmpfs: the finetune checkpoint does not fit. One error line naming the folder,
    nothing marked complete that is not; copied to a disk with room, the same command finishes the run, with the
    artifacts of an uninterrupted one."""
    small, args = tmp_path / "small", [*TINY, "stages=[sample_space,spmcmc,preferences,finetune]"]
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(small)], capture_output=True).returncode:
        pytest.skip("cannot mount a 3 MB tmpfs here (needs root): the full disk is not simulated")
    try:
        proc = run_cli(*args, f"output_dir={small / 'out'}")
        shutil.copytree(small / "out", tmp_path / "freed", ignore=shutil.ignore_patterns(".lock"))
    finally:
        subprocess.run(["umount", str(small)], check=True)
    assert_one_error_line(proc, f"no space left on the device that holds {small / 'out'}")
    assert not list((tmp_path / "freed" / "finetune").glob(f"*/{MARKER}"))
    resumed = run_main(*args, f"output_dir={tmp_path / 'freed'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, ref = stage_paths(tmp_path / "freed"), stage_paths(finished(*TINY))
    for stage in ("sample_space", "spmcmc", "preferences"):
        assert dataset_files(got[stage]) == dataset_files(ref[stage]), stage
    a, b = adapter_weights(tmp_path / "freed"), adapter_weights(finished(*TINY))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in b)
