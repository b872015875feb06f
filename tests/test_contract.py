"""The stage contract (pipeline/artifacts.py: Stage): every stage module defines it, its SETTINGS name every
config section it reads, so that a changed setting always changes its fingerprint, and the summary.json other
modules read has the shape its Summary declares."""

import json

import pytest

from conftest import assert_shape, run_pipeline, stage_paths, tiny_config
from pipeline.artifacts import check_stage
from pipeline.stages import evaluate, finetune, preferences, sample_space, spmcmc

STAGES = (sample_space, spmcmc, preferences, finetune, evaluate)
NO_RESULT = {"wandb", "output_dir", "stages", "recipe"}  # how and where a run goes, never what it computes


@pytest.mark.parametrize("module", STAGES, ids=lambda m: m.NAME)
def test_every_stage_follows_the_contract(module):
    check_stage(module)


def test_a_module_missing_the_contract_is_refused():
    import types

    with pytest.raises(TypeError, match="must define DISTRIBUTED"):
        check_stage(types.SimpleNamespace(NAME="x", VERSION=1, SETTINGS=(), OPTIONAL_INPUTS=(), run=print,
                                          __name__="x"))


class Recorder:
    """The config, recording which top-level sections are read."""

    def __init__(self, cfg, seen: set):
        self._cfg, self._seen = cfg, seen

    def __getattr__(self, name):
        self._seen.add(name)
        return getattr(self._cfg, name)


@pytest.mark.slow
def test_settings_name_every_section_a_stage_reads(tmp_path, monkeypatch):
    seen = {m.NAME: set() for m in STAGES}
    for module in STAGES:
        original = module.run
        monkeypatch.setattr(module, "run", lambda cfg, inputs, workdir, _m=module, _run=original:
                            _run(Recorder(cfg, seen[_m.NAME]), inputs, workdir))
    run_pipeline(tiny_config(tmp_path))
    for module in STAGES:
        assert seen[module.NAME], module.NAME  # the stage ran
        assert seen[module.NAME] - NO_RESULT <= set(module.SETTINGS), (module.NAME, seen[module.NAME])
    paths = stage_paths(tmp_path)
    for module in (sample_space, spmcmc, preferences, finetune):  # the summaries other modules read
        assert_shape(json.loads((paths[module.NAME] / "summary.json").read_text()), module.Summary, module.NAME)



@pytest.mark.parametrize("kind", [FutureWarning, DeprecationWarning])
def test_a_deprecation_at_a_project_call_site_fails_the_suite(kind):
    """pyproject's filterwarnings: a FutureWarning or DeprecationWarning attributed to a pipeline module is an error;
    one a library raises at its own call site is not (the module the warning is attributed to decides)."""
    def warn_from(module: str) -> None:
        code = compile(f"import warnings\nwarnings.warn('old name', {kind.__name__})", f"{module}.py", "exec")
        exec(code, {"__name__": module})

    with pytest.raises(kind, match="old name"):
        warn_from("pipeline.example")
    warn_from("trl.example")  # ignored: not ours
