"""Every user mistake is one `error:` line with exit 2 and no traceback, through the real command;
degenerate data is refused; damaged resume state is repaired; every file read enters the fingerprint."""

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from datasets import load_from_disk

from conftest import REPO, assert_one_error_line, dataset_files, run_cli, run_pipeline, stage_paths, tiny_config
from pipeline.artifacts import MARKER

TINY = ["recipe=tiny"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- settings and recipes (no model needed)
def recipe(tmp_path, name, text):
    return [f"recipe={write(tmp_path / f'{name}.yaml', text)}"]


CONFIG_CASES = [
    ("malformed yaml", lambda t: recipe(t, "bad", "sample_space:\n  query: [a\n"), "is not valid YAML at line"),
    ("yaml list", lambda t: recipe(t, "list", "- a\n- b\n"), "must be a mapping of settings"),
    ("duplicate key", lambda t: recipe(t, "dup", "judge:\n  question: a\njudge:\n  question: b\n"),
     "duplicate key 'judge' (line 3)"),
    ("unknown recipe", lambda t: ["recipe=jokes"], "unknown recipe 'jokes'"),
    ("misspelled key", lambda t: TINY + ["spmcmc.iteration=5"], "did you mean 'spmcmc.iterations'"),
    ("section as value", lambda t: TINY + ["model={}"], "model is a group of settings"),
    ("wrong type", lambda t: TINY + ["spmcmc.num_chains=two"], "spmcmc.num_chains"),
    ("negative seed", lambda t: TINY + ["spmcmc.seed=-1"], "spmcmc.seed: must be >= 0"),
    ("unknown template field", lambda t: TINY + ["judge.template={bogus} {first} {second}"],
     "judge.template: unknown field {bogus}"),
    ("first twice", lambda t: TINY + ["judge.template={first} {first} {second}"],
     "must contain {first} exactly once (found 2)"),
    ("unbalanced brace", lambda t: TINY + ["judge.template={first {second}"], "write a literal brace as {{"),
    ("negative cpu threads", lambda t: TINY + ["model.cpu_threads=-1"], "model.cpu_threads: must be >= 0"),
    ("invalid regex", lambda t: TINY + ["sample_space.preamble_patterns=[(]"], "'(' is not a valid regex"),
    ("diagnostics_top_k 0", lambda t: TINY + ["spmcmc.diagnostics_top_k=0"], "spmcmc.diagnostics_top_k: must be >= 1"),
    ("no evaluators", lambda t: TINY + ["evaluate.evaluators=[]"], "evaluate.evaluators: must not be empty"),
    ("max_items 1", lambda t: TINY + ["evaluate.max_items=1"], "evaluate.max_items: must be 0 (all) or >= 10"),
    ("max_items 2", lambda t: TINY + ["evaluate.max_items=2"], "evaluate.max_items: must be 0 (all) or >= 10"),
    ("evaluate iterations 0", lambda t: TINY + ["evaluate.spmcmc_iterations=0"], "evaluate.spmcmc_iterations: must"),
    ("unknown loss", lambda t: TINY + ["finetune.loss_type=[bogus]"], "finetune.loss_type: unknown DPO loss 'bogus'"),
    ("lora dropout 2", lambda t: TINY + ["finetune.lora_dropout=2"], "finetune.lora_dropout: must be in [0, 1)"),
    ("no stages", lambda t: TINY + ["stages=[]"], "stages: must name at least one stage"),
    ("unparseable list", lambda t: TINY + ["judge.labels=[a,b"], "quote items holding commas"),
    ("list without brackets", lambda t: TINY + ["judge.labels=A"], "judge.labels=[A]"),
    ("negative iterations", lambda t: TINY + ["spmcmc.iterations=-5"], "spmcmc.iterations: must be >= 1"),
    ("temperature 0", lambda t: TINY + ["sample_space.temperature=0"], "sample_space.temperature: must be > 0"),
    ("infinite temperature", lambda t: TINY + ["judge.temperature=inf"], "judge.temperature: must be a finite"),
    ("empty prompt", lambda t: TINY + ["sample_space.query= "], "sample_space.query: a value is required"),
    ("unwritable output_dir", lambda t: TINY + ["output_dir=/proc/spmcmc-out"], "is not writable"),
    ("unknown confound", lambda t: TINY + ["confounds.control=[lenght]"], "unknown confound 'lenght' (did you mean"),
    ("format without name", lambda t: TINY + ['confounds.formats=["[?]$"]'], "must be name=regex"),
    ("format bad regex", lambda t: TINY + ['confounds.formats=["q=("]'], "'(' is not a valid regex"),
    ("format shadows a confound", lambda t: TINY + ['confounds.formats=["length=x"]'], "is a built-in feature"),
    ("control with another score", lambda t: TINY + ["preferences.control=true", "preferences.score=bt"],
     "keep preferences.score=auto"),
    ("matching without control", lambda t: TINY + ["preferences.max_confound_gap=1"], "needs preferences.control=true"),
]


@pytest.mark.parametrize("name, args, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_mistakes(tmp_path, name, args, message):
    argv = args(tmp_path)
    out = [] if any(a.startswith("output_dir=") for a in argv) else [f"output_dir={tmp_path / 'out'}"]
    assert_one_error_line(run_cli(*argv, *out, timeout=120), message)


def test_values_keep_what_the_user_typed():
    from pipeline.config import load_config

    cfg = load_config(TINY + ["sample_space.query=Tell me a joke #1 please", "judge.labels=[Yes,No]",
                              "sample_space.system_prompt=1e3", "judge.question=Topic: cats, ${x} {y}"])
    assert cfg.sample_space.query == "Tell me a joke #1 please"
    assert cfg.judge.labels == ["Yes", "No"]
    assert cfg.sample_space.system_prompt == "1e3"
    assert cfg.judge.question == "Topic: cats, ${x} {y}"
    assert load_config(TINY + ["judge.question={not yaml"]).judge.question == "{not yaml"
    assert load_config(TINY + ['judge.labels=["A, B",C]']).judge.labels == ["A, B", "C"]
    assert load_config(TINY + ["sample_space.system_prompt=null"]).sample_space.system_prompt is None


def test_recipe_values_keep_their_text(tmp_path):
    from pipeline.config import load_config

    path = write(tmp_path / "r.yaml", "sample_space:\n  query: 1e3\njudge:\n  labels: [Yes, No]\n"
                                      "spmcmc:\n  chains: true\n  iterations: 170\n")
    cfg = load_config([f"recipe={path}"])
    assert (cfg.sample_space.query, cfg.judge.labels, cfg.spmcmc.chains, cfg.spmcmc.iterations) == \
        ("1e3", ["Yes", "No"], "true", 170)


def test_judge_runs_with_the_labels_typed(tmp_path):
    run_pipeline(tiny_config(tmp_path, "stages=[sample_space,spmcmc]", "judge.labels=[Yes,No]"))
    meta = json.loads((stage_paths(tmp_path)["spmcmc"] / "meta.json").read_text())
    assert meta["config"]["judge"]["labels"] == ["Yes", "No"]


# ---------------------------------------------------------------- every setting, wrong type and out of range
def generated_cases():
    """From the dataclasses: each setting gets wrong-type and out-of-range values (a new setting is covered
    without a new test). Lists must be non-empty except where an empty list means 'none'."""
    from pipeline.config import all_keys, setting_kinds

    may_be_empty = {"sample_space.preamble_patterns", "confounds.formats", "confounds.control"}
    cases = []
    for key, f in all_keys():
        kind = setting_kinds()[key].removeprefix("optional_")
        tp = str(f.type)
        if kind == "list":
            cases += [(key, "[a"), (key, "{x: y}")] + ([] if key in may_be_empty else [(key, "[]")])
        elif "Literal" in tp:
            cases.append((key, "bogus_value"))
        elif tp == "bool":
            cases.append((key, "maybe"))
        elif tp == "int":
            cases += [(key, "abc"), (key, "1.5"), (key, "-1")]
        elif tp == "float":
            cases += [(key, "abc"), (key, "-1"), (key, "nan"), (key, "inf")]
    return cases


@pytest.mark.parametrize("key, value", generated_cases())
def test_every_setting_rejects_bad_values(key, value, capsys):
    from pipeline.run import main

    assert main(["recipe=tiny", f"{key}={value}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and key.split(".")[-1] in err[0], err


def test_generated_cases_cover_every_number_and_list():
    from pipeline.config import all_keys

    covered = {k for k, _ in generated_cases()}
    assert {k for k, f in all_keys() if str(f.type) in ("int", "float", "bool") or "list" in str(f.type)} <= covered


def test_loss_types_match_trl():
    import re

    from trl import DPOConfig

    from pipeline.config import DPO_LOSS_TYPES

    trl_help = DPOConfig.__dataclass_fields__["loss_type"].metadata["help"]
    assert set(re.findall(r"`'(\w+)'`", trl_help)) == set(DPO_LOSS_TYPES)


# ---------------------------------------------------------------- files and models: content enters the fingerprint
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


def broken_model(tmp_path, tiny_model_dir, config_text):
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    write(copy / "config.json", config_text)
    return [f"model.name_or_path={copy}"]


@pytest.mark.parametrize("text, message", [("{not json", "config.json is not valid JSON"),
                                           ("{}", "config.json has no model_type")])
def test_damaged_model_folder(tmp_path, tiny_model_dir, text, message):
    args = broken_model(tmp_path, tiny_model_dir, text)
    assert_one_error_line(run_cli(*TINY, f"output_dir={tmp_path / 'out'}", *args, timeout=300), message)


# ---------------------------------------------------------------- stages: data that must be refused
def ratings_file(tmp_path, ratings):
    return write(tmp_path / "ratings.csv", "text,rating\n" + "".join(f"joke number {i},{r}\n"
                                                                     for i, r in enumerate(ratings)))


@pytest.mark.parametrize("ratings, message", [([4] * 12, "every item has the same rating (4)"),
                                              ([1, 2, "inf"] + [3] * 9, "`rating` must be finite")])
def test_degenerate_ratings(tmp_path, ratings, message):
    path = ratings_file(tmp_path, ratings)
    proc = run_cli(*TINY, "stages=[evaluate]", f"evaluate.human_ratings={path}", f"output_dir={tmp_path / 'o'}")
    assert_one_error_line(proc, message)
    assert not list((tmp_path / "o" / "evaluate").glob(f"*/{MARKER}"))


def test_subset_of_constant_ratings_is_refused():
    from pipeline.ratings import TableError, select_items

    items = pd.DataFrame({"id": [str(i) for i in range(40)], "text": [f"t{i}" for i in range(40)],
                          "rating": [1.0] * 20 + [2.0] * 20})
    with pytest.raises(TableError, match="at least 10"):
        select_items(items.head(9), 0, 0)
    with pytest.raises(TableError, match="same rating"):
        select_items(items.head(20), 10, 0)


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


STAGE_CASES = [
    ("directory as extra pool", lambda t, m: [f"sample_space.extra_path={t}", "sample_space.only_extra=true"],
     "is a directory", "sample_space"),
    ("empty extra pool", lambda t, m: [f"sample_space.extra_path={write(t / 'p.csv', 'text' + chr(10) + 'ab' + chr(10))}",
                                       "sample_space.only_extra=true", "sample_space.min_chars=5"],
     "the extra pool", "sample_space"),
    ("empty sample space", lambda t, m: ["sample_space.min_chars=500"], "empty sample space: all 12 answers",
     "sample_space"),
    ("test fraction 0.99", lambda t, m: ["preferences.test_fraction=0.99", "stages=[sample_space,spmcmc,preferences]"],
     "preferences.test_fraction=0.99 leaves", "preferences"),
    ("missing model path", lambda t, m: ["model.name_or_path=/nowhere/model"], "does not exist", "sample_space"),
    ("model not on this machine", lambda t, m: ["model.name_or_path=nobody/no-such-model"], "never downloads",
     "sample_space"),
    ("no chat template", no_template_model, "has no chat template", "sample_space"),
    ("multi-token labels", lambda t, m: ["judge.labels=[Apple pie,B]", "stages=[sample_space,spmcmc]"],
     "judge label 'Apple pie' is 2 tokens", "spmcmc"),
    ("one candidate", lambda t, m: one_candidate_pool(t), "needs at least 2 candidates", "spmcmc"),
    ("ratings file missing", lambda t, m: ["stages=[evaluate]", "evaluate.human_ratings=/nowhere.csv"],
     "does not exist", "evaluate"),
]


@pytest.mark.parametrize("name, args, message, stage", STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_stage_mistakes(tmp_path, tiny_model_dir, name, args, message, stage):
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'out'}", *args(tmp_path, tiny_model_dir), timeout=300)
    line = assert_one_error_line(proc, message)
    assert "max_new_tokens" not in line or name == "empty sample space"
    assert not list((tmp_path / "out" / stage).glob(f"*/{MARKER}"))


@pytest.fixture(scope="module")
def prefs_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("prefs")
    run_pipeline(tiny_config(out, "stages=[sample_space,spmcmc,preferences]"))
    return out


@pytest.mark.parametrize("arg, message", [("finetune.target_modules=[x]", "finetune.target_modules: ['x'] match no"),
                                          ("finetune.max_length=8", "finetune.max_length=8 leaves no room")])
def test_finetune_checks_against_the_model_before_training(prefs_dir, arg, message):
    proc = run_cli(*TINY, f"output_dir={prefs_dir}", "stages=[finetune]", arg, timeout=300)
    assert_one_error_line(proc, message)
    assert not list((prefs_dir / "finetune").glob(f"*/{MARKER}"))
    assert "train_step" not in "".join(p.read_text() for p in (prefs_dir / "finetune").rglob("work_log.jsonl"))


def test_texts_that_look_like_missing_values_are_kept(tmp_path):
    pool = write(tmp_path / "pool.csv", "text\nNone\nNA\nnan\nA real joke.\n")
    run_pipeline(tiny_config(tmp_path / "out", "stages=[sample_space]", f"sample_space.extra_path={pool}",
                             "sample_space.only_extra=true"))
    texts = load_from_disk(str(stage_paths(tmp_path / "out")["sample_space"] / "dataset"))["text"]
    assert texts == ["None", "NA", "nan", "A real joke."]


def test_one_evaluator_is_enough(tmp_path):
    run_pipeline(tiny_config(tmp_path, "stages=[evaluate]", "evaluate.evaluators=[random]"))
    ds = load_from_disk(str(stage_paths(tmp_path)["evaluate"] / "dataset"))
    assert set(ds["metrics"]["evaluator"]) == {"random"} and ds["comparisons"].num_rows == 0
    assert "diff" in ds["comparisons"].column_names


# ---------------------------------------------------------------- W&B never stops a run
@pytest.mark.parametrize("env", [{"WANDB_API_KEY": ""},
                                 {"WANDB_API_KEY": "a" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}],
                         ids=["no api key", "no network"])
def test_wandb_online_falls_back_to_offline(tmp_path, env):
    env = {**env, "NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    proc = run_cli(*TINY, f"output_dir={tmp_path}", "stages=[sample_space]", "wandb.mode=online", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("[wandb] warning:")]
    assert len(warnings) == 1 and "logging offline" in warnings[0], proc.stdout[-2000:]
    assert list((tmp_path / "wandb").glob("offline-run-*"))


# ---------------------------------------------------------------- console commands
@pytest.fixture(scope="module")
def space_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("space")
    run_pipeline(tiny_config(out, "stages=[sample_space]"))
    return out


def spmcmc_cli(*args, cwd=REPO):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})


def test_annotate_out_in_a_missing_folder(space_dir, tmp_path):
    assert_one_error_line(spmcmc_cli("annotate", "export", str(space_dir), "--out", "/missing-dir/x.csv"),
                          "folder '/missing-dir' does not exist")
    sheet = write(tmp_path / "s.csv", "id,text,rating\n1,a,3\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(sheet), "--out", "/missing-dir/x.csv"),
                          "folder '/missing-dir' does not exist")


def test_annotate_import_refuses_double_counting(tmp_path):
    sheet = write(tmp_path / "ann.csv", "id,text,rating\n1,a,3\n2,b,4\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(sheet), str(sheet), "--out", str(tmp_path / "r.csv")),
                          "is given twice")
    dup = write(tmp_path / "dup.csv", "id,text,rating,rater\n1,a,3,bob\n1,a,5,bob\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(dup), "--out", str(tmp_path / "r.csv")),
                          "rater 'bob' rated item '1' 2 times")


def test_inspect_a_relative_output_dir_from_elsewhere(tmp_path):
    run_cli(*TINY, "stages=[sample_space]", f"output_dir={Path('runs') / tmp_path.name}")  # relative to the repo
    try:
        proc = spmcmc_cli("inspect", str(REPO / "runs" / tmp_path.name), cwd=tmp_path)
        assert proc.returncode == 0 and "sample_space  complete" in proc.stdout, proc.stderr[-2000:]
    finally:
        shutil.rmtree(REPO / "runs" / tmp_path.name, ignore_errors=True)


def test_inspect_a_damaged_manifest(space_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(space_dir, copy)
    write(copy / "manifest.json", "{not json")
    assert_one_error_line(spmcmc_cli("inspect", str(copy)), "manifest.json is damaged")


# ---------------------------------------------------------------- resume edge cases
RESUME = [*TINY, "stages=[sample_space,spmcmc]", "spmcmc.mode=chains", "spmcmc.iterations=60"]


@pytest.fixture(scope="module")
def clean_spmcmc(tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    assert run_cli(*RESUME, f"output_dir={out}").returncode == 0
    return stage_paths(out)


def killed_in_spmcmc(out: Path) -> Path:
    proc = run_cli(*RESUME, f"output_dir={out}", env={"SPMCMC_KILL_AT": "spmcmc.step:33"})
    assert proc.returncode == -9, proc.stderr[-2000:]
    return next((out / "spmcmc").glob("*.partial"))


def test_pair_cache_line_of_the_wrong_shape_is_skipped(tmp_path, clean_spmcmc):
    partial = killed_in_spmcmc(tmp_path)
    with open(partial / "pair_cache.rank0.jsonl", "a") as fh:
        fh.write("[1, 2]\n{\"k\": 3}\n\"text\"\n")
    assert run_cli(*RESUME, f"output_dir={tmp_path}").returncode == 0
    assert dataset_files(stage_paths(tmp_path)["spmcmc"]) == dataset_files(clean_spmcmc["spmcmc"])


def test_deleted_pair_cache_with_kept_checkpoints_ends_the_same(tmp_path, clean_spmcmc):
    partial = killed_in_spmcmc(tmp_path)
    (partial / "pair_cache.rank0.jsonl").unlink()
    proc = run_cli(*RESUME, f"output_dir={tmp_path}")
    assert proc.returncode == 0 and "restarting chains" in proc.stdout
    assert dataset_files(stage_paths(tmp_path)["spmcmc"]) == dataset_files(clean_spmcmc["spmcmc"])


def test_damaged_generation_chunk_is_generated_again(tmp_path, clean_spmcmc):
    args = [*TINY, "stages=[sample_space]"]
    proc = run_cli(*args, f"output_dir={tmp_path}", env={"SPMCMC_KILL_AT": "sample_space.chunk:2"})
    assert proc.returncode == -9
    chunk = next((tmp_path / "sample_space").glob("*.partial/_state/chunks/chunk_00000.json"))
    write(chunk, '[{"text": "cut')
    proc = run_cli(*args, f"output_dir={tmp_path}")
    assert proc.returncode == 0 and "chunk_00000.json is damaged" in proc.stdout
    assert dataset_files(stage_paths(tmp_path)["sample_space"]) == dataset_files(clean_spmcmc["sample_space"])


def test_complete_marker_without_dataset_files_is_recomputed(tmp_path):
    args = [*TINY, "stages=[sample_space]", f"output_dir={tmp_path}"]
    assert run_cli(*args).returncode == 0
    path = stage_paths(tmp_path)["sample_space"]
    before = dataset_files(path)
    for arrow in (path / "dataset").glob("*.arrow"):
        arrow.unlink()
    proc = run_cli(*args)
    assert proc.returncode == 0 and "marked complete but its dataset files are missing" in proc.stdout
    assert dataset_files(path) == before


def test_subset_run_keeps_the_other_stages_in_the_manifest(tmp_path):
    run_pipeline(tiny_config(tmp_path, "stages=[sample_space,spmcmc]"))
    run_pipeline(tiny_config(tmp_path, "stages=[spmcmc]", "spmcmc.iterations=50"))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["sample_space", "spmcmc"]
    assert all(e["complete"] for e in manifest["stages"].values())
    trace = load_from_disk(str(stage_paths(tmp_path)["spmcmc"] / "dataset"))["trace"]
    assert trace.num_rows == 2 * 50  # the entry is the latest run's
    assert np.array_equal(sorted(set(trace["chain"])), [0, 1])


# ---------------------------------------------------------------- hostile input to the newer features (issue 20)
def prompt_ids_of(out: Path) -> list[str]:
    return sorted(set(load_from_disk(str(stage_paths(out)["sample_space"] / "dataset"))["prompt_id"]))


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
        proc = run_cli(*TINY, f"output_dir={out}", "stages=[sample_space]", "sample_space.query=null",
                       f"sample_space.prompts={path}", "evaluate.query=x", timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        ids.append(prompt_ids_of(out))
    assert ids[0] == ids[1] == ["1", "2"]


def test_typed_text_is_never_resolved_by_omegaconf(tmp_path):
    typed = r"Joke about \${oc.env:HOME} and ${oc.env:HOME} please"
    rec = write(tmp_path / "r.yaml", f"sample_space:\n  query: 'x'\njudge:\n  question: '{typed}'\n")
    proc = run_cli(f"recipe={rec}", f"sample_space.query={typed}", "model.name_or_path=embedded:tiny-random",
                   "wandb.mode=disabled", "sample_space.num_samples=2", "sample_space.max_new_tokens=4",
                   "sample_space.drop_truncated=false", "sample_space.min_chars=1", f"output_dir={tmp_path / 'out'}",
                   "stages=[sample_space]", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((stage_paths(tmp_path / "out")["sample_space"] / "meta.json").read_text())
    assert meta["config"]["sample_space"]["query"] == typed
    from pipeline.config import load_config

    assert load_config([f"recipe={rec}"]).judge.question == typed  # a recipe line keeps it too
    assert str(Path.home()) not in json.dumps(meta["config"])


def winrate_files(tmp_path, key_rows: str, choices: str = "item,choice\na-0,A\nb-0,A\n"):
    key = write(tmp_path / "w.key.csv", "item,prompt_id,tuned\n" + key_rows)
    sheet = write(tmp_path / "rater1.csv", choices)
    return ["annotate", "import", "--winrate", "--key", str(key), str(sheet), "--out", str(tmp_path / "w.json")]


@pytest.mark.parametrize("rows, message", [
    ("a-0,a,X\nb-0,b,A\n", "item 'a-0' has tuned='X'; it must be A or B"),
    ("a-0,a,\nb-0,b,A\n", "item 'a-0' has tuned=''; it must be A or B"),
    ("a-0,a,A\nb-0,b,A\na-0,a,A\n", "item 'a-0' is listed twice"),
    ("a-0,a,A\nb-0,b,A\na-0,a,B\n", "item 'a-0' is listed twice"),
    ("a-0,,A\nb-0,b,A\n", "row 1 has no prompt_id"),
], ids=["unknown side", "blank side", "duplicate row", "contradicting rows", "blank prompt id"])
def test_a_damaged_winrate_key_is_refused(tmp_path, rows, message):
    assert_one_error_line(spmcmc_cli(*winrate_files(tmp_path, rows)), message)
    assert not (tmp_path / "w.json").exists()


def test_a_lower_case_winrate_key_reads_as_upper_case(tmp_path):
    proc = spmcmc_cli(*winrate_files(tmp_path, "a-0,a,a\nb-0,b,a\n"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "w.json").read_text())["mean"] == 1.0  # the tuned answer was picked every time


def test_winrate_sheets_without_choices_are_one_line(tmp_path):
    proc = spmcmc_cli(*winrate_files(tmp_path, "a-0,a,A\nb-0,b,A\n", "item,choice\na-0,\nb-0, \n"))
    assert_one_error_line(proc, "the sheets hold no choices")
    assert not (tmp_path / "w.json").exists()


def test_annotate_import_refuses_infinite_ratings(tmp_path):
    sheet = write(tmp_path / "s.csv", "id,text,rating\n1,a,inf\n2,b,1e309\n")
    assert_one_error_line(spmcmc_cli("annotate", "import", str(sheet), "--out", str(tmp_path / "r.csv")),
                          "rating 'inf' is not a finite number")


LOOP = ["stages=[sample_space,spmcmc,preferences,finetune]"]


def test_the_manifest_lists_only_this_run(tmp_path):
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


def test_inspect_and_export_of_a_stage_without_its_dataset(space_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(space_dir, copy)
    shutil.rmtree(stage_paths(copy)["sample_space"] / "dataset")
    proc = spmcmc_cli("inspect", str(copy))
    assert proc.returncode == 0 and "sample_space  damaged" in proc.stdout and "Traceback" not in proc.stderr
    assert_one_error_line(spmcmc_cli("annotate", "export", str(copy), "--out", str(tmp_path / "s.csv")),
                          "stage has missing or damaged dataset files")


@pytest.mark.parametrize("change, message", [
    (lambda e: e.pop("complete"), "entry 'sample_space' lacks a path, fingerprint or complete flag"),
    (lambda e: e.update(path="/etc"), "entry 'sample_space' points outside the output_dir"),
    (lambda e: e.update(path="../../.."), "entry 'sample_space' points outside the output_dir"),
], ids=["no complete flag", "absolute path", "path upwards"])
def test_inspect_a_manifest_entry_that_is_damaged(space_dir, tmp_path, change, message):
    copy = tmp_path / "copy"
    shutil.copytree(space_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    change(manifest["stages"]["sample_space"])
    write(copy / "manifest.json", json.dumps(manifest))
    assert_one_error_line(spmcmc_cli("inspect", str(copy)), message)


def custom_code_model(tmp_path, tiny_model_dir) -> Path:
    """A model folder whose classes exist only as code in it; that code would leave a marker file if it ran."""
    folder = tmp_path / "custom"
    shutil.copytree(tiny_model_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="spmcmc_custom", auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                                          "AutoModelForCausalLM": "modeling_custom.CustomModel"})
    write(folder / "config.json", json.dumps(config))
    for name in ("configuration_custom.py", "modeling_custom.py"):
        write(folder / name, f"open({str(tmp_path / 'code_ran')!r}, 'w').write('ran')\n")
    return folder


def test_a_model_that_needs_its_own_code_is_one_line(tmp_path, tiny_model_dir):
    folder = custom_code_model(tmp_path, tiny_model_dir)
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'out'}", f"model.name_or_path={folder}", timeout=300)
    assert_one_error_line(proc, "ships its own Python code, which runs only with model.trust_remote_code=true")
    assert not (tmp_path / "code_ran").exists() and not (tmp_path / "out" / "sample_space").exists()


PROMPT_FILE_CASES = [
    ('{"prompt": 42}\n{"prompt": "Tell me a joke."}\n', "prompt 1 is int 42, not text"),
    ('{"prompt": ""}\n{"prompt": "Tell me a joke."}\n', "prompt 1 is empty"),
    ('{"id": 1.5, "prompt": "a"}\n{"prompt": "b"}\n', "prompt 1 has id 1.5 (float)"),
    ('{"id": 1, "prompt": "a"}\n{"id": "1", "prompt": "b"}\n', "id '1' is used by prompts 1 and 2"),
]


@pytest.mark.parametrize("text, message", PROMPT_FILE_CASES, ids=[c[1][:24] for c in PROMPT_FILE_CASES])
def test_prompt_file_mistakes(tmp_path, text, message):
    path = write(tmp_path / "p.jsonl", text)
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'out'}", "sample_space.query=null", f"sample_space.prompts={path}",
                   "evaluate.query=x", timeout=300)
    assert_one_error_line(proc, message)


def test_a_prompt_beyond_the_model_context_stops_before_any_work(tmp_path):
    long = "Tell me a joke about " + " ".join(["cats and dogs and birds"] * 700) + "."  # ~16 KB, ~3.5k tokens
    path = write(tmp_path / "p.jsonl", json.dumps({"id": 1, "prompt": long}) + "\n" +
                 json.dumps({"id": 2, "prompt": "Tell me a joke."}) + "\n")
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'out'}", "sample_space.query=null", f"sample_space.prompts={path}",
                   "preferences.split=candidate", "evaluate.query=x", timeout=300)
    assert_one_error_line(proc, "exceeds the model's context of 2048 tokens")
    assert not (tmp_path / "out" / "sample_space").exists()


@pytest.mark.parametrize("args, message", [
    (["rounds.count=2", "stages=[spmcmc]"], "add sample_space, preferences, finetune: "
                                             "stages=[sample_space,spmcmc,preferences,finetune]"),
    (["rounds.count=1000", "stages=[sample_space,spmcmc,preferences]"], "add finetune"),
    (["rounds.min_diversity=nan"], "rounds.min_diversity: must be a finite number, got nan"),
], ids=["rounds of one stage", "many rounds without finetune", "nan"])
def test_rounds_mistakes_name_what_to_change(tmp_path, args, message):
    assert_one_error_line(run_cli(*TINY, f"output_dir={tmp_path}", *args, timeout=120), message)
    assert not (tmp_path / "sample_space").exists()


@pytest.mark.parametrize("text, message", [
    ("item,rater,rating\n" + "".join(f"i{k},r0,{k % 7 + 1}\n" for k in range(12)) + "i0,r0,7\n",
     "rater 'r0' rated item 'i0' more than once"),
    ("text,rating\n" + "".join(f"joke {k},{k % 7 + 1}\n" for k in range(12)) + "joke x,nan\n",
     "`rating` must be numeric, found 'nan'"),
    ("text,rating\n" + "".join(f"joke {k},{k % 7 + 1}\n" for k in range(12)) + "joke x,\n", "`rating` is empty in row 13"),
], ids=["repeated rater and item", "nan cell", "empty cell"])
def test_ratings_file_mistakes(tmp_path, text, message):
    path = write(tmp_path / "r.csv", text)
    assert_one_error_line(run_cli(*TINY, f"output_dir={tmp_path / 'out'}", "stages=[evaluate]",
                                  f"evaluate.human_ratings={path}", timeout=300), message)


def test_wandb_offline_writes_only_under_the_output_dir(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    for var in ("WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    env = {"HOME": str(home), "SPMCMC_CACHE": str(Path.home() / ".cache" / "spmcmc-pipeline")}  # the built models
    proc = run_cli(*TINY, f"output_dir={tmp_path / 'out'}", "stages=[sample_space]", "wandb.mode=offline", env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list((tmp_path / "out" / "wandb").glob("offline-run-*"))
    assert not [p for p in home.rglob("*") if "wandb" in p.name]
