"""Prompt sets (pipeline/prompts.py and the stages over them): per-prompt sample spaces judged together, pairs
within prompts, held-out prompts kept out of training; prompt files and lengths checked before any work; one
query stays the same run as before."""

import json

import numpy as np
import pandas as pd
import pytest
from datasets import load_from_disk

from conftest import (
    TINY,
    TOPICS,
    assert_one_error_line,
    assert_shape,
    dataset_files,
    prompt_args,
    prompt_file,
    prompt_ids_of,
    run_cli,
    run_main,
    run_pipeline,
    stage_paths,
    tiny_config,
    write,
)
from pipeline.artifacts import MARKER


@pytest.mark.slow
def test_three_prompts_run_end_to_end(three_prompts):
    paths = stage_paths(three_prompts)
    assert list(paths) == ["sample_space", "spmcmc", "preferences", "finetune", "evaluate"]
    space = load_from_disk(str(paths["sample_space"] / "dataset"))
    assert list(dict.fromkeys(space["prompt_id"])) == ["cats", "dogs", "fish"] and set(space["prompt"]) == set(TOPICS)
    spmcmc = load_from_disk(str(paths["spmcmc"] / "dataset"))
    for split in ("candidates", "trace", "pairs", "diagnostics", "prompts"):
        assert "prompt_id" in spmcmc[split].column_names, split
    cands = spmcmc["candidates"].to_pandas()
    assert np.allclose(cands.groupby("prompt_id")["score"].sum(), 1.0)  # a distribution per prompt
    pairs = spmcmc["pairs"].to_pandas()
    owner = dict(zip(cands["id"], cands["prompt_id"]))
    assert (pairs["first_id"].map(owner) == pairs["second_id"].map(owner)).all()  # judged only within a prompt
    assert (pairs["first_id"].map(owner) == pairs["prompt_id"]).all()
    summary = json.loads((paths["spmcmc"] / "summary.json").read_text())
    from pipeline.stages import preferences, sample_space
    from pipeline.stages import spmcmc as spmcmc_stage

    assert_shape(summary, spmcmc_stage.Summary, "spmcmc")  # a prompt set's run-level summary: the same shape
    for module in (sample_space, preferences):
        assert_shape(json.loads((paths[module.NAME] / "summary.json").read_text()), module.Summary, module.NAME)
    assert summary["n_prompts"] == 3 and len(summary["per_prompt"]) == 3 and summary["consistency"]["min"] is not None
    prefs = json.loads((paths["preferences"] / "summary.json").read_text())
    held = set(load_from_disk(str(paths["preferences"] / "dataset"))["held_out_prompts"]["prompt_id"])
    assert prefs["split"] == "prompt" and len(held) == 1
    train = load_from_disk(str(paths["preferences"] / "dataset"))["train"]
    assert not held & set(train["prompt_id"])  # no held-out prompt reaches training
    evaluate = load_from_disk(str(paths["evaluate"] / "dataset"))
    assert set(evaluate["winrate"]["prompt_id"]) == held  # the yardstick on the held-out prompts
    assert set(evaluate["heldout_answers"]["prompt_id"]) == held  # 3 answers of the tuned policy, the base, the null
    assert evaluate["heldout_answers"].num_rows == 3 * 3
    report = (three_prompts / "report.md").read_text()
    assert "## Did the policy improve? The win rate and its yardstick" in report and "Per prompt (3 prompts" in report
    summary = json.loads((paths["evaluate"] / "summary.json").read_text())
    assert summary["win_rate"] is not None and "headroom_share" in summary
    # one held-out prompt: the interval is over its answers, and it is called what it is, not "the one query"
    yardstick = summary["yardstick"]
    assert yardstick["win_rate_units"].endswith("to the one held-out prompt")
    assert any(w.startswith("one held-out prompt:") for w in yardstick["warnings"])
    assert yardstick["ceiling"] is None  # 3 reference answers cannot support a best-of-8 ceiling
    # 3 reference answers cannot support a best of 8 (it needs 9: 8 in the contest, one outside to face)
    assert summary["ceiling"] is None and any("no best-of-8 ceiling" in w for w in summary["yardstick"]["warnings"])


