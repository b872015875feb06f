"""pipeline/config.py: recipes and key=value overrides typed by the schema, one-line errors, values kept as
typed, rounds settings checked before any work."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY, assert_one_error_line, run_cli, run_main, run_pipeline, stage_paths, tiny_config, write
from pipeline.config import ConfigError, all_keys, available_recipes, help_text, load_config


@pytest.mark.parametrize("recipe", available_recipes())
def test_every_recipe_loads(recipe):
    cfg = load_config([f"recipe={recipe}"])
    assert cfg.recipe == recipe
    assert cfg.output_dir == f"runs/{recipe}"


def test_overrides_apply_and_keep_types():
    cfg = load_config(["recipe=tiny", "spmcmc.iterations=70", "judge.labels=[X,Y]", "stages=[spmcmc,sample_space]"])
    assert cfg.spmcmc.iterations == 70
    assert cfg.judge.labels == ["X", "Y"]
    assert cfg.stages == ["sample_space", "spmcmc"]  # always in pipeline order


def test_chains_accepts_yaml_booleans():
    assert load_config(["recipe=tiny", "spmcmc.chains=true"]).spmcmc.chains == "true"
    assert load_config(["recipe=tiny", "spmcmc.chains=false"]).spmcmc.chains == "false"


@pytest.mark.parametrize("argv, message", [
    (["recipe=jokes"], "unknown recipe 'jokes' (did you mean 'jokes_dpo'?)"),
    (["recipe=tiny", "spmcmc.iteration=5"], "did you mean 'spmcmc.iterations'?"),
    (["recipe=tiny", "modle.name_or_path=x"], "did you mean 'model.name_or_path'?"),
    (["recipe=tiny", "spmcmc.iterations=abc"], "spmcmc.iterations: Value 'abc'"),
    (["recipe=tiny", "spmcmc.iterations=-3"], "spmcmc.iterations: must be >= 1"),
    (["recipe=tiny", "spmcmc.iterations=3"], "spmcmc.burn_in: 5 must be >= 0 and < spmcmc.iterations (3)"),
    (["recipe=tiny", "judge.temperature=0"], "judge.temperature: must be > 0"),
    (["recipe=tiny", "model.dtype=float64"], "model.dtype: Invalid value 'float64'"),
    (["recipe=tiny", "stages=[sample_spac]"], "did you mean 'sample_space'?"),
    (["recipe=tiny", "spmcmc.order=sideways"], "spmcmc.order: Invalid value 'sideways'"),
    (["recipe=tiny", "sample_space.query="], "sample_space.query: a value is required"),
    (["recipe=tiny", "oops"], "is not key=value"),
    ([], "missing recipe=NAME"),
])
def test_bad_input_is_one_clear_line(argv, message):
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_required_value(tmp_path):
    recipe = tmp_path / "noquery.yaml"
    recipe.write_text("spmcmc:\n  iterations: 200\n")
    with pytest.raises(ConfigError, match="sample_space.query: a value is required"):
        load_config([f"recipe={recipe}"])


def test_help_lists_every_setting_with_default():
    text = help_text()
    for key, _ in all_keys():
        assert f"  {key} = " in text


def test_cli_errors_exit_nonzero_without_traceback():
    for args in (["recipe=nope"], ["recipe=tiny", "spmcmc.iteration=5"]):
        proc = run_cli(*args, timeout=60)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr
        assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")


def test_module_and_path_invocations_resolve_the_same_config():
    outs = []
    for cmd in ([sys.executable, "pipeline/run.py"], [sys.executable, "-m", "pipeline.run"]):
        proc = subprocess.run(cmd + ["recipe=tiny", "spmcmc.iteration=1"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        outs.append((proc.returncode, proc.stderr))
    assert outs[0] == outs[1]
    help_out = subprocess.run([sys.executable, "pipeline/run.py", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
    assert help_out.returncode == 0 and "spmcmc.iterations = 1250" in help_out.stdout


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


def test_typed_text_is_never_resolved_by_omegaconf(tmp_path):
    typed = r"Joke about \${oc.env:HOME} and ${oc.env:HOME} please"
    rec = write(tmp_path / "r.yaml", f"sample_space:\n  query: 'x'\njudge:\n  question: '{typed}'\n")
    proc = run_main(f"recipe={rec}", f"sample_space.query={typed}", "model.name_or_path=embedded:tiny-random",
                    "wandb.mode=disabled", "sample_space.num_samples=2", "sample_space.max_new_tokens=4",
                    "sample_space.drop_truncated=false", "sample_space.min_chars=1", f"output_dir={tmp_path / 'out'}",
                    "stages=[sample_space]")
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((stage_paths(tmp_path / "out")["sample_space"] / "meta.json").read_text())
    assert meta["config"]["sample_space"]["query"] == typed
    from pipeline.config import load_config

    assert load_config([f"recipe={rec}"]).judge.question == typed  # a recipe line keeps it too
    assert str(Path.home()) not in json.dumps(meta["config"])


@pytest.mark.parametrize("args, message", [
    (["rounds.count=2", "stages=[spmcmc]"], "add sample_space, preferences, finetune: "
                                             "stages=[sample_space,spmcmc,preferences,finetune]"),
    (["rounds.count=1000", "stages=[sample_space,spmcmc,preferences]"], "add finetune"),
    (["rounds.min_diversity=nan"], "rounds.min_diversity: must be a finite number, got nan"),
], ids=["rounds of one stage", "many rounds without finetune", "nan"])
def test_rounds_mistakes_name_what_to_change(tmp_path, args, message):
    assert_one_error_line(run_cli(*TINY, f"output_dir={tmp_path}", *args, timeout=120), message)
    assert not (tmp_path / "sample_space").exists()
