"""Judges beyond the policy: a reward function (TRL's convention) and another local model, through the same
design, pair cache, estimates and pairs; every mistake in a reward function is one clear line."""


import json

import numpy as np
import pytest
from datasets import load_from_disk

from conftest import TINY, assert_one_error_line, run_main, run_pipeline, stage_paths, tiny_config, write


@pytest.mark.slow
def test_a_reward_function_judges_end_to_end_on_tiny(tmp_path):
    proc = run_main("recipe=tiny", f"output_dir={tmp_path}", "judge.kind=function", "judge.function=pipeline.rewards:length",
                    "judge.temperature=0.5", "evaluate.winrate_samples=9")  # 9: a best-of-8 ceiling
    assert proc.returncode == 0, proc.stderr[-3000:]
    paths = stage_paths(tmp_path)
    sp = load_from_disk(str(paths["spmcmc"] / "dataset"))
    text = sp["candidates"]["text"]
    pairs = sp["pairs"]
    expected = [1 / (1 + np.exp(-(len(text[f]) - len(text[s])) / 100 / 0.5))
                for f, s in zip(pairs["first_id"], pairs["second_id"])]
    assert np.allclose(pairs["p_first"], expected, atol=1e-9)  # sigmoid((r_first - r_second) / T), no position bias
    summary = json.loads((paths["spmcmc"] / "summary.json").read_text())
    assert summary["position_bias"] == pytest.approx(0.5) and summary["confounds"]["features"]["length"]["spearman"] > 0.95
    train = load_from_disk(str(paths["preferences"] / "dataset"))["train"]
    assert train.num_rows > 0
    assert all(len(c[0]["content"]) > len(r[0]["content"]) for c, r in zip(train["chosen"], train["rejected"]))
    ev = json.loads((paths["evaluate"] / "summary.json").read_text())  # one query: the yardstick still runs
    assert ev["ceiling"] > 0.5 and ev["win_rate"] is not None and len(ev["win_rate_ci"]) == 2
    assert ev["yardstick"]["base_fresh_win_rate"]["mean"] is not None and "win_rate_tuned_judge" not in ev["yardstick"]
    assert "headroom share" in (tmp_path / "report.md").read_text()


def test_a_reward_function_file_enters_the_fingerprint(tmp_path):
    fn = write(tmp_path / "my_reward.py", "def short(prompts, completions, **kw):\n    return [-len(c) for c in completions]\n")
    args = ["stages=[sample_space,spmcmc]", "judge.kind=function", f"judge.function={fn}:short"]
    run_pipeline(tiny_config(tmp_path / "out", *args))
    first = stage_paths(tmp_path / "out")["spmcmc"]
    fn.write_text("def short(prompts, completions, **kw):\n    return [-2 * len(c) for c in completions]\n")
    run_pipeline(tiny_config(tmp_path / "out", *args))
    second = stage_paths(tmp_path / "out")["spmcmc"]
    assert first != second  # the edited function is a new judge: its comparisons are recomputed
    p1 = load_from_disk(str(first / "dataset"))["pairs"]["p_first"]
    p2 = load_from_disk(str(second / "dataset"))["pairs"]["p_first"]
    assert not np.allclose(p1, p2)


def test_a_helper_module_beside_the_reward_file_enters_the_fingerprint(tmp_path):
    """Editing a local module that the reward file imports (transitively, by plain or relative import) changes the
    judge's key; installed packages do not enter it."""
    from pipeline.reward_judge import function_sha, local_imports

    (tmp_path / "pkg").mkdir()
    write(tmp_path / "pkg" / "__init__.py", "")
    write(tmp_path / "pkg" / "deep.py", "SCALE = 1\n")
    write(tmp_path / "helper.py", "from pkg.deep import SCALE\ndef score(c):\n    return -SCALE * len(c)\n")
    fn = write(tmp_path / "reward.py", "import numpy\nimport helper\ndef f(prompts, completions, **kw):\n"
                                         "    return [helper.score(c) for c in completions]\n")
    assert {p.name for p in local_imports(fn)} == {"helper.py", "__init__.py", "deep.py"}
    before = function_sha(f"{fn}:f")
    write(tmp_path / "pkg" / "deep.py", "SCALE = 2\n")
    function_sha.cache_clear()  # a new process: the fingerprint is computed afresh per run
    assert function_sha(f"{fn}:f") != before


def test_a_directory_named_as_the_reward_file_is_said_to_be_one(tmp_path):
    (tmp_path / "rewards.py").mkdir()
    proc = run_main("recipe=tiny", f"output_dir={tmp_path / 'out'}", "stages=[sample_space,spmcmc]", "judge.kind=function",
                    f"judge.function={tmp_path / 'rewards.py'}:f")
    assert_one_error_line(proc, "is a directory, not a file; give FILE.py:NAME")