def test_mixed_prompt_blocks_judge_as_separate_prompts(tiny_model):
    from pipeline.config import JudgeConfig
    from pipeline.judge import ModelJudge

    model, tok = tiny_model
    texts = ["Why did the cat sit on the computer?", "Cats.", "A dog walks into a bar.", "Dogs bark loudly.", "Woof."]
    prompt_of = [0, 0, 1, 1, 1]
    queries = ["Tell me a joke about cats.", "Tell me a joke about dogs, please, a longer request."]
    first, second = np.array([0, 2, 1, 3, 4, 2]), np.array([1, 3, 0, 4, 2, 4])
    mixed = ModelJudge(model, tok, JudgeConfig(batch_size=4), queries, texts, prompt_of)(first, second)
    plain = ModelJudge(model, tok, JudgeConfig(prefix_cache=False), queries, texts, prompt_of)(first, second)
    alone = np.concatenate([
        ModelJudge(model, tok, JudgeConfig(), queries[0], texts[:2])(np.array([0, 1]), np.array([1, 0])),
        ModelJudge(model, tok, JudgeConfig(), queries[1], texts[2:])(np.array([0, 1, 2, 0]), np.array([1, 2, 0, 2]))])
    assert np.ptp(mixed) > 1e-4  # the probabilities differ, so agreement below means something
    assert np.allclose(mixed, plain, atol=1e-5) and np.allclose(mixed[[0, 2, 1, 3, 4, 5]], alone, atol=1e-5)


PROMPT_ERRORS = [
    ("missing column", lambda t: prompt_file(t, ["a", "b"], header="text"), "lacks column(s) ['prompt']"),
    ("empty prompt", lambda t: prompt_file(t, ["a,Tell me a joke.", "b,"]), "prompt 2 is empty"),
    ("duplicate prompt", lambda t: prompt_file(t, ["a,Tell me a joke.", "b,Tell me a joke."]),
     "prompt 2 repeats prompt 1"),
    ("duplicate id", lambda t: prompt_file(t, ["a,Tell me a joke.", "a,Tell me another."]),
     "id 'a' is used by prompts 1 and 2"),
    ("no prompts", lambda t: prompt_file(t, []), "holds no prompts"),
]


@pytest.mark.parametrize("name, make, message", PROMPT_ERRORS, ids=[e[0] for e in PROMPT_ERRORS])
def test_prompt_file_errors(tmp_path, name, make, message):
    proc = run_main("recipe=tiny", f"output_dir={tmp_path / 'out'}", "stages=[sample_space]", *prompt_args(make(tmp_path)))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1]
    assert not list((tmp_path / "out" / "sample_space").glob(f"*/{MARKER}"))


