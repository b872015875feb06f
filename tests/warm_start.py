"""A warm interpreter for the tests' commands (`python tests/warm_start.py`, started by conftest.run_cli).

It imports once what every pipeline command imports (torch, transformers, datasets, TRL, ...), then forks one
child per command. The child runs the script (or `-m` module) as `__main__` with the command's argv, environment
and working directory, its stdout and stderr going to files, and exits with the script's code. It is a process of
its own: a SIGKILL kills it alone and reads back as -9, exactly as from a fresh interpreter. What it skips is the
import of the libraries, about 8-12 s per command on the 2-core machine, which was a third of the suite's time.

Nothing ran in this interpreter before the fork but imports and one tokenizer read (no encoding): no OpenMP or
tokenizers pool has started. Its other threads then are idle native ones (numpy's and scipy's OpenBLAS pools,
pyarrow's jemalloc background thread), which reset themselves in a forked child (pthread_atfork), as under
multiprocessing's fork. conftest sends here only commands whose environment differs from the one these modules were
imported under in variables read at run time (`_Warm.RUN_TIME`), and keeps a fresh interpreter for the rest.

Protocol: one JSON request per line on stdin; one JSON line back with the child's pid (with `ranks` > 1: the pid
of the group that starts them), then one with its exit code (negative: the signal that ended it).
"""

import json
import os
import sys

PRELOAD = ["numpy", "scipy.stats", "scipy.optimize", "pandas", "pyarrow", "datasets", "torch", "transformers",
           "transformers.models.llama.modeling_llama", "peft", "trl", "accelerate", "choix", "omegaconf", "tqdm",
           "matplotlib", "matplotlib.pyplot", "statsmodels.api", "wandb", "trl.trainer.dpo_trainer",
           "pipeline.config", "pipeline.artifacts", "pipeline.models", "pipeline.run",
           *(f"pipeline.stages.{stage}" for stage in ("sample_space", "spmcmc", "preferences", "finetune", "evaluate"))]


def child(req: dict) -> None:
    """Become the command; never returns."""
    import atexit
    import io
    import runpy
    import traceback

    code = 1
    try:
        os.environ.clear()
        os.environ.update(req["env"])
        os.chdir(req["cwd"])
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        mode = os.O_APPEND if req.get("append") else os.O_TRUNC  # ranks share their group's files
        for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
            f = os.open(path, os.O_WRONLY | os.O_CREAT | mode, 0o644)
            os.dup2(f, fd)
            os.close(f)
        # unbuffered, as PYTHONUNBUFFERED=1: what a killed command printed is in its files
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                      errors="backslashreplace")
        argv = req["argv"]
        try:
            if argv[0] == "-m":
                sys.argv = [argv[1], *argv[2:]]
                sys.path[0] = req["cwd"]  # `python -m` puts the working directory first
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                sys.argv = list(argv)
                sys.path[0] = os.path.dirname(os.path.abspath(argv[0]))
                runpy.run_path(argv[0], run_name="__main__")
            code = 0
        except SystemExit as e:  # as the interpreter exits: an int is the code, anything else is printed, code 1
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:
            traceback.print_exc()
            code = 1
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def group(req: dict) -> None:
    """torchrun's part for `req["ranks"]` processes on this machine, in a forked child; never returns. Each rank is a
    child of its own with the environment torchrun gives its workers (RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, MASTER_ADDR and a free MASTER_PORT for gloo's rendezvous, OMP_NUM_THREADS=1), writing to the
    group's stdout and stderr. As torchrun does, the first rank to fail stops the others (SIGTERM, then SIGKILL
    after 30 s: a rank left waiting on gloo for a dead peer would wait out its timeout), and the group exits 1 if
    any rank failed."""
    import signal
    import socket
    import time

    code = 1
    try:
        os.setpgid(0, 0)  # a timeout in conftest kills the group, ranks included
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        for path in (req["stdout"], req["stderr"]):
            open(path, "w").close()
        k, ranks = req["ranks"], set()
        for r in range(k):
            env = {"OMP_NUM_THREADS": "1", **req["env"], "RANK": str(r), "LOCAL_RANK": str(r), "GROUP_RANK": "0",
                   "WORLD_SIZE": str(k), "LOCAL_WORLD_SIZE": str(k), "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": str(port)}
            pid = os.fork()
            if pid == 0:
                child({**req, "env": env, "append": True})
            ranks.add(pid)
        failed_at = None
        while ranks:
            pid, status = os.wait() if failed_at is None else os.waitpid(-1, os.WNOHANG)
            if pid == 0:  # stopping the others: SIGTERM, then SIGKILL after torchrun's 30 s grace
                if time.monotonic() - failed_at > 30:
                    for other in ranks:
                        os.kill(other, signal.SIGKILL)
                time.sleep(0.05)
                continue
            ranks.discard(pid)
            if os.waitstatus_to_exitcode(status) != 0 and failed_at is None:
                failed_at = time.monotonic()
                for other in ranks:
                    os.kill(other, signal.SIGTERM)
        code = int(failed_at is not None)
    finally:
        os._exit(code)


def warm_tokenizer() -> None:
    """Read the tiny model's tokenizer into pipeline.models' per-process cache, which every child inherits: the
    commands here are the tests' `recipe=tiny` runs, and each read costs about 0.7 s."""
    from pipeline.config import ModelConfig
    from pipeline.models import load_tokenizer, resolve_model_path

    mcfg = ModelConfig(name_or_path="embedded:tiny-random")
    load_tokenizer(resolve_model_path(mcfg), mcfg)


def serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    warm_tokenizer()
    replies = os.fdopen(os.dup(1), "w")
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            group(req) if req.get("ranks", 1) > 1 else child(req)
        replies.write(json.dumps({"pid": pid}) + "\n")
        replies.flush()
        _, status = os.waitpid(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status)}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
