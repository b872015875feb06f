"""pipeline/inputs.py: every file a stage reads enters its fingerprint by content, so an edit re-runs what it
affects, even one that sets the modification time back."""

import json
import shutil

from datasets import load_from_disk

from conftest import prompt_ids_of, run_pipeline, stage_paths, tiny_config, write


def test_changed_extra_pool_reruns_the_stage_and_downstream(tmp_path):
    pool = write(tmp_path / "pool.csv", "text\nA first joke.\nA second joke.\nA third joke.\n")
    args = ("stages=[sample_space,spmcmc]", f"sample_space.extra_path={pool}", "sample_space.only_extra=true")
    run_pipeline(tiny_config(tmp_path / "out", *args))
    before = stage_paths(tmp_path / "out")
    write(pool, "text\nA first joke.\nA changed joke.\nA third joke.\n")
    run_pipeline(tiny_config(tmp_path / "out", *args))
    after = stage_paths(tmp_path / "out")
    assert before["sample_space"] != after["sample_space"] and before["spmcmc"] != after["spmcmc"]
    assert "A changed joke." in load_from_disk(str(after["sample_space"] / "dataset"))["text"]
    meta = json.loads((after["sample_space"] / "meta.json").read_text())
    import hashlib

    assert meta["input_files"]["sample_space.extra_path"]["sha256"] == hashlib.sha256(pool.read_bytes()).hexdigest()
    assert "model.name_or_path" in meta["input_files"]


def test_changed_ratings_file_and_model_folder_change_fingerprints(tmp_path, tiny_model_dir):
    from pipeline.inputs import input_files

    ratings = write(tmp_path / "r.csv", "text,rating\n" + "".join(f"joke {i},{i % 7 + 1}\n" for i in range(12)))
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    cfg = tiny_config(tmp_path, f"evaluate.human_ratings={ratings}", f"model.name_or_path={model}")
    first = input_files(cfg, ("model", "evaluate"))
    write(ratings, ratings.read_text().replace("joke 3,4", "joke 3,5"))
    weights = next(model.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    second = input_files(cfg, ("model", "evaluate"))
    assert first["evaluate.human_ratings"]["sha256"] != second["evaluate.human_ratings"]["sha256"]
    assert first["model.name_or_path"]["sha256"] != second["model.name_or_path"]["sha256"]


def test_an_edit_that_sets_the_time_back_is_seen(tmp_path):
    import os

    prompts = write(tmp_path / "p.csv", "prompt\nTell me a joke about cats.\nTell me a joke about dogs.\n")
    args = ["stages=[sample_space]", "sample_space.query=null", f"sample_space.prompts={prompts}", "evaluate.query=x"]
    run_pipeline(tiny_config(tmp_path / "out", *args))
    before, stat = prompt_ids_of(tmp_path / "out"), prompts.stat()
    write(prompts, "prompt\nTell me a joke about bats.\nTell me a joke about dogs.\n")  # same size
    os.utime(prompts, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert prompts.stat().st_size == stat.st_size and prompts.stat().st_mtime_ns == stat.st_mtime_ns
    run_pipeline(tiny_config(tmp_path / "out", *args))
    assert prompt_ids_of(tmp_path / "out") != before
