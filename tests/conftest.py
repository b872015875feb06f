"""Shared fixtures: the tiny random model (built locally, no network) and helpers to run the pipeline."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# generated tests: a fixed example budget, the same examples every run (`--hypothesis-profile=explore` searches wider)
settings.register_profile("ci", max_examples=60, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("explore", max_examples=600, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _pin_worker() -> None:
    """Under pytest-xdist (`-n auto`, the default here) each worker gets its own share of the CPUs, inherited by the
    commands it starts. The pipeline sizes torch's threads by the affinity mask, so two workers on two cores no
    longer run two OpenMP threads each on both: that oversubscription made the tiny model's small matmuls up to
    100x slower, and made xdist look slower than one process."""
    worker, count = os.environ.get("PYTEST_XDIST_WORKER"), int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if worker and count > 1 and hasattr(os, "sched_setaffinity"):
        cpus, i = sorted(os.sched_getaffinity(0)), int(worker.removeprefix("gw"))
        os.sched_setaffinity(0, cpus[i::count] or [cpus[i % len(cpus)]])


_pin_worker()

# two processes on one machine: torchrun's rendezvous on a free port, so two workers' launches never collide
TORCHRUN_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


TINY = ["recipe=tiny"]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def spmcmc_cli(*args, cwd=REPO):
    """The `spmcmc` console command (python -m pipeline.cli) in a subprocess."""
    return command(["-m", "pipeline.cli", *args], cwd, {**os.environ, "PYTHONPATH": str(REPO)}, 120)


def prompt_ids_of(out: Path) -> list[str]:
    """The prompt ids of a run's sample space."""
    from datasets import load_from_disk

    return sorted(set(load_from_disk(str(stage_paths(out)["sample_space"] / "dataset"))["prompt_id"]))


def tiny_config(output_dir, *overrides: str):
    """The `tiny` recipe (2-layer random model, W&B disabled) writing to `output_dir`."""
    from pipeline.config import load_config

    return load_config(["recipe=tiny", f"output_dir={output_dir}", *overrides])


