"""W&B: one group per pipeline run, one job per stage; a no-op when `wandb.mode=disabled`.

Every metric logged here is also written into the stage's own artifact (users and tests read it
there): an offline W&B run stores only a binary file. Only the pipeline's settings are sent as the
run config, never environment variables, so API keys stay out of logs and artifacts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import Config, semantic_settings

_run = None


def group_id(cfg: Config) -> str:
    sections = {f: semantic_settings(getattr(cfg, f)) for f in
                ("model", "sample_space", "judge", "spmcmc", "preferences", "finetune", "evaluate")}
    key = json.dumps({"out": str(Path(cfg.output_dir).resolve()), "cfg": sections}, sort_keys=True, default=str)
    return f"{cfg.recipe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def start(cfg: Config, stage: str, fingerprint: str) -> None:
    global _run
    finish()
    if cfg.wandb.mode == "disabled":
        return
    import dataclasses

    import wandb

    _run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode,
                      dir=str(Path(cfg.output_dir).resolve()), group=group_id(cfg), job_type=stage,
                      name=f"{stage}-{fingerprint[:8]}", id=f"{stage}-{fingerprint}", resume="allow",
                      config=dataclasses.asdict(cfg), settings=wandb.Settings(silent=True, console="off"))


def active() -> bool:
    return _run is not None


def summary(metrics: dict) -> None:
    """Final numbers of a stage (shown side by side across runs in the W&B table)."""
    if _run is not None:
        for k, v in metrics.items():
            _run.summary[k] = v


def log(metrics: dict, step: int | None = None) -> None:
    if _run is not None:
        _run.log(metrics, step=step)


def image(key: str, path: Path) -> None:
    if _run is not None:
        import wandb

        _run.log({key: wandb.Image(str(path))})


def table(key: str, frame) -> None:
    if _run is not None:
        import wandb

        _run.log({key: wandb.Table(dataframe=frame)})


def finish() -> None:
    global _run
    if _run is not None:
        _run.finish()
        _run = None