def test_another_model_judges(tmp_path, tiny_model_dir, finished):
    """Two tiny models: the policy writes, a second model (other random weights) judges."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.config import JudgeConfig
    from pipeline.judge import ModelJudge

    other = tmp_path / "other-judge"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(other)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(other)

    run_pipeline(tiny_config(tmp_path / "a", "stages=[sample_space,spmcmc]", f"judge.model={other}"))
    a = load_from_disk(str(stage_paths(tmp_path / "a")["spmcmc"] / "dataset"))
    b = load_from_disk(str(stage_paths(finished(*TINY))["spmcmc"] / "dataset"))  # the policy judging itself
    assert a["candidates"]["text"] == b["candidates"]["text"]  # the same policy wrote them
    assert not np.allclose(a["pairs"]["p_first"], b["pairs"]["p_first"])
    texts = a["candidates"]["text"]
    direct = ModelJudge(AutoModelForCausalLM.from_pretrained(other), AutoTokenizer.from_pretrained(other), JudgeConfig(),
                        "Tell me a joke.", texts)(np.array(a["pairs"]["first_id"][:6]), np.array(a["pairs"]["second_id"][:6]))
    assert np.allclose(direct, a["pairs"]["p_first"][:6], atol=1e-5)


BAD_FUNCTIONS = [
    ("raises", "def f(prompts, completions, **kw):\n    raise ValueError('no jokes today')\n",
     "raised ValueError: no jokes today"),
    ("wrong length", "def f(prompts, completions, **kw):\n    return [1.0]\n", "returned 1 rewards for"),
    ("nan", "def f(prompts, completions, **kw):\n    return [float('nan')] * len(completions)\n", "rewards must be finite"),
    ("not numbers", "def f(prompts, completions, **kw):\n    return ['good'] * len(completions)\n",
     "must return a list of numbers"),
    ("a mapping", "def f(prompts, completions, **kw):\n    return {i: 1.0 for i in range(len(completions))}\n",
     "must return a list of numbers, one per completion, got dict"),
    ("a string", "def f(prompts, completions, **kw):\n    return '1' * len(completions)\n",
     "must return a list of numbers, one per completion, got str"),
    ("import error", "import no_such_module_here\ndef f(prompts, completions, **kw):\n    return []\n",
     "importing"),
    ("missing name", "def g(prompts, completions, **kw):\n    return []\n", "has no 'f'; its callables are ['g']"),
]


@pytest.mark.parametrize("name, source, message", BAD_FUNCTIONS, ids=[c[0] for c in BAD_FUNCTIONS])
def test_every_bad_reward_function_is_one_clear_line(tmp_path, name, source, message):
    fn = write(tmp_path / "bad_reward.py", source)
    proc = run_main("recipe=tiny", f"output_dir={tmp_path / 'out'}", "stages=[sample_space,spmcmc]", "judge.kind=function",
                    f"judge.function={fn}:f")
    assert_one_error_line(proc, message)
    assert not any((tmp_path / "out" / "spmcmc").glob("*/_COMPLETE"))


CONFIG_CASES = [
    (["judge.kind=function"], "judge.kind=function needs judge.function"),
    (["judge.function=pipeline.rewards:length"], "add judge.kind=function"),
    (["judge.kind=function", "judge.function=pipeline.rewards"], "must be FILE.py:NAME or module:NAME"),
    (["judge.kind=function", "judge.function=/no/such/file.py:f"], "file '/no/such/file.py' does not exist"),
    (["judge.kind=function", "judge.function=no_such_module_xyz:f"], "module 'no_such_module_xyz' cannot be found"),
    (["judge.kind=function", "judge.function=pipeline.rewards:length", "judge.model=embedded:tiny-random"],
     "pick one judge"),
]


@pytest.mark.parametrize("args, message", CONFIG_CASES, ids=[c[1][:30] for c in CONFIG_CASES])
def test_judge_settings_mistakes(tmp_path, args, message):
    proc = run_main("recipe=tiny", f"output_dir={tmp_path}", "stages=[sample_space,spmcmc]", *args)
    assert_one_error_line(proc, message)


def test_a_reward_on_a_tiny_scale_still_gives_pairs(tmp_path):
    """W = sigmoid(reward gap / temperature) is the reward's own scale: a confidence floor meant for a model's measured
    choice would drop every pair of a function rewarding length in millionths; the function's strict preference is kept."""
    fn = write(tmp_path / "tiny_reward.py", "def longer(prompts, completions, **kw):\n"
                                            "    return [len(c) / 1e6 for c in completions]\n")
    run_pipeline(tiny_config(tmp_path / "out", "stages=[sample_space,spmcmc,preferences]", "judge.kind=function",
                             f"judge.function={fn}:longer", "preferences.min_confidence=0.6"))
    path = stage_paths(tmp_path / "out")["preferences"]
    train = load_from_disk(str(path / "dataset"))["train"]
    assert train.num_rows > 0 and max(train["confidence"]) < 0.51
    assert all(len(c[0]["content"]) > len(r[0]["content"]) for c, r in zip(train["chosen"], train["rejected"]))
    summary = json.loads((path / "summary.json").read_text())
    assert any("min_confidence=0.6 is not applied" in w for w in summary["warnings"])
