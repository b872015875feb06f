"""The finetune stage (pipeline/stages/finetune.py): LoRA-DPO with TRL, SFT warm-up, resume, two processes,
and the checks against the model before training."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from safetensors.numpy import load_file

from conftest import EVERYWHERE, TINY, TORCHRUN_2, assert_one_error_line, run_cli, run_main, stage_paths, tiny_config
from pipeline.artifacts import MARKER, Artifact, StageError
from pipeline.stages import finetune

LIKED = ["banana split", "banana bread", "banana cake", "banana pie", "banana boat", "banana jam"]
DISLIKED = ["zebra crossing", "zebra stripes", "zebra herd", "zebra foal", "zebra crossings", "zebra print"]


def synthetic_preferences(root: Path) -> Artifact:
    """Chosen always one style (banana ...), rejected another (zebra ...); held-out pairs of new texts."""
    msg = lambda role, text: [{"role": role, "content": text}]  # noqa: E731

    def pairs(chosen, rejected, offset):
        return Dataset.from_dict({
            "prompt": [msg("user", "Tell me a joke.")] * len(chosen), "chosen": [msg("assistant", c) for c in chosen],
            "rejected": [msg("assistant", r) for r in rejected], "chosen_id": list(range(offset, offset + len(chosen))),
            "rejected_id": list(range(offset + 50, offset + 50 + len(chosen))),
            "chosen_score": [0.1] * len(chosen), "rejected_score": [0.01] * len(chosen), "margin": [0.09] * len(chosen)})
    train = pairs([f"{c} {i}" for i in range(4) for c in LIKED[:4]], [f"{r} {i}" for i in range(4) for r in DISLIKED[:4]], 0)
    test = pairs([f"{c} {i}" for i in range(3) for c in LIKED[4:]], [f"{r} {i}" for i in range(3) for r in DISLIKED[4:]], 20)
    sft = Dataset.from_dict({"prompt": [msg("user", "Tell me a joke.")] * 2,
                             "completion": [msg("assistant", t) for t in LIKED[:2]], "id": [0, 1], "score": [0.1, 0.1]})
    DatasetDict({"train": train, "test": test, "sft": sft}).save_to_disk(str(root / "prefs" / "dataset"))
    return Artifact("preferences", "synthetic", root / "prefs")


def train(tmp_path, *overrides):
    # 16 training pairs, 8 steps: enough for the held-out texts to turn from all wrong to all right at this rate
    cfg = tiny_config(tmp_path, "finetune.learning_rate=0.05", "finetune.num_epochs=2", "finetune.lora_r=8",
                      "finetune.save_steps=100", *overrides)
    work = tmp_path / "work"
    work.mkdir()
    out = finetune.run(cfg, {"preferences": synthetic_preferences(tmp_path)}, work)
    return out, json.loads((work / "summary.json").read_text()), work


@pytest.mark.slow
def test_dpo_changes_the_adapter_and_learns_a_held_out_preference(tmp_path):
    out, summary, work = train(tmp_path)
    weights = load_file(str(work / "adapter" / "adapter_model.safetensors"))
    assert any(np.abs(v).max() > 0 for k, v in weights.items() if "lora_B" in k)  # B starts at zero
    assert summary["tuned_test_accuracy"] > summary["base_test_accuracy"]
    assert summary["tuned_reward_accuracy"] == 1.0
    assert out["log"].num_rows == summary["optimizer_steps"] and "rewards_margins" in out["log"].column_names
    assert (work / "adapter" / "README.md").read_text().count("base model") == 1


@pytest.mark.slow
def test_sft_warmup_then_dpo_and_merged_export(tmp_path):
    out, summary, work = train(tmp_path, "finetune.sft_first=true", "finetune.num_epochs=1", "finetune.merge=true",
                               "finetune.eval_steps=2", "finetune.eval_pairs=4")
    assert (work / "_state" / "sft_adapter" / "adapter_config.json").is_file()
    assert summary["optimizer_steps"] > 0
    # the held-out curves read a sample of 4 of the 6 test pairs, every 2 steps
    assert summary["test_pairs"] == 6 and summary["eval_pairs"] == 4
    assert out["eval_log"].num_rows == summary["optimizer_steps"] // 2 > 0
    assert (work / "merged" / "config.json").is_file() and not (work / "merged" / "adapter_config.json").exists()


def test_qlora_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="needs a CUDA GPU"):
        train(tmp_path, "finetune.quantization=4bit")


def adapter(out: Path) -> dict:
    path = str(stage_paths(out)["finetune"])
    return load_file(str(Path(path) / "adapter" / "adapter_model.safetensors")), Path(path)


@pytest.mark.slow
def test_resume_from_checkpoint_matches_uninterrupted(finished, resumed_everywhere):
    """The run killed everywhere (the finetune kill is at its second checkpoint, finetune.save:2), resumed."""
    out, resumed = resumed_everywhere
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout, resumed.stderr[-2000:]
    (a, path), (b, _) = adapter(out), adapter(finished(*EVERYWHERE))
    assert a.keys() == b.keys() and all(np.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = json.loads((path / "summary.json").read_text())["optimizer_steps"]
    log = [json.loads(line) for line in (path / "work_log.jsonl").read_text().splitlines()]
    assert sum(e["count"] for e in log if e["event"] == "train_step") == steps  # no step trained twice


@pytest.mark.slow
def test_data_parallel_training_with_two_processes(finished, tmp_path):
    out = finished.copy(TINY, tmp_path / "out")
    shutil.rmtree(out / "finetune")  # the shared run's preferences, trained again by two processes
    proc = run_cli(*TINY, f"output_dir={out}", "stages=[finetune]", "finetune.save_steps=1", launcher=TORCHRUN_2)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, path = adapter(out)
    assert json.loads((path / "meta.json").read_text())["world_size"] == 2
    assert json.loads((path / "summary.json").read_text())["optimizer_steps"] > 0


@pytest.mark.parametrize("arg, message", [("finetune.target_modules=[x]", "finetune.target_modules: ['x'] match no"),
                                          ("finetune.max_length=8", "finetune.max_length=8 leaves no room")])
def test_finetune_checks_against_the_model_before_training(tmp_path, finished, arg, message):
    out = finished.copy(TINY, tmp_path / "out")
    shutil.rmtree(out / "finetune")  # the shared run's preferences, and no finetune yet
    proc = run_main(*TINY, f"output_dir={out}", "stages=[finetune]", arg)
    assert_one_error_line(proc, message)
    assert not list((out / "finetune").glob(f"*/{MARKER}"))
    assert "train_step" not in "".join(p.read_text() for p in (out / "finetune").rglob("work_log.jsonl"))
