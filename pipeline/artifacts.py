"""Content-addressed, resumable stage artifacts.

Layout under `output_dir`:
    manifest.json                       every stage of the last run: folder, fingerprint, complete
    <stage>/<fingerprint>.partial/      a stage at work: its resume state lives here
    <stage>/<fingerprint>/              finished: dataset/ (datasets.save_to_disk), meta.json, extras,
                                        and _COMPLETE, written last
A stage's fingerprint hashes its NAME, VERSION, the settings sections it reads (`SETTINGS`, only
fields that change results) and its inputs' fingerprints, so changing a setting re-runs that stage
and everything downstream, and nothing upstream. A folder without _COMPLETE is never treated as done.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pipeline import parallel, tracking
from pipeline.config import REPO_ROOT, STAGES, Config, UserError, semantic_settings, to_dict
from pipeline.inputs import input_files
from pipeline.workdir import STATE_DIR, failpoint, write_json

MARKER = "_COMPLETE"
LIBRARIES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "numpy", "scipy")


class StageError(UserError):
    """A stage that cannot run as asked; printed as one line."""


class Stage(Protocol):
    """What every module in pipeline/stages/ defines (checked once, when the run first meets it).

    NAME              the artifact folder's name
    VERSION           bumped when the stage's outputs change for the same settings and inputs (new or
                      renamed columns, different numbers, a different meaning), so that finished
                      artifacts of the old code are recomputed rather than mixed with new ones; not
                      bumped for speed-ups, messages or refactors that leave outputs byte-identical
    SETTINGS          every config section the stage reads (tests/test_contract.py checks it); their
                      fields marked semantic enter the fingerprint
    OPTIONAL_INPUTS   inputs used only when complete on disk (others must be complete or requested)
    DISTRIBUTED       run on every process (True) or on the main one while the others wait (False)
    run(cfg, inputs, workdir) -> Dataset | DatasetDict | None (None on processes other than the main one)
    """
    NAME: str
    VERSION: int
    SETTINGS: tuple[str, ...]
    OPTIONAL_INPUTS: tuple[str, ...]
    DISTRIBUTED: bool

    def run(self, cfg: Config, inputs: dict, workdir: Path): ...


def check_stage(module) -> None:
    """The module follows the Stage contract (a programming error otherwise, not a user one)."""
    types = {"NAME": str, "VERSION": int, "SETTINGS": tuple, "OPTIONAL_INPUTS": tuple, "DISTRIBUTED": bool}
    for attr, kind in types.items():
        if not isinstance(getattr(module, attr, None), kind):
            raise TypeError(f"stage module {module.__name__} must define {attr} ({kind.__name__}): see artifacts.Stage")
    if not callable(getattr(module, "run", None)):
        raise TypeError(f"stage module {module.__name__} must define run(cfg, inputs, workdir)")
    unknown = set(module.SETTINGS) - {f.name for f in dataclasses.fields(Config)}
    if unknown:
        raise TypeError(f"stage module {module.__name__}: SETTINGS names unknown sections {sorted(unknown)}")


def publish(workdir: Path, stage: str, summary: dict, lines: list[str], plots=(), metrics: dict | None = None,
            tables: dict | None = None) -> None:
    """The one way a stage reports what it measured: summary.json in its artifact, the printed lines, and
    the same numbers (`stage/key`, nested keys joined by '/', or `metrics` when given), plots and tables
    ({W&B key: DataFrame}, each also a split of the stage's dataset) in W&B."""
    write_json(workdir / "summary.json", summary)
    for line in lines:
        print(f"[{stage}] {line}", flush=True)
    tracking.summary(metrics if metrics is not None else dict(flat_numbers(summary, stage)))
    for p in plots:
        tracking.image(f"{stage}/{Path(p).stem}", p)
    for key, frame in (tables or {}).items():
        tracking.table(key, frame)


def flat_numbers(tree: dict, prefix: str):
    """(`prefix/key/sub`, number) for every number of a nested summary (list items by index)."""
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from flat_numbers(v, f"{prefix}/{k}")
        elif isinstance(v, list):
            yield from ((f"{prefix}/{k}/{i}", x) for i, x in enumerate(v)
                        if isinstance(x, (int, float)) and not isinstance(x, bool))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}/{k}", v


