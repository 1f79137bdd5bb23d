"""What checking a saved model costs (vlalign.checksums), measured on a safetensors file of model size.

    python bench/checksum_cost.py [--gib 2] [--repeat 3]

Times, on one file of `--gib` GiB (random bf16 tensors, written by safetensors): reading it once (what a
load reads anyway; warm page cache, since dropping it would need root and disturb others), hashing it with
xxh3-128 (what `load` adds, every file) and with sha256 (for comparison), and the cheap check a resume runs
on a model it only names (sizes and modification times: no bytes read). The last line scales the hash to
the 14 GB of a 7B model in bf16.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from vlalign.checksums import difference, digest, file_sum

CHUNK = 16 * 2 ** 20


def _read(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(CHUNK):
            pass


def _sha256(path: Path) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)


def _median(work, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        n = int(args.gib * 2 ** 30 / 2 / 64)  # bf16 elements per tensor, 64 tensors
        save_file({f"layer.{i}.weight": torch.randn(n).to(torch.bfloat16) for i in range(64)}, str(path))
        size = path.stat().st_size / 1e9
        recorded = file_sum(path)
        rows = [("read once (a load reads this anyway)", _median(lambda: _read(path), args.repeat)),
                ("xxh3-128 of every byte (load)", _median(lambda: digest(path), args.repeat)),
                ("sha256 of every byte (for comparison)", _median(lambda: _sha256(path), args.repeat)),
                ("cheap check (resume: size and mtime)", _median(lambda: difference(path, recorded), args.repeat))]
        for name, seconds in rows:
            print(f"{name:40s} {seconds:8.3f} s  {size / seconds if seconds else float('inf'):8.2f} GB/s")
        xxh3 = rows[1][1] / size
        print(f"a 7B model in bf16 (14 GB): xxh3 {14 * xxh3:.1f} s on one core; "
              f"sha256 would take {14 * rows[2][1] / size:.1f} s")


if __name__ == "__main__":
    main()
