"""Which process of a launched job this is (`torchrun`, `accelerate launch`), and the few collective steps the
stages and the training loop share.

A process started without a launcher is rank 0 of 1 and imports nothing here. Under a launcher (WORLD_SIZE > 1
in the environment) accelerate's `PartialState` sets up the process group once (gloo on CPUs, NCCL on GPUs), and
every stage, the evaluation and the training loop use that same group.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


def world_size() -> int:
    """How many processes the launcher started (1 without one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    return world_size() > 1


@cache
def _state():
    import torch
    from accelerate import PartialState

    # accelerate only starts a CPU process group when told the job runs on CPUs (gloo)
    return PartialState(cpu=not torch.accelerator.is_available())


def rank() -> int:
    """This process's index among all processes of the job, across nodes (0 without a launcher)."""
    return _state().process_index if launched() else 0


def is_main() -> bool:
    """The one process that writes what all share (manifests, saved models, the summary)."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process has got here (nothing to wait for in a single process)."""
    if launched():
        _state().wait_for_everyone()


def share(items: Sequence[T]) -> list[T]:
    """This process's share of `items`: every world_size-th one from its rank, so the shares are disjoint, cover
    `items`, and differ in length by at most one."""
    return list(items[rank()::world_size()])


def gather(values: list[Any]) -> list[Any]:
    """Every process's `values`, concatenated in rank order, on every process."""
    if not launched():
        return list(values)
    import torch.distributed as dist

    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, values)
    return [v for part in parts for v in part]


def broadcast(value: T) -> T:
    """The main process's `value`, on every process."""
    if not launched():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