def fingerprint(name: str, version: int, settings: dict, inputs: dict[str, str], files: dict[str, str] | None = None) -> str:
    """Stage, VERSION, semantic settings, upstream fingerprints and the content hashes of files read."""
    payload = json.dumps({"stage": name, "version": version, "settings": settings, "inputs": inputs,
                          "files": files or {}}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Artifact:
    name: str
    fingerprint: str
    path: Path
    round: int = 1

    @property
    def key(self) -> str:
        """Its name in manifest.json: the stage, and the round after the first (spmcmc@2)."""
        return self.name if self.round == 1 else f"{self.name}@{self.round}"

    @property
    def partial(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    @property
    def marked(self) -> bool:
        return (self.path / MARKER).is_file()

    @property
    def complete(self) -> bool:
        """Marked complete, and its dataset files are all there (a marker alone is not trusted)."""
        return self.marked and dataset_intact(self.path / "dataset")

    def load(self):
        """In memory: a later .map() (TRL tokenising, say) must not write cache files into a finished artifact."""
        from datasets import load_from_disk

        return load_from_disk(str(self.path / "dataset"), keep_in_memory=True)

    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text())

    def summary(self) -> dict:
        """What the stage measured (its summary.json, written by `publish`); {} when it wrote none."""
        path = self.path / "summary.json"
        return json.loads(path.read_text()) if path.is_file() else {}


def dataset_intact(folder: Path) -> bool:
    """Every file that datasets' save_to_disk listed is present (a Dataset, or each split of a DatasetDict)."""
    try:
        if (folder / "dataset_dict.json").is_file():
            splits = json.loads((folder / "dataset_dict.json").read_text())["splits"]
            return all(dataset_intact(folder / split) for split in splits)
        state = json.loads((folder / "state.json").read_text())
        return (folder / "dataset_info.json").is_file() and all((folder / f["filename"]).is_file()
                                                                  for f in state["_data_files"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _order(key: str) -> tuple[int, int]:
    name, _, round_ = key.partition("@")
    return int(round_ or 1), STAGES.index(name) if name in STAGES else len(STAGES)


def read_manifest(output_dir: str | Path) -> dict:
    """manifest.json with each stage's `path` made absolute (they are stored relative to output_dir)."""
    root = Path(output_dir)
    path = root / "manifest.json"
    if not path.is_file():
        raise UserError(f"{root} has no manifest.json: not a pipeline output_dir")
    damaged = (f"{path} is damaged ({{}}); run the pipeline command for this output_dir again to rewrite it "
               "(finished stages are not recomputed)")
    try:
        manifest = json.loads(path.read_text())
        stages = manifest["stages"]
        for key, entry in stages.items():
            if not (isinstance(entry.get("path"), str) and isinstance(entry.get("fingerprint"), str)
                    and isinstance(entry.get("complete"), bool)):
                raise UserError(damaged.format(f"entry {key!r} lacks a path, fingerprint or complete flag"))
            folder = (root / entry["path"]).resolve()
            if not folder.is_relative_to(root.resolve()):  # a manifest only ever points inside its output_dir
                raise UserError(damaged.format(f"entry {key!r} points outside the output_dir: {entry['path']!r}"))
            entry["path"] = str(root / entry["path"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(damaged.format(type(e).__name__)) from None
    return manifest


def _versions() -> dict:
    out = {}
    for lib in LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = None
    return out


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _with_fingerprint(result, fp: str):
    """datasets gives in-memory tables a random fingerprint (saved in state.json); pin it to the
    stage's own so that the same seed and settings give byte-identical artifacts."""
    from datasets import Dataset, DatasetDict

    if isinstance(result, DatasetDict):
        return DatasetDict({k: _with_fingerprint(v, f"{fp}-{k}") for k, v in result.items()})
    return Dataset(result.data, info=result.info, split=result.split, fingerprint=fp)


def _empty_as_one_shard(result):
    """datasets saves a 0-row split as 0 shards, which load_from_disk then cannot read: force one."""
    if hasattr(result, "keys"):
        return {k: 1 for k in result if result[k].num_rows == 0} or None
    return 1 if result.num_rows == 0 else None


def _rows(result) -> dict:
    if hasattr(result, "keys"):  # DatasetDict
        return {k: result[k].num_rows for k in result}
    return {"train": result.num_rows}


class Run:
    """One pipeline invocation over `cfg.output_dir`: the lock, the manifest, and `stage()`."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.root = Path(cfg.output_dir)
        self.manifest_path = self.root / "manifest.json"
        self.manifest = {"recipe": cfg.recipe, "stages": {}}
        self._lock = None

    def _previous_stages(self) -> dict:
        """What the manifest already lists: a run of some stages keeps the others' entries."""
        try:
            stages = json.loads(self.manifest_path.read_text())["stages"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        well_formed = lambda e: (isinstance(e, dict) and isinstance(e.get("fingerprint"), str)  # noqa: E731
                                 and isinstance(e.get("inputs", {}), dict))
        return {k: e for k, e in stages.items() if well_formed(e)} if isinstance(stages, dict) else {}

    def __enter__(self) -> "Run":
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise StageError(f"output_dir {str(self.root)!r} is not writable ({e.strerror}); "
                             "choose another output_dir=") from None
        if parallel.is_main():
            self._take_lock()
            self.manifest["stages"] = self._previous_stages()
        return self

    def __exit__(self, *exc) -> None:
        tracking.finish()
        if self._lock is not None:
            self._lock.close()  # the kernel drops the flock; a killed run leaves no stale lock

    def _take_lock(self) -> None:
        fh = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            raise StageError(f"another run is active on {self.root} (pid {fh.read().strip() or '?'}); "
                             "wait for it or use another output_dir=") from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock = fh

    def stage(self, module, round: int = 1, **inputs: Artifact) -> Artifact:
        """Resolve a stage's artifact in a round; run it if it is asked for and not complete."""
        check_stage(module)
        used = {k: a for k, a in inputs.items() if k not in module.OPTIONAL_INPUTS or a.complete}
        settings = {s: semantic_settings(getattr(self.cfg, s)) for s in module.SETTINGS}
        if round > 1:  # round 1 is the single-round pipeline, fingerprint and all
            settings["round"] = round
        files = input_files(self.cfg, module.SETTINGS)
        upstream = {k: a.fingerprint for k, a in used.items()}
        fp = fingerprint(module.NAME, module.VERSION, settings, upstream, {k: f["sha256"] for k, f in files.items()})
        art = Artifact(module.NAME, fp, self.root / module.NAME / fp, round)
        if module.NAME not in self.cfg.stages:
            if art.complete:
                self._record(art, upstream)
            return art
        missing = [a for a in used.values() if not a.complete]
        if missing:
            raise StageError(f"stage {art.key!r} needs {missing[0].key!r}, which is neither in stages= nor complete "
                             f"on disk for these settings under {self.root}; add {missing[0].name} to stages=")
        if art.complete:
            print(f"[{art.key}] up to date  {art.path}", flush=True)
        else:
            if art.marked and parallel.is_main():
                print(f"[{art.key}] {art.path} is marked complete but its dataset files are missing or "
                      "damaged: recomputing it", flush=True)
                (art.path / MARKER).unlink()
            parallel.barrier()
            self._execute(module, art, used, settings, files)
        self._record(art, upstream)
        return art

    def _execute(self, module, art: Artifact, inputs: dict, settings: dict, files: dict) -> None:
        distributed = module.DISTRIBUTED
        if parallel.is_main():
            if art.path.exists():  # killed between rename and marker: continue from it
                shutil.rmtree(art.partial, ignore_errors=True)
                art.path.rename(art.partial)
            art.partial.mkdir(parents=True, exist_ok=True)
            self._record(art, {k: a.fingerprint for k, a in inputs.items()})
            tracking.start(self.cfg, module.NAME, art.fingerprint)
        parallel.barrier()
        started = time.time()
        print(f"[{art.key}] running  -> {art.partial}", flush=True)
        result = module.run(self.cfg, inputs, art.partial) if (distributed or parallel.is_main()) else None
        if parallel.is_main():
            meta = {"stage": module.NAME, "version": module.VERSION, "fingerprint": art.fingerprint,
                    "settings": settings, "config": {s: to_dict(getattr(self.cfg, s)) for s in module.SETTINGS},
                    "inputs": {k: a.fingerprint for k, a in inputs.items()}, "input_files": files,
                    "versions": _versions(),
                    "git_commit": _git_commit(), "started_at": started, "finished_at": time.time(),
                    "wall_s": round(time.time() - started, 2), "world_size": parallel.world_size()}
            self._finalise(art, result, meta)
            tracking.finish()
            print(f"[{art.key}] done in {meta['wall_s']:.1f}s  {art.path}", flush=True)
        else:
            while not art.complete:  # other processes wait for the main one's marker
                time.sleep(0.5)

    def _finalise(self, art: Artifact, result, meta: dict) -> None:
        from datasets.utils.logging import disable_progress_bar

        disable_progress_bar()  # one bar per split save is noise next to the stage's own bars
        tmp, dst = art.partial / "dataset.tmp", art.partial / "dataset"
        shutil.rmtree(tmp, ignore_errors=True)
        result = _with_fingerprint(result, art.fingerprint)
        result.save_to_disk(str(tmp), num_shards=_empty_as_one_shard(result))
        failpoint("finalise")
        shutil.rmtree(dst, ignore_errors=True)
        tmp.rename(dst)
        meta["rows"] = _rows(result)
        write_json(art.partial / "meta.json", meta)
        art.partial.rename(art.path)
        failpoint("finalise")
        (art.path / MARKER).write_text(art.fingerprint)  # last: only now is the stage done
        shutil.rmtree(art.path / STATE_DIR, ignore_errors=True)

    def _record(self, art: Artifact, inputs: dict[str, str]) -> None:
        if not parallel.is_main():
            return
        folder = art.path if art.complete else art.partial
        entry = {"path": str(folder.relative_to(self.root)), "fingerprint": art.fingerprint, "complete": art.complete,
                 "inputs": inputs}
        if art.complete:
            entry["rows"] = art.meta()["rows"]
        stages = current({**self.manifest["stages"], art.key: entry}, self.cfg.rounds.count)
        self.manifest["stages"] = dict(sorted(stages.items(), key=lambda kv: _order(kv[0])))
        write_json(self.manifest_path, self.manifest, sort_keys=False)  # rounds, then stages in pipeline order


def current(stages: dict, rounds: int) -> dict:
    """The manifest's entries that belong to this run: none of a round beyond rounds.count, and none built from
    an artifact the manifest no longer lists (an earlier run's stage whose inputs were since recomputed under other
    settings), dropped until every listed input is listed itself."""
    kept = {k: e for k, e in stages.items() if _order(k)[0] <= rounds}
    while True:
        listed = {e["fingerprint"] for e in kept.values()}
        stale = [k for k, e in kept.items() if not set(e.get("inputs", {}).values()) <= listed]
        if not stale:
            return kept
        for k in stale:
            del kept[k]
