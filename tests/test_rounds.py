"""Self-improvement rounds: round r's data comes from round r-1's policy; fingerprints chain; a kill in
round 2 redoes nothing of round 1; the loop stops when no pair passes; a fixed judge reuses its cache."""

import json
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from datasets import load_from_disk
from safetensors.numpy import load_file

from conftest import TINY, dataset_files, run_cli, run_pipeline, stage_paths, tiny_config

PROMPTS = "sample_space.prompts=[Tell me a joke about cats.,Tell me a joke about dogs.,Tell me a joke about fish.]"
ARGS = ["recipe=tiny", "sample_space.query=null", PROMPTS, "evaluate.query=Tell me a joke.", "rounds.count=2"]


def meta(path: Path) -> dict:
    return json.loads((path / "meta.json").read_text())


def work(path: Path, event: str) -> int:
    log = path / "work_log.jsonl"
    return sum(e["count"] for e in map(json.loads, log.read_text().splitlines()) if e["event"] == event) \
        if log.exists() else 0


@pytest.fixture
def two_rounds(finished):
    return finished(*ARGS)


@pytest.mark.slow
def test_two_rounds_end_to_end_and_chained(two_rounds):
    paths = stage_paths(two_rounds)
    assert list(paths) == [f"{s}{r}" for r in ("", "@2")
                           for s in ("sample_space", "spmcmc", "preferences", "finetune", "evaluate")]
    r1, r2 = paths["finetune"], paths["finetune@2"]
    # round 2 generates with round 1's policy and judges with it (rounds.judge=policy); fingerprints chain
    assert meta(paths["sample_space@2"])["inputs"] == {"policy": meta(r1)["fingerprint"]}
    assert meta(paths["spmcmc@2"])["inputs"]["judge"] == meta(r1)["fingerprint"]
    assert meta(r2)["inputs"]["init"] == meta(r1)["fingerprint"]  # rounds.init=previous
    assert meta(paths["sample_space@2"])["settings"]["round"] == 2 and "round" not in meta(paths["sample_space"])["settings"]
    a = load_file(str(r1 / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(r2 / "adapter" / "adapter_model.safetensors"))
    assert any(not np.allclose(a[k], b[k]) for k in a)  # round 2 trained further
    rounds = load_from_disk(str(paths["evaluate@2"] / "dataset"))["rounds"].to_list()
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[0]["win_vs_previous"] is None and rounds[1]["win_vs_previous"] is not None
    assert all(r["diversity"] is not None and r["entropy"] is not None and r["consistency"] is not None for r in rounds)
    report = (two_rounds / "report.md").read_text()
    assert "## Rounds" in report and "| 2 |" in report and "Jester alignment of each round's tuned model" in report


@pytest.mark.slow
def test_kill_in_round_two_resumes_without_redoing_round_one(finished, two_rounds, tmp_path):
    out = finished.copy(ARGS, tmp_path / "killed")
    for stage, path in stage_paths(out).items():  # round 1 finished (the shared run's), round 2 not begun
        if "@" in stage:
            shutil.rmtree(path)
    # round 1 is up to date, so this process's chain steps are round 2's: the tiny recipe steps 40 a round
    proc = run_cli(*ARGS, f"output_dir={out}", env={"SPMCMC_KILL_AT": "spmcmc.step:20"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    first = stage_paths(out)
    before = {k: work(p, "judge_comparisons") + work(p, "generated_chunk") + work(p, "train_step")
              for k, p in first.items() if "@" not in k}
    resumed = run_cli(*ARGS, f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    for stage in ("sample_space", "spmcmc", "preferences", "finetune", "evaluate"):
        assert f"[{stage}] up to date" in resumed.stdout, stage
    after = stage_paths(out)
    assert {k: work(after[k], "judge_comparisons") + work(after[k], "generated_chunk") + work(after[k], "train_step")
            for k in before} == before  # nothing of round 1 was computed again
    clean = stage_paths(two_rounds)
    for stage in ("sample_space@2", "spmcmc@2", "preferences@2"):
        assert dataset_files(after[stage]) == dataset_files(clean[stage]), stage


def test_rounds_stop_early_when_no_pair_passes(tmp_path, finished, monkeypatch, capsys):
    from pipeline.stages import preferences
    from pipeline.stages.preferences import NoPairs

    original = preferences.run

    def run(cfg, inputs, workdir):
        if "judge" in inputs:  # round 2: pretend the judge's preferences no longer pass the filters
            raise NoPairs("no train pair passes the evidence filters: the best confidence seen was 0.501")
        return original(cfg, inputs, workdir)

    monkeypatch.setattr(preferences, "run", run)
    finished.copy(TINY, tmp_path)  # round 1 is the shared plain run's, already complete
    (tmp_path / "report.md").unlink()
    run_pipeline(tiny_config(tmp_path, "rounds.count=3"))
    out = capsys.readouterr().out
    assert "[pipeline] stopping after round 1: round 2 yields no pair that passes the evidence filters" in out
    assert "the figures suggest" in out
    from pipeline.artifacts import read_manifest

    complete = {k for k, e in read_manifest(tmp_path)["stages"].items() if e["complete"]}
    assert complete == {"sample_space", "spmcmc", "preferences", "finetune", "evaluate", "sample_space@2", "spmcmc@2"}
    assert (tmp_path / "report.md").is_file()  # round 1's report stands


@pytest.mark.slow
def test_a_fixed_judge_uses_the_base_judges_pair_cache(tmp_path, finished):
    finished.copy(TINY, tmp_path)  # round 1 is the shared plain run's
    run_pipeline(tiny_config(tmp_path, "rounds.count=2", "rounds.judge=base",
                             "stages=[sample_space,spmcmc,preferences,finetune]"))
    paths = stage_paths(tmp_path)
    assert "judge" not in meta(paths["spmcmc@2"])["inputs"]
    assert meta(paths["spmcmc@2"])["inputs"]["previous_spmcmc"] == meta(paths["spmcmc"])["fingerprint"]

    def cache(path):
        return {(e["k"], e["f"], e["s"]) for f in path.glob("pair_cache.rank*.jsonl")
                for e in map(json.loads, f.read_text().splitlines())}

    r1, r2 = cache(paths["spmcmc"]), cache(paths["spmcmc@2"])
    assert {k for k, _, _ in r2} <= {k for k, _, _ in r1}  # the same (base) judge key
    rows = load_from_disk(str(paths["spmcmc@2"] / "dataset"))["pairs"].num_rows
    reused = rows - len(r2)  # round 2's comparisons already in round 1's cache were not computed again
    assert work(paths["spmcmc@2"], "judge_comparisons") == len(r2) and reused >= 0
    shas = set(load_from_disk(str(paths["sample_space"] / "dataset"))["text_sha"])
    shas2 = set(load_from_disk(str(paths["sample_space@2"] / "dataset"))["text_sha"])
    if len(shas & shas2) >= 2:  # texts both policies wrote: their comparisons come from round 1's cache
        assert reused > 0
