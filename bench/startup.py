"""How long the commands that need no model take, from a fresh process (goal: under 1 s each on 2 cores), and
what `vlalign dpo` imports before its first step.

    python bench/startup.py [--repeat 5]

Each command runs `--repeat` times; the median wall time is reported, and whether torch was imported
(it must not be: these commands load no model). Then `vlalign dpo` trains the world's base policy on 8 world
pairs under `python -X importtime` until its first optimizer step: the time spent importing (the sum of the
modules' own times), when the first step ended, and which libraries it loaded that it does not train with.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMMANDS = (["world", "base-path"], ["config", "show", "rlaif-v"], ["config", "show", "--markdown"])
PROBE = ("import sys, runpy; sys.argv = ['vlalign', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('vlalign.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")
UNUSED = ("datasets", "pandas", "peft", "trl", "openai", "matplotlib", "sklearn")
FIRST_STEP = f"""
import json, sys, time
start = time.perf_counter()
import torch
def first_step(optimizer, *a, **k):
    print("FIRST " + json.dumps([time.perf_counter() - start, [m for m in {UNUSED!r} if m in sys.modules]]))
    sys.exit(0)
torch.optim.AdamW.step = first_step
sys.argv = ["vlalign", "dpo", *sys.argv[1:]]
from vlalign.cli import main
main()
"""


def _pairs(root: Path, n: int = 8) -> Path:
    """A run with `n` world pairs (a description against a caption of another scene)."""
    import numpy as np

    from vlalign.data.records import PairRecord, stable_id
    from vlalign.data.store import RunStore
    from vlalign.world.render import render
    from vlalign.world.scene import sample_scene
    from vlalign.world.text import caption, describe

    store = RunStore(root)
    rng = np.random.default_rng(0)
    rows = [PairRecord(id=stable_id("startup", i), prompt_id=f"p{i}", image=store.images.put(render(scene)),
                       instruction="describe the image.", chosen=describe(scene, rng),
                       rejected=caption(sample_scene(1000 + i, "prompts"), rng), method="bench").to_row()
            for i, scene in enumerate(sample_scene(i, "prompts") for i in range(n))]
    store.stage("pairs").write_shard(rows)
    return root


def dpo_first_step(repeat: int) -> None:
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        run = _pairs(Path(tmp) / "run")
        for k in range(repeat):
            done = subprocess.run([sys.executable, "-X", "importtime", "-c", FIRST_STEP, str(run), "--policy",
                                   "world:base", "--out", str(Path(tmp) / f"out{k}"), "batch_size=8"],
                                  capture_output=True, text=True)
            first = [line for line in done.stdout.splitlines() if line.startswith("FIRST ")]
            if not first:
                raise SystemExit(f"vlalign dpo did not reach its first step:\n{done.stderr[-3000:]}")
            seconds, unused = json.loads(first[0].removeprefix("FIRST "))
            imports = sum(int(line.split("|")[0].split(":")[1]) for line in done.stderr.splitlines()
                          if line.startswith("import time:") and "self [us]" not in line) / 1e6
            runs.append((imports, seconds, unused))
    imports, first, unused = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2]
    print(f"vlalign dpo (world:base, 8 pairs): imports {imports:.2f} s (python -X importtime, median of {repeat}), "
          f"first step done at {first:.2f} s; loaded without use: {', '.join(unused) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    worst = 0.0
    for command in COMMANDS:
        times, torch_seen = [], False
        for _ in range(args.repeat):
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-c", PROBE, *command], capture_output=True, text=True, check=True)
            times.append(time.perf_counter() - start)
            torch_seen |= "torch imported" in done.stderr
        median = statistics.median(times)
        worst = max(worst, median)
        print(f"vlalign {' '.join(command):28s} median {median:5.2f} s  (min {min(times):.2f})  "
              f"{'TORCH IMPORTED' if torch_seen else 'no torch'}")
    dpo_first_step(max(1, args.repeat // 2))
    print(f"slowest median {worst:.2f} s against the 1 s goal: {worst / 1.0:.2f}x of the budget")


if __name__ == "__main__":
    main()
