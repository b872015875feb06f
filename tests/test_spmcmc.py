"""The spmcmc stage (pipeline/stages/spmcmc.py): its artifact on the tiny model, its own reporting, and resume
from kills and damaged resume state."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, load_from_disk

from conftest import TINY, dataset_files, run_cli, run_main, run_pipeline, stage_paths, tiny_config
from pipeline.chains import CachedJudge, new_chains, run_chains
from pipeline.stages.spmcmc import plan, prompt_groups, summarise

RESUME = [*TINY, "stages=[sample_space,spmcmc]", "spmcmc.mode=chains", "spmcmc.iterations=60"]
KILL = ["spmcmc.step:33"]


def stage_path(out: Path, stage: str) -> Path:
    return stage_paths(out)[stage]


def test_stage_on_tiny_model(finished):
    path = stage_path(finished(*TINY), "spmcmc")  # the shared plain run
    ds = load_from_disk(str(path / "dataset"))
    cands, pairs, trace = ds["candidates"], ds["pairs"], ds["trace"]
    n = cands.num_rows
    assert {"id", "text", "visits", "frequency", "frequency_se", "rao_blackwell", "stationary", "stationary_se",
            "bt_score", "bt_score_se", "sparse", "score", "score_se"} <= set(cands.column_names)
    assert cands["score"] == cands["stationary"] and set(cands["sparse"]) == {None}
    assert pairs.num_rows == n * (n - 1)  # exact mode (auto, within budget) computed every ordered comparison
    assert sum(cands["frequency"]) == pytest.approx(1.0) and sum(cands["stationary"]) == pytest.approx(1.0)
    assert trace.num_rows == 2 * 40 and set(trace["chain"]) == {0, 1}
    assert all(0.0 <= p <= 1.0 for p in pairs["p_first"])
    summary = json.loads((path / "summary.json").read_text())
    assert summary["judge_calls"] == pairs.num_rows and summary["chain_cache_hit_rate"] == 1.0
    assert summary["mode"] == "exact" and summary["score_estimate"] == "stationary"
    assert 0 <= summary["consistency"]["consistency"] <= 1 and summary["consistency"]["evidence"] == "compared pairs"
    assert (path / "estimates.png").stat().st_size > 1000


def test_summary_reports_the_bias_put_in_and_debiases(tmp_path):
    """The stage's own reporting on a Bradley–Terry judge with a first-position bias."""
    n, bias = 15, 1.2
    w = np.random.default_rng(3).gamma(2.0, size=n)

    def judge(first, second):
        return 1 / (1 + np.exp(-(np.log(w[first]) - np.log(w[second]) + bias)))

    cached = CachedJudge(judge)
    cached.ensure([(i, j) for i in range(n) for j in range(n) if i != j])
    trace = run_chains(new_chains(n, 6, seed=0), n, cached, iterations=5000, order="both")
    cfg = tiny_config(tmp_path, "spmcmc.order=both", "spmcmc.iterations=5000", "spmcmc.burn_in=100", "spmcmc.num_chains=6")
    space = Dataset.from_dict({"id": list(range(n)), "prompt_id": ["q"] * n, "prompt": ["Tell me a joke."] * n,
                               "text": [f"c{i}" for i in range(n)], "count": [1] * n,
                               "is_greedy": [False] * n, "text_sha": [str(i) for i in range(n)]})
    groups = prompt_groups(space)
    out = summarise(cfg, space, groups, plan(cfg.spmcmc, groups), trace, cached.probs, {}, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["position_bias"] == pytest.approx(np.mean(list(cached.probs.values())))
    assert summary["position_bias"] > 0.7
    assert summary["estimates"]["frequency"]["tv_vs_reference"] <= 0.03
    assert summary["consistency"]["consistency"] > 0.95 and not any("consistency" in w for w in summary["warnings"])
    stationary = np.array(out["candidates"]["stationary"])
    assert np.array_equal(np.argsort(stationary), np.argsort(w))  # the true ranking, despite the bias


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path, finished, killed):
    out = killed.copy(RESUME, KILL, tmp_path / "a")
    resumed = run_cli(*RESUME, f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = stage_path(out, "spmcmc"), stage_path(finished(*RESUME), "spmcmc")
    assert dataset_files(a) == dataset_files(b)
    log = [json.loads(line) for line in (a / "work_log.jsonl").read_text().splitlines()]
    computed = sum(e["count"] for e in log if e["event"] == "judge_comparisons")
    assert computed == load_from_disk(str(a / "dataset"))["pairs"].num_rows  # no comparison computed twice


@pytest.mark.slow
def test_two_processes_split_chains_and_merge_caches(tmp_path):
    args = ["recipe=tiny", "stages=[sample_space,spmcmc]", "spmcmc.num_chains=3", "spmcmc.mode=chains",
            f"output_dir={tmp_path}"]
    proc = run_cli(*args, ranks=2)  # two processes with torchrun's environment (the real launcher: test_finetune)
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = stage_path(tmp_path, "spmcmc")
    ds = load_from_disk(str(path / "dataset"))
    assert sorted(set(ds["trace"]["chain"])) == [0, 1, 2] and ds["trace"].num_rows == 3 * 40
    assert (path / "pair_cache.rank0.jsonl").is_file() and (path / "pair_cache.rank1.jsonl").is_file()
    assert json.loads((path / "meta.json").read_text())["world_size"] == 2
    seen = {(r["first_id"], r["second_id"]) for r in ds["pairs"]}
    assert len(seen) == ds["pairs"].num_rows  # merged without duplicates


def killed_in_spmcmc(tmp_path, killed) -> tuple[Path, Path]:
    """A private copy of the run killed in the chains (step 33 of 60), and its spmcmc folder at work."""
    out = killed.copy(RESUME, KILL, tmp_path / "a")
    return out, next((out / "spmcmc").glob("*.partial"))


@pytest.mark.slow
def test_pair_cache_line_of_the_wrong_shape_is_skipped(tmp_path, finished, killed):
    out, partial = killed_in_spmcmc(tmp_path, killed)
    with open(partial / "pair_cache.rank0.jsonl", "a") as fh:
        fh.write("[1, 2]\n{\"k\": 3}\n\"text\"\n")
    assert run_main(*RESUME, f"output_dir={out}").returncode == 0
    assert dataset_files(stage_paths(out)["spmcmc"]) == dataset_files(stage_paths(finished(*RESUME))["spmcmc"])


@pytest.mark.slow
def test_deleted_pair_cache_with_kept_checkpoints_ends_the_same(tmp_path, finished, killed):
    out, partial = killed_in_spmcmc(tmp_path, killed)
    (partial / "pair_cache.rank0.jsonl").unlink()
    proc = run_main(*RESUME, f"output_dir={out}")
    assert proc.returncode == 0 and "restarting chains" in proc.stdout
    assert dataset_files(stage_paths(out)["spmcmc"]) == dataset_files(stage_paths(finished(*RESUME))["spmcmc"])


def test_the_prompts_plot_of_ten_thousand_prompts_fits_a_png(tmp_path):
    """A bar and a label per prompt made prompts.png 0.35 inch per prompt: 385,000 pixels wide at 10,000 prompts,
    past what a PNG holds. Past 60 prompts it is one point per prompt on a fixed width."""
    from matplotlib.image import imread

    from pipeline.plots import LABELLED_PROMPTS, prompt_plots

    for count in (LABELLED_PROMPTS, 10_000):
        rows = [{"prompt": f"prompt {k}", "consistency": (k % 10) / 10, "top_over_uniform": None if k % 7 else 1.5}
                for k in range(count)]
        (path,) = prompt_plots(tmp_path, rows)
        height, width, _ = imread(path).shape
        assert 500 < width <= 110 * max(10, 0.35 * LABELLED_PROMPTS) and height == 550


def test_a_checkpoint_written_piecewise_reads_back_as_every_row_so_far(tmp_path):
    """Checkpoints encode only the rows since the last one: the file still reads back as every chain's state and all
    its rows, the other processes' entries kept, after each of several checkpoints."""
    from pipeline.stages import spmcmc

    chains = new_chains(5, 3, 0)
    others = {"7": {"rows": [[7, 0, 1, 2, -1, 0.25, False]], "state": {"step": 1}}}
    saver, rows = spmcmc.Checkpoints(tmp_path, others), []
    for step in range(4):
        for c in chains[: 2 + step % 2]:  # chain 2 steps every other time
            rows.append((c.id, c.step, c.current, (c.current + 1) % 5, -1, 0.1 * step, step % 2 == 0))
            c.step += 1
        saver.save(chains, rows)
        saved = json.loads((tmp_path / "chains.rank0.json").read_text())
        assert saved["7"] == others["7"]
        for c in chains:
            assert saved[str(c.id)]["state"] == json.loads(json.dumps(c.state()))
            assert saved[str(c.id)]["rows"] == [list(r) for r in rows if r[0] == c.id]


def test_chain_checkpoints_resume_under_another_number_of_processes(tmp_path, monkeypatch):
    """One checkpoint file per process: killed under 1 process, run on under 2, resumed under 1, every chain comes
    back at its latest step, not at a stale copy that another process's file still carries."""
    from pipeline import parallel
    from pipeline.stages import spmcmc

    fresh = {c.id: c for c in new_chains(5, 4, 0)}

    def at(rank: int, ids: list[int], step: int | None) -> list:
        monkeypatch.setattr(parallel, "rank", lambda: rank)
        chains, rows, others = spmcmc._load_chains(tmp_path, ids, fresh)
        if step is not None:
            for c in chains:
                c.step = step
            rows = rows + [(c.id, step, c.current, c.current, c.current, 1.0, True) for c in chains]
            spmcmc.Checkpoints(tmp_path, others).save(chains, rows)
        return chains, rows

    at(0, [0, 1, 2, 3], 2)  # one process
    at(1, [1, 3], 5)  # two processes: rank 1 saves its chains, rank 0 carries its stale copies of them
    at(0, [0, 2], 5)
    chains, rows = at(0, [0, 1, 2, 3], None)  # one process again
    assert [c.step for c in chains] == [5, 5, 5, 5]
    assert sorted((r[0], r[1]) for r in rows) == [(c, s) for c in range(4) for s in (2, 5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chains.rank0.json", "chains.rank1.json"]


def test_each_prompts_figures_spread_over_worker_processes_give_the_same_artifact(tmp_path, monkeypatch):
    """A large prompt set's per-prompt figures run in spawned worker processes (parallel.pool_map): forced here for 3
    prompts on 2 workers, the spmcmc artifact is the same bytes as the one-process run's."""
    from conftest import prompt_args, prompt_file
    from pipeline import parallel
    from pipeline.stages import spmcmc

    args = [*prompt_args(prompt_file(tmp_path)), "stages=[sample_space,spmcmc]"]
    run_pipeline(tiny_config(tmp_path / "one", *args))
    spawned, real = [], parallel.pool_map

    def counted(fn, items, min_items):
        spawned.append(len(items))
        return real(fn, items, min_items)

    monkeypatch.setattr(spmcmc, "POOL_PROMPTS", 1)
    monkeypatch.setattr(parallel, "cpu_share", lambda: 2)
    monkeypatch.setattr(parallel, "pool_map", counted)
    run_pipeline(tiny_config(tmp_path / "pool", *args))
    assert spawned == [3]
    assert dataset_files(stage_path(tmp_path / "pool", "spmcmc")) == dataset_files(stage_path(tmp_path / "one", "spmcmc"))
