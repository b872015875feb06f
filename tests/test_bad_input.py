"""The cross-cutting table: every user mistake, in settings and recipes or met by a stage, is one `error:` line
with exit 2 and no traceback, through the real command, and leaves no stage marked complete. The mistakes of
one module's own inputs are tested beside it (test_ratings.py, test_prompts.py, test_cli.py, ...)."""

import json
import shutil

import pytest

from conftest import TINY, assert_one_error_line, run_cli, run_main, write
from pipeline.artifacts import MARKER


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
    ("no held-out prompt", lambda t: TINY + ["sample_space.query=null", "sample_space.prompts=[a,b,c]",
                                          "evaluate.query=Tell me a joke.", "preferences.test_fraction=0"],
     "preferences.test_fraction: 0 holds out no prompt of the prompt set"),
    ("control without confounds", lambda t: TINY + ["confounds.control=[]", "preferences.control=true"],
     "preferences.control: true needs confounds to hold fixed, but confounds.control is empty"),
    ("control with another score", lambda t: TINY + ["preferences.control=true", "preferences.score=bt"],
     "keep preferences.score=auto"),
    ("matching without control", lambda t: TINY + ["preferences.max_confound_gap=1"], "needs preferences.control=true"),
]


@pytest.mark.parametrize("name, args, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_mistakes(tmp_path, name, args, message):
    argv = args(tmp_path)
    out = [] if any(a.startswith("output_dir=") for a in argv) else [f"output_dir={tmp_path / 'out'}"]
    assert_one_error_line(run_cli(*argv, *out, timeout=120), message)


# ---------------------------------------------------------------- stages: data that must be refused


def one_candidate_pool(tmp_path):
    pool = tmp_path / "one.csv"
    pool.write_text("text\nOnly one joke here.\n")
    return [f"sample_space.extra_path={pool}", "sample_space.only_extra=true"]


def backtracking_pool(tmp_path):
    """Answers on which a nested repetition backtracks for minutes: 40-42 a's and a character it cannot match."""
    pool = write(tmp_path / "aaa.csv", "text\n" + "\n".join("a" * n + "!" for n in (40, 41, 42)) + "\n")
    return [f"sample_space.extra_path={pool}", "sample_space.only_extra=true"]


def no_template_model(tmp_path, tiny_model_dir):

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
    ("format regex that backtracks", lambda t, m: [*backtracking_pool(t), 'confounds.formats=["evil=(a|aa)+$"]',
                                                    "stages=[sample_space,spmcmc]"],
     "confounds.formats: the pattern '(a|aa)+$' took over 1 s on one answer", "spmcmc"),
]


@pytest.mark.parametrize("name, args, message, stage", STAGE_CASES, ids=[c[0] for c in STAGE_CASES])
def test_stage_mistakes(tmp_path, tiny_model_dir, name, args, message, stage):
    proc = run_main(*TINY, f"output_dir={tmp_path / 'out'}", *args(tmp_path, tiny_model_dir))
    line = assert_one_error_line(proc, message)
    assert "max_new_tokens" not in line or name == "empty sample space"
    assert not list((tmp_path / "out" / stage).glob(f"*/{MARKER}"))


def test_a_preamble_pattern_that_backtracks_stops_in_one_line():
    """Generated answers go through sample_space.preamble_patterns (the extra pool's do not): the same bound."""
    from pipeline.config import UserError
    from pipeline.generation import normalise

    with pytest.raises(UserError, match=r"sample_space.preamble_patterns: the pattern '\(a\|aa\)\+\$' took over 1 s"):
        normalise("a" * 40 + "!", ["(a|aa)+$"])
    assert normalise("Sure! Here's one: a joke", [r"^sure!? here'?s (one|a joke):?"]) == "a joke"
