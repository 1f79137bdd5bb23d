"""Which process of a launched job this is (`torchrun`, `accelerate launch`), and the few collective steps the
stages and the training loop share.

A process started without a launcher is rank 0 of 1 and imports nothing here. Under a launcher (WORLD_SIZE > 1
in the environment) accelerate's `PartialState` sets up the process group once (gloo on CPUs, NCCL on GPUs), and
every stage, the evaluation and the training loop use that same group.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MainFailed(RuntimeError):
    """What the other processes raise when a step only the main process runs failed there (the main process
    raises the error itself, with its type and traceback)."""


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
    state = PartialState(cpu=not torch.accelerator.is_available())
    atexit.register(_leave)
    return state


def _leave() -> None:
    """Close the process group as the process ends: one left open aborts the process at exit (gloo's threads
    are still running), which the launcher reports as a failure of the whole job."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


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


def block(n: int, parts: int | None = None, index: int | None = None) -> range:
    """The positions of share `index` of n items cut into `parts` contiguous blocks, in order, differing in
    length by at most one (this process's share of the job's by default). Contiguous, so neighbours stay
    together (a prompt's n samples share one prefill, a batch looks like the single process's)."""
    parts = world_size() if parts is None else parts
    index = rank() if index is None else index
    return range(index * n // parts, (index + 1) * n // parts)


def share(items: Sequence[T]) -> list[T]:
    """This process's share of `items` (`block`)."""
    mine = block(len(items))
    return list(items[mine.start:mine.stop])


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


_inside_main = 0  # how deep the main process is in `on_main` work, which the other processes never enter


def on_main(work: Callable[[], T]) -> T:
    """`work()` run by the main process alone, its result on every process; when it fails there, every other
    process raises `MainFailed` with its message instead of waiting for a result that never comes. Inside such
    work (an `on_main` nested in another) it simply runs: the other processes are not there to receive it."""
    global _inside_main
    if not launched() or _inside_main:
        return work()
    try:
        if is_main():
            _inside_main += 1
            try:
                result = ("ok", work())
            finally:
                _inside_main -= 1
        else:
            result = None
    except Exception as e:
        broadcast(("failed", f"{type(e).__name__}: {e}"))
        raise
    outcome, value = broadcast(result)
    if outcome == "failed":
        raise MainFailed(f"the main process (rank 0) stopped: {value}")
    return value


def spread(work: Callable[[list[T]], list[R]], items: Sequence[T]) -> list[R]:
    """`work` (one result per item) over `items` split across the processes, every result on every process in
    the order of `items`."""
    if not launched():
        return work(list(items))
    mine = share(range(len(items)))
    done = work([items[i] for i in mine])
    return [r for _, r in sorted(gather(list(zip(mine, done, strict=True))), key=lambda pair: pair[0])]