@pytest.mark.parametrize("args, message", [
    (["sample_space.prompts=[a,b]"], "both are set"),
    (["sample_space.query=null"], "sample_space.query: a value is required"),
    (["sample_space.query=null", "sample_space.prompts=[a,b]"], "evaluate.query: the run answers a prompt set"),
])
def test_query_and_prompts_are_exclusive(args, message):
    proc = run_cli("recipe=tiny", *args, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_per_prompt_resume_after_kill_equals_an_uninterrupted_run(tmp_path, finished, killed):
    args = ["recipe=tiny", "stages=[sample_space,spmcmc]", "spmcmc.mode=chains", "spmcmc.iterations=40",
            *prompt_args(prompt_file(tmp_path))]
    out = killed.copy(args, ["sample_space.chunk:3", "spmcmc.step:25"], tmp_path / "a")  # both kills, one folder
    assert run_cli(*args, f"output_dir={out}").returncode == 0
    a, b = stage_paths(out), stage_paths(finished(*args))
    for stage in ("sample_space", "spmcmc"):
        assert dataset_files(a[stage]) == dataset_files(b[stage]), stage
    trace = load_from_disk(str(a["spmcmc"] / "dataset"))["trace"]
    assert sorted(set(trace["chain"])) == list(range(6)) and trace.num_rows == 6 * 40  # 2 chains x 3 prompts


@pytest.mark.slow
def test_one_query_is_a_prompt_set_of_one(tmp_path):
    """`query=X` and `prompts=[X]` are the same run: identical datasets for every stage that reads them."""
    stages = "stages=[sample_space,spmcmc,preferences]"
    run_pipeline(tiny_config(tmp_path / "q", stages))
    run_pipeline(tiny_config(tmp_path / "p", stages, "sample_space.query=null", "sample_space.prompts=[Tell me a joke.]"))
    q, p = stage_paths(tmp_path / "q"), stage_paths(tmp_path / "p")
    for stage in ("sample_space", "spmcmc", "preferences"):  # same rows (the fingerprints differ: other settings)
        a, b = (load_from_disk(str(x[stage] / "dataset")) for x in (q, p))
        a, b = ({"train": a}, {"train": b}) if stage == "sample_space" else (a, b)  # a Dataset, not a DatasetDict
        assert all(a[s].to_pandas().astype(str).equals(b[s].to_pandas().astype(str)) for s in a), stage


PROMPTS = ["Tell me a joke about cats.", "Tell me a joke about dogs."]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_integer_prompt_ids_are_the_same_in_every_format(tmp_path, fmt):
    csv = write(tmp_path / "p.csv", "id,prompt\n" + "".join(f"{k},{p}\n" for k, p in enumerate(PROMPTS, start=1)))
    other = tmp_path / f"p.{fmt}"
    frame = pd.DataFrame({"id": [1, 2], "prompt": PROMPTS})
    frame.to_json(other, orient="records", lines=True) if fmt == "jsonl" else frame.to_parquet(other)
    ids = []
    for path in (csv, other):
        out = tmp_path / path.suffix[1:]
        proc = run_main(*TINY, f"output_dir={out}", "stages=[sample_space]", "sample_space.query=null",
                        f"sample_space.prompts={path}", "evaluate.query=x", "sample_space.num_samples=2")
        assert proc.returncode == 0, proc.stderr[-2000:]
        ids.append(prompt_ids_of(out))
    assert ids[0] == ids[1] == ["1", "2"]


PROMPT_FILE_CASES = [
    ('{"prompt": 42}\n{"prompt": "Tell me a joke."}\n', "prompt 1 is int 42, not text"),
    ('{"prompt": ""}\n{"prompt": "Tell me a joke."}\n', "prompt 1 is empty"),
    ('{"id": 1.5, "prompt": "a"}\n{"prompt": "b"}\n', "prompt 1 has id 1.5 (float)"),
    ('{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n', "id '1' is used by prompts 1 and 2"),
]


@pytest.mark.parametrize("text, message", PROMPT_FILE_CASES, ids=[c[1][:24] for c in PROMPT_FILE_CASES])
def test_prompt_file_mistakes(tmp_path, text, message):
    path = write(tmp_path / "p.jsonl", text)
    proc = run_main(*TINY, f"output_dir={tmp_path / 'out'}", "sample_space.query=null", f"sample_space.prompts={path}",
                    "evaluate.query=x")
    assert_one_error_line(proc, message)


def test_a_prompt_beyond_the_model_context_stops_before_any_work(tmp_path):
    long = "Tell me a joke about " + " ".join(["cats and dogs and birds"] * 700) + "."  # ~16 KB, ~3.5k tokens
    path = write(tmp_path / "p.jsonl", json.dumps({"id": 1, "prompt": long}) + "\n" +
                 json.dumps({"id": 2, "prompt": "Tell me a joke."}) + "\n")
    proc = run_main(*TINY, f"output_dir={tmp_path / 'out'}", "sample_space.query=null", f"sample_space.prompts={path}",
                    "preferences.split=candidate", "evaluate.query=x")
    assert_one_error_line(proc, "exceeds the model's context of 2048 tokens")
    assert not (tmp_path / "out" / "sample_space").exists()
