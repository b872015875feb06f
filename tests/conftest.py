"""Shared fixtures: the tiny random model (built locally, no network) and helpers to run the pipeline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_config(output_dir, *overrides: str):
    """The `tiny` recipe (2-layer random model, W&B disabled) writing to `output_dir`."""
    from pipeline.config import load_config

    return load_config(["recipe=tiny", f"output_dir={output_dir}", *overrides])


def run_pipeline(cfg) -> None:
    from pipeline.run import pipeline

    pipeline(cfg)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, launcher: list[str] | None = None):
    """The real command in a subprocess, from the repo root."""
    cmd = (launcher or [sys.executable]) + ["pipeline/run.py", *args]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def assert_one_error_line(proc, message: str) -> str:
    """The command failed with exit 2 and exactly one `error:` line, its last, holding `message`; no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], lines[-5:]
    assert message in errors[0], errors[0]
    return errors[0]


def assert_shape(value, kind, where: str = "summary") -> None:
    """`value` (a summary read back from JSON) has every key its writer's TypedDict declares required, with a value
    of the declared type, nested TypedDicts too: a renamed or retyped key fails here, not as a silent "n/a"."""
    import typing

    if typing.is_typeddict(kind):
        assert isinstance(value, dict), f"{where}: {type(value).__name__}, not a dict"
        hints = typing.get_type_hints(kind)
        for key in kind.__required_keys__:
            assert key in value, f"{where}: no key {key!r} ({kind.__qualname__})"
        for key, hint in hints.items():
            if key in value:
                assert_shape(value[key], hint, f"{where}.{key}")
        return
    options = typing.get_args(kind) if typing.get_origin(kind) in (typing.Union, __import__("types").UnionType) else (kind,)
    if value is None:
        assert type(None) in options, f"{where}: None where {kind} is declared"
        return
    for option in options:
        if option is type(None):
            continue
        base = typing.get_origin(option) or option
        if typing.is_typeddict(option):
            return assert_shape(value, option, where)
        if base is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if isinstance(value, base):
            return
    raise AssertionError(f"{where}: {value!r} is not {kind}")


def stage_paths(output_dir) -> dict[str, Path]:
    """Each stage's folder, from manifest.json (stored relative to output_dir)."""
    from pipeline.artifacts import read_manifest

    return {k: Path(v["path"]) for k, v in read_manifest(output_dir)["stages"].items()}


def dataset_files(stage_dir: Path) -> dict[str, bytes]:
    """Every file of a saved dataset, for byte-for-byte comparisons."""
    return {str(p.relative_to(stage_dir)): p.read_bytes() for p in sorted((stage_dir / "dataset").rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="session")
def tiny_model_dir():
    from pipeline.config import ModelConfig
    from pipeline.models import resolve_model_path

    return resolve_model_path(ModelConfig(name_or_path="embedded:tiny-random"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from pipeline.config import ModelConfig
    from pipeline.models import load_model

    return load_model(ModelConfig(name_or_path="embedded:tiny-random"))
