"""pipeline/artifacts.py: content-addressed, resumable stage artifacts, the manifest and the lock."""

import json
import types

import numpy as np
import pytest
from datasets import load_from_disk

from conftest import TINY, dataset_files, run_main, run_pipeline, spmcmc_cli, stage_paths, tiny_config
from pipeline.artifacts import MARKER, Run, StageError, fingerprint


def fake_stage(name, calls, version=1, settings=("spmcmc",), optional=()):
    """A stage module with the real shape; `run` records its calls and returns a tiny dataset."""
    def run(cfg, inputs, workdir):
        from datasets import Dataset

        calls.append(name)
        (workdir / "_state").mkdir(exist_ok=True)
        return Dataset.from_dict({"x": [1, 2, 3], "inputs": [",".join(sorted(inputs))] * 3})
    return types.SimpleNamespace(NAME=name, VERSION=version, SETTINGS=settings, OPTIONAL_INPUTS=optional,
                                 DISTRIBUTED=False, run=run, __name__=name)


def run_two(cfg, calls, version_b=1):
    with Run(cfg) as run:
        a = run.stage(fake_stage("sample_space", calls, settings=("sample_space",)))
        b = run.stage(fake_stage("spmcmc", calls, version=version_b), sample_space=a)
    return a, b


def test_fingerprint_is_stable_and_sensitive():
    base = fingerprint("s", 1, {"a": {"x": 1}}, {"up": "f"})
    assert base == fingerprint("s", 1, {"a": {"x": 1}}, {"up": "f"})
    assert len({base, fingerprint("s", 2, {"a": {"x": 1}}, {"up": "f"}),
                fingerprint("s", 1, {"a": {"x": 2}}, {"up": "f"}), fingerprint("s", 1, {"a": {"x": 1}}, {"up": "g"}),
                fingerprint("t", 1, {"a": {"x": 1}}, {"up": "f"})}) == 5


def test_non_semantic_settings_stay_out_of_fingerprints(tmp_path):
    calls = []
    run_two(tiny_config(tmp_path), calls)
    run_two(tiny_config(tmp_path, "spmcmc.checkpoint_every=7", "judge.batch_size=3"), calls)
    assert calls == ["sample_space", "spmcmc"]


def test_complete_stages_are_skipped_and_artifacts_load(tmp_path):
    calls = []
    a, b = run_two(tiny_config(tmp_path), calls)
    assert calls == ["sample_space", "spmcmc"]
    assert b.load()["inputs"][0] == "sample_space"
    assert b.meta()["inputs"] == {"sample_space": a.fingerprint} and b.meta()["rows"] == {"train": 3}
    assert not (b.path / "_state").exists()  # resume scratch goes once complete
    run_two(tiny_config(tmp_path), calls)
    assert calls == ["sample_space", "spmcmc"]


def test_folder_without_marker_is_redone(tmp_path):
    calls = []
    _, b = run_two(tiny_config(tmp_path), calls)
    (b.path / MARKER).unlink()
    run_two(tiny_config(tmp_path), calls)
    assert calls == ["sample_space", "spmcmc", "spmcmc"]
    assert b.complete


def test_change_cascades_downstream_only(tmp_path):
    calls = []
    run_two(tiny_config(tmp_path), calls)
    run_two(tiny_config(tmp_path, "spmcmc.iterations=600"), calls)
    assert calls == ["sample_space", "spmcmc", "spmcmc"]
    run_two(tiny_config(tmp_path, "sample_space.num_samples=5"), calls)
    assert calls[3:] == ["sample_space", "spmcmc"]
    run_two(tiny_config(tmp_path), calls, version_b=2)  # a VERSION bump invalidates the stage
    assert calls[5:] == ["spmcmc"]


def test_manifest_lists_the_stages(tmp_path):
    import json

    _, b = run_two(tiny_config(tmp_path), [])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    a = manifest["stages"]["sample_space"]["fingerprint"]
    assert manifest["stages"]["spmcmc"] == {"path": f"spmcmc/{b.fingerprint}", "fingerprint": b.fingerprint,
                                            "complete": True, "rows": {"train": 3},
                                            "inputs": {"sample_space": a}}  # relative: the folder can move
    assert stage_paths(tmp_path)["spmcmc"] == b.path


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(StageError, match="stage 'spmcmc' needs 'sample_space'"):
        run_two(tiny_config(tmp_path, "stages=[spmcmc]"), [])


def test_optional_input_is_used_only_when_complete(tmp_path):
    calls = []
    cfg = tiny_config(tmp_path, "stages=[spmcmc]")
    with Run(cfg) as run:
        up = run.stage(fake_stage("sample_space", calls, settings=("sample_space",)))
        out = run.stage(fake_stage("spmcmc", calls, optional=("sample_space",)), sample_space=up)
    assert out.meta()["inputs"] == {}


def test_second_run_on_same_output_dir_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    with Run(cfg):
        with pytest.raises(StageError, match="another run is active"):
            with Run(cfg):
                pass
    with Run(cfg):  # released on exit (and by the kernel if the holder is killed)
        pass


def test_unwritable_output_dir(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StageError, match="is not writable"):
        with Run(tiny_config(tmp_path / "file" / "out")):
            pass


@pytest.mark.slow
def test_complete_marker_without_dataset_files_is_recomputed(tmp_path, finished):
    args = [*TINY, "stages=[sample_space]", f"output_dir={finished.copy(TINY, tmp_path)}"]
    path = stage_paths(tmp_path)["sample_space"]
    before = dataset_files(path)
    for arrow in (path / "dataset").glob("*.arrow"):
        arrow.unlink()
    proc = run_main(*args)
    assert proc.returncode == 0 and "marked complete but its dataset files are missing" in proc.stdout
    assert dataset_files(path) == before


@pytest.mark.slow
def test_subset_run_keeps_the_other_stages_in_the_manifest(tmp_path):
    run_pipeline(tiny_config(tmp_path, "stages=[sample_space,spmcmc]"))
    run_pipeline(tiny_config(tmp_path, "stages=[spmcmc]", "spmcmc.iterations=50"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["sample_space", "spmcmc"]
    assert all(e["complete"] for e in manifest["stages"].values())
    trace = load_from_disk(str(stage_paths(tmp_path)["spmcmc"] / "dataset"))["trace"]
    assert trace.num_rows == 2 * 50  # the entry is the latest run's
    assert np.array_equal(sorted(set(trace["chain"])), [0, 1])


LOOP = ["stages=[sample_space,spmcmc,preferences,finetune]"]


@pytest.mark.slow
def test_the_manifest_lists_only_this_run(tmp_path, finished):
    finished.copy(TINY, tmp_path)  # round 1 complete: the shared plain run
    run_pipeline(tiny_config(tmp_path, *LOOP, "rounds.count=2"))
    assert "finetune@2" in json.loads((tmp_path / "manifest.json").read_text())["stages"]
    run_pipeline(tiny_config(tmp_path, *LOOP, "rounds.count=1", "preferences.max_pairs=8"))
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert list(stages) == ["sample_space", "spmcmc", "preferences", "finetune"]  # no round 2 of other settings
    run_pipeline(tiny_config(tmp_path, "stages=[sample_space]", "sample_space.seed=7"))
    stages = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    assert list(stages) == ["sample_space"]  # spmcmc onwards were built from the old sample space
    proc = spmcmc_cli("inspect", str(tmp_path))
    assert proc.returncode == 0 and "spmcmc" not in proc.stdout
