"""How long the commands that need no model take, from a fresh process (goal: under 1 s each on 2 cores).

    python bench/startup.py [--repeat 5]

Each command runs `--repeat` times; the median wall time is reported, and whether torch was imported
(it must not be: these commands load no model).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = (["world", "base-path"], ["config", "show", "rlaif-v"], ["config", "show", "--markdown"])
PROBE = ("import sys, runpy; sys.argv = ['vlalign', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('vlalign.cli', run_name='__main__')\nexcept SystemExit:\n    pass\n"
         "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)")


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
    print(f"slowest median {worst:.2f} s against the 1 s goal: {worst / 1.0:.2f}x of the budget")


if __name__ == "__main__":
    main()
