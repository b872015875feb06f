"""Which process am I, and the two collectives the pipeline needs (through accelerate).

Under `accelerate launch` or `torchrun` every process runs the whole pipeline; stages that are not
distributed run on the main process while the others wait for the completion marker.
"""

from __future__ import annotations

import os
from functools import cache


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    return rank() == 0


@cache
def state():
    """accelerate's process state; initialises torch.distributed (gloo on CPU) when launched with K > 1."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def gather(obj) -> list:
    """Every process's `obj`, in rank order (a plain list with one process)."""
    if world_size() == 1:
        return [obj]
    import torch.distributed as dist

    state()
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if world_size() > 1:
        state().wait_for_everyone()
