"""Which process am I, and the two collectives the pipeline needs (through accelerate); and `pool_map`, which
spreads pure work over the cores of one process's share of the machine.

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


def cpu_share() -> int:
    """The cores this process's share of the machine has: those it may run on (taskset, a test worker's share),
    divided among the processes launched on this node."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cpus // local_world_size())


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


def split_map(fn, units: list, distributed: bool = True) -> list:
    """[fn(u) for u in units] with unit i computed by process i % K and every result gathered to every process
    (`distributed=False`, or one process: all here). A unit is a fixed piece of work (a batch, a prompt), the same
    however many processes share them, so the results' bits do not depend on K."""
    k, r = (world_size(), rank()) if distributed else (1, 0)
    mine = {i: fn(units[i]) for i in range(r, len(units), k)}
    if k > 1:
        mine = {i: v for part in gather(mine) for i, v in part.items()}
    return [mine[i] for i in range(len(units))]


def pool_map(fn, items: list, min_items: int) -> list:
    """[fn(x) for x in items], spread over this process's cores (`cpu_share`) in spawned worker processes when there
    are at least `min_items` (a worker costs ~0.2 s to start). For pure work (numpy, scipy: no model, no torch):
    fn and every item are pickled, and each result is what fn gives in this process. In order."""
    workers = min(cpu_share(), len(items))
    if workers < 2 or len(items) < min_items:
        return [fn(x) for x in items]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a fork of a process holding torch's thread pools can hang in the child
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, items, chunksize=max(1, len(items) // (8 * workers))))
