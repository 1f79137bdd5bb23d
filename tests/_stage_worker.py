"""A stage run in its own process, so a test can kill it for real: `python _stage_worker.py DIR N SLEEP
[CALLS [BATCH_SIZE SHARD_SIZE]]`. With CALLS, every call of `process` appends a line there as it starts,
so a test knows how many batches were in flight or done when it killed the worker.

Under `torchrun` every rank runs the stage (its share of the items); with VLALIGN_TEST_EXIT="RANK:K" the
process of that rank dies (`os._exit`, no clean-up) as its batch K+1 starts, K batches written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from vlalign.data.store import Stage, run_stage

BATCH_SIZE = 5
SHARD_SIZE = 20


def item_id(i: int) -> str:
    return f"item-{i:04d}"


def make_rows(batch: list[int], sleep: float = 0.0) -> list[dict]:
    time.sleep(sleep)
    return [{"id": item_id(i), "value": i, "text": f"record {i}"} for i in batch]


def _exit_after() -> int | None:
    """How many batches this process writes before it dies (VLALIGN_TEST_EXIT names its rank), else None."""
    rank, _, batches = os.environ.get("VLALIGN_TEST_EXIT", "").partition(":")
    return int(batches) if rank and int(rank) == int(os.environ.get("RANK", "0")) else None


def run(stage_dir: str, n: int, sleep: float = 0.0, calls: str | None = None, batch_size: int = BATCH_SIZE,
        shard_size: int = SHARD_SIZE):
    exit_after, started = _exit_after(), [0]

    def process(batch):
        started[0] += 1
        if exit_after is not None and started[0] > exit_after:
            os._exit(3)
        if calls:
            with open(calls, "a") as f:
                f.write(f"{len(batch)}\n")
        return make_rows(batch, sleep)

    return run_stage(Stage(stage_dir), range(n), process, id_of=item_id, batch_size=batch_size,
                     shard_size=shard_size, description="worker", quiet=True)


def run_and_kill(stage_dir, n: int, sleep: float, until: Callable[[], bool], *extra: str) -> None:
    """This script on `stage_dir` in a process of its own, SIGKILLed once `until()` holds (while it runs)."""
    proc = subprocess.Popen([sys.executable, __file__, str(stage_dir), str(n), str(sleep), *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not until():
            assert proc.poll() is None, f"worker exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the worker did not get far enough in time"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the worker must still be running when it is killed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[5:7]]
    run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None, *sizes)
