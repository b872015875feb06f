"""A stage's working folder: atomic JSON files, the work log, the resume scratch folder, and the failpoints the
crash-and-resume tests kill at. The bottom of the stack: no pipeline imports."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

STATE_DIR = "_state"  # resume scratch inside a stage folder, dropped once the stage is complete


def write_json(path: Path, obj, sort_keys: bool = True, indent: int | None = 2) -> None:
    """Atomic: a reader sees the old file or the new one, never half of one. `indent=None`: one line, for state
    that only the code reads back (a chain's rows indented take ~5x as long to write)."""
    write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str))


def write_text(path: Path, text: str) -> None:
    """Atomic, as write_json."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def log_work(workdir: Path, event: str, count: int) -> None:
    """Append what this process computed (kept in the artifact: shows nothing finished was redone)."""
    with open(workdir / "work_log.jsonl", "a") as fh:
        fh.write(json.dumps({"event": event, "count": count, "pid": os.getpid(), "time": time.time()}) + "\n")


_hits: dict[str, int] = {}


def failpoint(name: str) -> None:
    """SIGKILL this process at the N-th time it passes `name` when SPMCMC_KILL_AT=name:N is set.

    Fault injection for the crash-and-resume tests: a kill at an exact point inside a stage."""
    target = os.environ.get("SPMCMC_KILL_AT", "")
    if not target.startswith(name + ":"):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(target.rsplit(":", 1)[1]):
        os.kill(os.getpid(), signal.SIGKILL)
