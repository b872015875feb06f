"""The files a run reads, by content: settings marked `reads="file"|"model"` in pipeline/config.py
name files (an extra pool, a ratings file, a prompt file) or model weights, and a stage's
fingerprint hashes what they hold, not only their names, so an edited file re-runs the stages
that read it and everything downstream.

Hashes are cached by path, size, modification and status-change times and inode
(`<cache>/file_hashes.json`), so a large model folder is read once, not at every run; an edit that sets
the modification time back still changes the status-change time, which no writer can set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from pipeline.config import Config
from pipeline.ratings import bundled_path
from pipeline.tables import TableError

CHUNK = 8 << 20


def _cache_file(cfg: Config) -> Path:
    from pipeline.models import cache_root

    return cache_root(cfg.model) / "file_hashes.json"


def file_sha256(path: Path, cache: dict) -> str:
    st = path.stat()
    key = str(path.resolve())
    stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]  # an edit can set mtime back, never ctime
    hit = cache.get(key)
    if hit and hit["stamp"] == stamp:
        return hit["sha256"]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            h.update(block)
    cache[key] = {"stamp": stamp, "sha256": h.hexdigest()}
    return cache[key]["sha256"]


def content_sha256(path: Path, cache: dict) -> str:
    """A file's hash, or a folder's: every file below it (hidden ones aside), by relative path."""
    if path.is_file():
        return file_sha256(path, cache)
    files = sorted(p for p in path.rglob("*") if p.is_file() and not any(part.startswith(".")
                                                                           for part in p.relative_to(path).parts))
    listing = [(str(p.relative_to(path)), file_sha256(p, cache)) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def setting_path(key: str, value: str, reads: str, cfg: Config) -> Path:
    """Where a file setting points, checked to exist (one clear line otherwise)."""
    if reads == "model":  # the policy's weights, or another model's (judge.model)
        from pipeline.models import weights_source

        return weights_source(dataclasses.replace(cfg.model, name_or_path=value))
    if reads == "function":  # the file that defines a reward function
        from pipeline.reward_judge import function_file

        return function_file(value)
    if bundled_path(value):
        return bundled_path(value)
    path = Path(value).expanduser()
    if path.is_dir():
        raise TableError(f"{key}: {str(path)!r} is a directory; give a file (.csv, .tsv, .jsonl or .parquet)")
    if not path.is_file():
        raise TableError(f"{key} file {str(path)!r} does not exist")
    return path


def input_files(cfg: Config, sections: tuple[str, ...]) -> dict[str, dict]:
    """{dotted key: {"path", "sha256"}} for every file setting of these config sections that is set."""
    found = []
    for section in sections:
        part = getattr(cfg, section)
        for f in dataclasses.fields(part):
            value, reads = getattr(part, f.name), f.metadata.get("reads")
            if reads and isinstance(value, str) and value:  # an inline list names no file
                found.append((f"{section}.{f.name}", value, reads))
    if not found:
        return {}
    cache_path = _cache_file(cfg)
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    out = {}
    for key, value, reads in found:
        path = setting_path(key, value, reads, cfg)
        out[key] = {"path": str(path.resolve()), "sha256": content_sha256(path, cache)}
    _save_cache(cache_path, cache)
    return out


def _save_cache(path: Path, cache: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(cache))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs re-hashing next time
        pass
