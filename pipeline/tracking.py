"""W&B: one group per pipeline run, one job per stage; a no-op when `wandb.mode=disabled`.

Every metric logged here is also written into the stage's own artifact (users and tests read it
there): an offline W&B run stores only a binary file. Only the pipeline's settings are sent as the
run config, never environment variables, so API keys stay out of logs and artifacts.

A W&B problem never stops the pipeline: when `wandb.mode=online` cannot start (no API key, no
network within INIT_TIMEOUT_S), one warning line says so and the rest of the run logs offline
(upload later with `wandb sync`); if even an offline run fails, W&B is turned off with a warning.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import Config, semantic_settings

_run = None
_downgraded: str | None = None  # the mode this process fell back to after a W&B failure
INIT_TIMEOUT_S = 15  # wandb's own default waits 90 s before giving up on an unreachable server


def init_timeout() -> float:
    """W&B's own WANDB_INIT_TIMEOUT where the user set it (a slow link may need longer), else INIT_TIMEOUT_S."""
    import os

    try:
        return float(os.environ.get("WANDB_INIT_TIMEOUT", INIT_TIMEOUT_S))
    except ValueError:
        return INIT_TIMEOUT_S


def _warn(message: str) -> None:
    print(f"[wandb] warning: {message}", flush=True)


def group_id(cfg: Config) -> str:
    sections = {f: semantic_settings(getattr(cfg, f)) for f in
                ("model", "sample_space", "judge", "spmcmc", "preferences", "finetune", "evaluate")}
    key = json.dumps({"out": str(Path(cfg.output_dir).resolve()), "cfg": sections}, sort_keys=True, default=str)
    return f"{cfg.recipe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def start(cfg: Config, stage: str, fingerprint: str) -> None:
    global _run, _downgraded
    finish()
    mode = _downgraded or cfg.wandb.mode
    if mode == "disabled":
        return
    import dataclasses
    import os

    root = Path(cfg.output_dir).resolve() / "wandb"
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):  # else ~/.cache, ~/.local/share
        os.environ.setdefault(var, str(root / sub))
    import wandb

    kwargs = dict(project=cfg.wandb.project, entity=cfg.wandb.entity, dir=str(Path(cfg.output_dir).resolve()),
                  group=group_id(cfg), job_type=stage, name=f"{stage}-{fingerprint[:8]}", id=f"{stage}-{fingerprint}",
                  resume="allow", config=dataclasses.asdict(cfg),
                  settings=wandb.Settings(silent=True, console="off", init_timeout=init_timeout()))
    try:
        _run = wandb.init(mode=mode, **kwargs)
        return
    except Exception as e:  # wandb raises UsageError, CommError and others: none may stop the pipeline
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    _downgraded = "offline" if mode == "online" else "disabled"
    wandb.teardown()  # the failed run's id stays registered otherwise ("run ID is in use")
    if _downgraded == "offline":
        _warn(f"wandb.mode=online could not start ({reason}); logging offline for the rest of this run: upload later "
              f"with `wandb sync {kwargs['dir']}/wandb/offline-run-*`")
        # when the online attempt timed out, wandb's service can still hold its run id after teardown ("run ID is in
        # use"): the offline run then takes the id with a suffix (one stage, one offline run either way)
        for run_id in (kwargs["id"], f"{kwargs['id']}-offline"):
            try:
                _run = wandb.init(mode="offline", **{**kwargs, "id": run_id})
                return
            except Exception as e:
                reason = f"{type(e).__name__}: {e}"
        _downgraded = "disabled"
    _warn(f"W&B could not start offline either ({reason}); W&B is off for this run (every figure is in the artifacts)")


def active() -> bool:
    return _run is not None


def _guarded(fn):
    """A W&B call that cannot stop the pipeline: a failure is one warning, then W&B is off."""
    def call(*args, **kwargs):
        global _run, _downgraded
        if _run is None:
            return
        try:
            fn(*args, **kwargs)
        except Exception as e:
            _warn(f"W&B failed ({type(e).__name__}: {e}); W&B is off for the rest of this run")
            _run, _downgraded = None, "disabled"
    return call


@_guarded
def summary(metrics: dict) -> None:
    """Final numbers of a stage (shown side by side across runs in the W&B table)."""
    for k, v in metrics.items():
        _run.summary[k] = v


@_guarded
def log(metrics: dict, step: int | None = None) -> None:
    _run.log(metrics, step=step)


@_guarded
def image(key: str, path: Path) -> None:
    import wandb

    _run.log({key: wandb.Image(str(path))})


@_guarded
def table(key: str, frame) -> None:
    import wandb

    _run.log({key: wandb.Table(dataframe=frame)})


def finish() -> None:
    global _run
    run, _run = _run, None
    if run is None:
        return
    try:
        run.finish()
    except Exception as e:
        _warn(f"W&B could not finish its run ({type(e).__name__}: {e})")
