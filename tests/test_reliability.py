"""Kill at any moment and lose nothing; every bad input gets one clear line; same seed, same bytes."""

import json
import signal
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from safetensors.numpy import load_file

from conftest import dataset_files, run_cli, tiny_config
from pipeline.artifacts import MARKER, Run

ARGS = ["recipe=tiny", "sample_space.num_samples=20", "sample_space.chunk_size=5", "spmcmc.iterations=60",
        "finetune.save_steps=1"]
# (kill point, what was under way): generation, the exact fill, the chains, training, finalising
KILL_POINTS = ["sample_space.chunk:2", "finalise:2", "spmcmc.exact_chunk:1", "spmcmc.step:30", "finetune.save:2"]
STAGES = ["sample_space", "spmcmc", "preferences", "finetune", "evaluate"]


def stages(out: Path) -> dict[str, Path]:
    return {k: Path(v["path"]) for k, v in json.loads((out / "manifest.json").read_text())["stages"].items()}


def work(path: Path, event: str) -> int:
    lines = (path / "work_log.jsonl").read_text().splitlines() if (path / "work_log.jsonl").exists() else []
    return sum(e["count"] for e in map(json.loads, lines) if e["event"] == event)


@pytest.fixture(scope="module")
def clean_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    for name in ("a", "b"):
        proc = run_cli(*ARGS, f"output_dir={root / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    return stages(root / "a"), stages(root / "b")


@pytest.mark.slow
def test_same_seed_gives_byte_identical_datasets(clean_runs):
    a, b = clean_runs
    for stage in STAGES:
        assert dataset_files(a[stage]) == dataset_files(b[stage]), stage


@pytest.mark.slow
def test_killed_everywhere_resumes_to_the_same_artifacts_without_redoing_work(clean_runs, tmp_path):
    out = tmp_path / "killed"
    for point in KILL_POINTS:
        proc = run_cli(*ARGS, f"output_dir={out}", env={"SPMCMC_KILL_AT": point})
        assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
    final = run_cli(*ARGS, f"output_dir={out}")  # the stale lock of the killed runs is no obstacle
    assert final.returncode == 0, final.stderr[-3000:]
    got, ref = stages(out), clean_runs[0]
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


def test_second_run_on_an_active_output_dir_is_refused(tmp_path):
    with Run(tiny_config(tmp_path)):
        proc = run_cli("recipe=tiny", f"output_dir={tmp_path}", "stages=[sample_space]", timeout=120)
    assert proc.returncode == 2 and "another run is active" in proc.stderr and "Traceback" not in proc.stderr


def one_candidate_pool(tmp_path):
    pool = tmp_path / "one.csv"
    pool.write_text("text\nOnly one joke here.\n")
    return [f"sample_space.extra_path={pool}", "sample_space.only_extra=true"]


def no_template_model(tmp_path, tiny_model_dir):
    import shutil

    copy = tmp_path / "no_template"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "chat_template.jinja").unlink()
    config = json.loads((copy / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    return [f"model.name_or_path={copy}"]


BAD_INPUTS = [
    ("unknown recipe", lambda t, m: ["recipe=jokes"], "unknown recipe 'jokes'", None),
    ("misspelled key", lambda t, m: ["spmcmc.iteration=5"], "did you mean 'spmcmc.iterations'", None),
    ("wrong type", lambda t, m: ["spmcmc.num_chains=two"], "spmcmc.num_chains", None),
    ("negative iterations", lambda t, m: ["spmcmc.iterations=-5"], "spmcmc.iterations: must be >= 1", None),
    ("temperature <= 0", lambda t, m: ["sample_space.temperature=0"], "sample_space.temperature: must be > 0", None),
    ("empty prompt", lambda t, m: ["sample_space.query= "], "sample_space.query: must not be empty", None),
    ("missing model path", lambda t, m: ["model.name_or_path=/nowhere/model"], "does not exist", "sample_space"),
    ("model not on this machine", lambda t, m: ["model.name_or_path=nobody/no-such-model"], "never downloads",
     "sample_space"),
    ("no chat template", no_template_model, "has no chat template", "sample_space"),
    ("multi-token labels", lambda t, m: ["judge.labels=[Apple pie,B]", "stages=[sample_space,spmcmc]"],
     "judge label 'Apple pie' is 2 tokens", "spmcmc"),
    ("empty sample space", lambda t, m: ["sample_space.min_chars=100000"], "empty sample space", "sample_space"),
    ("one candidate", lambda t, m: one_candidate_pool(t), "needs at least 2 candidates", "spmcmc"),
    ("ratings file missing", lambda t, m: ["stages=[evaluate]", "evaluate.human_ratings=/nowhere.csv"],
     "does not exist", "evaluate"),
    ("unwritable output_dir", lambda t, m: ["output_dir=/proc/spmcmc-out"], "is not writable", None),
]


@pytest.mark.parametrize("name, extra, message, stage", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_one_clear_line(tmp_path, tiny_model_dir, name, extra, message, stage):
    proc = run_cli("recipe=tiny", f"output_dir={tmp_path / 'out'}", *extra(tmp_path, tiny_model_dir), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
    if stage:
        assert not list((tmp_path / "out" / stage).glob(f"*/{MARKER}"))  # nothing half-done marked complete


def test_no_network_is_needed(tmp_path):
    """With hub access allowed but unreachable, a run on local weights never tries it."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "0"}
    proc = run_cli("recipe=tiny", f"output_dir={tmp_path}", "stages=[sample_space]", env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_trust_remote_code_is_off_by_default():
    assert tiny_config("x").model.trust_remote_code is False
