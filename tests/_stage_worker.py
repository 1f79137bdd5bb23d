"""A stage run in its own process, so a test can kill it for real: `python _stage_worker.py DIR N`."""

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


def run(stage_dir: str, n: int, sleep: float = 0.0):
    return run_stage(Stage(stage_dir), range(n), lambda batch: make_rows(batch, sleep), id_of=item_id,
                     batch_size=BATCH_SIZE, shard_size=SHARD_SIZE, description="worker", quiet=True)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), float(sys.argv[3]))
