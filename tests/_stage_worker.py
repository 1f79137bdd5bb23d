"""A stage run in its own process, so a test can kill it for real: `python _stage_worker.py DIR N SLEEP
[CALLS [BATCH_SIZE SHARD_SIZE]]`. With CALLS, every call of `process` appends a line there as it starts,
so a test knows how many batches were in flight or done when it killed the worker."""

from __future__ import annotations

import sys
import time

from vlalign.data.store import Stage, run_stage

BATCH_SIZE = 5
SHARD_SIZE = 20


def item_id(i: int) -> str:
    return f"item-{i:04d}"


def make_rows(batch: list[int], sleep: float = 0.0) -> list[dict]:
    time.sleep(sleep)
    return [{"id": item_id(i), "value": i, "text": f"record {i}"} for i in batch]


def run(stage_dir: str, n: int, sleep: float = 0.0, calls: str | None = None, batch_size: int = BATCH_SIZE,
        shard_size: int = SHARD_SIZE):
    def process(batch):
        if calls:
            with open(calls, "a") as f:
                f.write(f"{len(batch)}\n")
        return make_rows(batch, sleep)

    return run_stage(Stage(stage_dir), range(n), process, id_of=item_id, batch_size=batch_size,
                     shard_size=shard_size, description="worker", quiet=True)


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[5:7]]
    run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None, *sizes)