def run_pipeline(cfg) -> None:
    from pipeline.run import pipeline

    pipeline(cfg)


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, launcher: list[str] | None = None,
            ranks: int = 1):
    """The real command in a subprocess, from the repo root (a launcher's: in a fresh interpreter). `ranks=2`: two
    processes with torchrun's environment, forked from the warm interpreter (TORCHRUN_2 where the launch itself is
    under test)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if launcher:
        return subprocess.run([*launcher, "pipeline/run.py", *args], cwd=REPO, env=full_env, capture_output=True,
                              text=True, timeout=timeout)
    return command(["pipeline/run.py", *args], REPO, full_env, timeout, ranks)


class _Warm:
    """This worker's warm interpreter (tests/warm_start.py), started at its first command, and the environment its
    libraries were imported under."""
    proc: subprocess.Popen | None = None
    env: dict = {}
    buffer = b""
    # read at run time, or only to find the package (the warm interpreter imported it from this checkout), or set by
    # pytest for each test phase, or left behind by an in-process run and read by their library only when it runs
    # (W&B's service and folders at wandb.init, inductor's cache when it compiles)
    RUN_TIME = {"SPMCMC_KILL_AT", "PYTHONUNBUFFERED", "PYTHONPATH", "PYTEST_CURRENT_TEST", "WANDB_SERVICE",
                "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "TORCHINDUCTOR_CACHE_DIR"}

    @classmethod
    def _strip(cls, env) -> dict:
        return {k: v for k, v in env.items() if k not in cls.RUN_TIME}

    @classmethod
    def fits(cls, env: dict) -> bool:
        """The command's environment is this worker's but for what is read at run time: a test that sets anything
        else for its command (no network, another home, W&B's keys) gets a fresh interpreter."""
        return cls._strip(env) == cls._strip(os.environ) and env.get("PYTHONPATH", str(REPO)) == str(REPO)

    @classmethod
    def start(cls) -> subprocess.Popen:
        """The warm interpreter, started again when this worker's environment has changed since it was, beyond
        RUN_TIME (an in-process run may leave other variables behind): the commands must see the libraries imported
        under the environment they were given, as a fresh interpreter would."""
        import atexit

        if cls.proc is not None and cls._strip(cls.env) != cls._strip(os.environ):
            cls.proc.kill()
            cls.proc.wait()
        if cls.proc is None or cls.proc.poll() is not None:
            cls.env = dict(os.environ)
            cls.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "warm_start.py")], cwd=REPO,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, env=cls.env)
            cls.buffer = b""
            atexit.register(cls.proc.kill)
        return cls.proc

    @classmethod
    def reply(cls, timeout: float | None = None) -> dict | None:
        """The next JSON line from the warm interpreter; None when `timeout` seconds pass first."""
        import json
        import select
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in cls.buffer:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([cls.proc.stdout], [], [], left)[0]:
                return None
            chunk = os.read(cls.proc.stdout.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError(f"the warm interpreter (tests/warm_start.py) exited with {cls.proc.wait()}")
            cls.buffer += chunk
        line, cls.buffer = cls.buffer.split(b"\n", 1)
        return json.loads(line)


def command(argv: list[str], cwd, env: dict, timeout: float, ranks: int = 1) -> subprocess.CompletedProcess:
    """`python *argv` as a process of its own (`ranks` of them, as torchrun starts them): forked from the warm
    interpreter when its environment allows (the same exit code, output and SIGKILL as a fresh interpreter, without
    the ~10 s of imports), a fresh interpreter otherwise."""
    import json
    import signal
    import tempfile

    if not _Warm.fits(env):
        launch = [sys.executable] if ranks == 1 else [*TORCHRUN_2[:-1], str(ranks)]
        return subprocess.run([*launch, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    warm = _Warm.start()
    with tempfile.TemporaryDirectory() as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        warm.stdin.write((json.dumps({"argv": argv, "cwd": str(cwd), "env": env, "stdout": str(out),
                                      "stderr": str(err), "ranks": ranks}) + "\n").encode())
        pid = _Warm.reply()["pid"]
        done = _Warm.reply(timeout)
        if done is None:
            os.killpg(pid, signal.SIGKILL) if ranks > 1 else os.kill(pid, signal.SIGKILL)
            _Warm.reply()
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout, out.read_text(), err.read_text())
        read = lambda path: path.read_bytes().decode(errors="replace")  # noqa: E731
        return subprocess.CompletedProcess([sys.executable, *argv], done["returncode"], read(out), read(err))


@contextlib.contextmanager
def _cwd(path: Path):
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def run_main(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pipeline.run.main(args)` in this process, read back as `run_cli` reads a subprocess: exit code, stdout and
    stderr, and an exception that escapes main printed as the interpreter prints it (a traceback, exit 1). For the
    tests of what main does with a mistake (its one `error:` line and exit 2) without paying a fresh interpreter
    and a torch import per case; the process boundary itself is tested through `run_cli`."""
    from pipeline.run import main

    assert "SPMCMC_KILL_AT" not in os.environ and "SPMCMC_KILL_AT" not in (env or {}), "kills need run_cli"
    out, err, saved = io.StringIO(), io.StringIO(), {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _cwd(REPO):
            try:
                code = main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # what the interpreter would print before exiting 1
                traceback.print_exc()
                code = 1
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    return subprocess.CompletedProcess(["pipeline/run.py", *args], code, out.getvalue(), err.getvalue())


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


def design_resumes(tmp_path, finished, killed, args: list[str], kill_at: str) -> tuple[dict, int]:
    """The spmcmc design killed at `kill_at` and resumed against an uninterrupted run (the shared one): asserts
    byte-identical datasets; returns the resumed run's summary.json and the comparisons its judge computed."""
    import json

    out = killed.copy(args, [kill_at], tmp_path / "a")
    resumed = run_cli(*args, f"output_dir={out}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = stage_paths(out)["spmcmc"], stage_paths(finished(*args))["spmcmc"]
    assert dataset_files(a) == dataset_files(b)
    computed = sum(e["count"] for e in map(json.loads, (a / "work_log.jsonl").read_text().splitlines())
                   if e["event"] == "judge_comparisons")
    return json.loads((a / "summary.json").read_text()), computed


def shared_dir(tmp_path_factory, name: str) -> Path:
    """A folder every pytest-xdist worker of this session sees (the workers' common base), or this process's own."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name
    root.mkdir(exist_ok=True)
    return root


def once(root: Path, key, make):
    """`make(folder)` for `key`, done once per session across all workers: the first asks, builds it under a file lock
    and marks it done; the others wait for the lock and read what it returned (JSON). A `make` that fails leaves no
    mark, so the next asker tries again and fails the same way."""
    import hashlib
    import json

    from filelock import FileLock

    folder = root / hashlib.sha1(repr(key).encode()).hexdigest()[:12]
    done = folder.with_suffix(".done.json")
    with FileLock(str(folder.with_suffix(".lock"))):
        if not done.exists():
            result = make(folder)
            done.write_text(json.dumps(result))
    return json.loads(done.read_text())


def _proc_json(proc: subprocess.CompletedProcess) -> dict:
    return {"args": list(map(str, proc.args)), "returncode": proc.returncode, "stdout": proc.stdout,
            "stderr": proc.stderr}


def _proc(data: dict) -> subprocess.CompletedProcess:
    return subprocess.CompletedProcess(data["args"], data["returncode"], data["stdout"], data["stderr"])


class FinishedRuns:
    """Finished runs shared by the whole session: each distinct command line runs once, uninterrupted, in the
    process of the first test that asks for it (under xdist, once for all workers). A test reads the shared folder
    and never writes to it; a test that changes a run (damages it, resumes it, adds a stage) works on `copy(...)`."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, *args: str) -> Path:
        def make(out: Path) -> str:
            proc = run_main(*args, f"output_dir={out}")
            assert proc.returncode == 0, proc.stderr[-3000:]
            return str(out)

        return Path(once(self.root, args, make))

    def copy(self, args, dest: Path) -> Path:
        """A private copy of the finished run of `args` (manifest paths are relative: the copy is a run of its own)."""
        shutil.copytree(self(*args), dest, ignore=shutil.ignore_patterns(".lock"), dirs_exist_ok=True)
        return dest


@pytest.fixture(scope="session")
def finished(tmp_path_factory) -> FinishedRuns:
    return FinishedRuns(shared_dir(tmp_path_factory, "finished"))


class KilledRuns:
    """Runs killed (SIGKILL, through the real command) at a point, shared by the session: each (command line, kill
    points) is killed once; tests resume or damage a private `copy`."""

    def __init__(self, root: Path):
        self.root = root

    def copy(self, args, points, dest: Path) -> Path:
        import signal

        def make(out: Path) -> str:
            for point in points:
                proc = run_cli(*args, f"output_dir={out}", env={"SPMCMC_KILL_AT": point})
                assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-2000:])
            return str(out)

        shutil.copytree(once(self.root, (tuple(args), tuple(points)), make), dest, dirs_exist_ok=True)
        return dest


@pytest.fixture(scope="session")
def killed(tmp_path_factory) -> KilledRuns:
    return KilledRuns(shared_dir(tmp_path_factory, "killed"))


# killed everywhere: generation, the exact fill, the chains, training, finalising (one kill per point, in order)
EVERYWHERE = ["recipe=tiny", "sample_space.num_samples=20", "sample_space.chunk_size=5", "spmcmc.iterations=60",
              "finetune.save_steps=1"]
EVERYWHERE_KILLS = ["sample_space.chunk:2", "finalise:2", "spmcmc.design_chunk:1", "spmcmc.step:30", "finetune.save:2"]


@pytest.fixture(scope="session")
def resumed_everywhere(killed, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """EVERYWHERE killed at each of EVERYWHERE_KILLS through the real command, then resumed by it once (the stale
    lock of the killed runs is no obstacle): (its output_dir, the resuming process). Read, never written; the
    uninterrupted run to compare with is `finished(*EVERYWHERE)`."""
    def make(folder: Path) -> dict:
        out = killed.copy(EVERYWHERE, EVERYWHERE_KILLS, folder / "out")
        return {"out": str(out), **_proc_json(run_cli(*EVERYWHERE, f"output_dir={out}"))}

    done = once(shared_dir(tmp_path_factory, "everywhere"), "everywhere", make)
    return Path(done["out"]), _proc(done)


@pytest.fixture(scope="session")
def readme_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's launch command on the tiny model (`accelerate launch pipeline/run.py recipe=tiny`), all five
    stages, in a fresh interpreter, once per session: (its output_dir, the finished process). Read, never written."""
    def make(folder: Path) -> dict:
        launcher = ["accelerate", "launch", "--config_file", str(REPO / "accelerate_config.yaml")]
        return {"out": str(folder / "out"), **_proc_json(run_cli(*TINY, f"output_dir={folder / 'out'}",
                                                                 launcher=launcher))}

    done = once(shared_dir(tmp_path_factory, "readme"), "readme", make)
    return Path(done["out"]), _proc(done)


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


TOPICS = ["Tell me a joke about cats.", "Tell me a joke about dogs.", "Tell me a joke about fish."]


def prompt_file(folder, rows=None, header="id,prompt"):
    path = folder / "prompts.csv"
    rows = rows if rows is not None else [f"{t.split()[-1][:-1]},{t}" for t in TOPICS]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def prompt_args(path):
    return ["sample_space.query=null", f"sample_space.prompts={path}", "evaluate.query=Tell me a joke."]


@pytest.fixture(scope="session")
def three_prompts(tmp_path_factory):
    """recipe=tiny over a file of 3 prompts, all five stages, through the real command."""
    def make(folder: Path) -> str:
        folder.mkdir()
        proc = run_main("recipe=tiny", f"output_dir={folder / 'out'}", *prompt_args(prompt_file(folder)),
                        "evaluate.winrate_samples=3")
        assert proc.returncode == 0, proc.stderr[-3000:]
        return str(folder / "out")

    return Path(once(shared_dir(tmp_path_factory, "three"), "three", make))
