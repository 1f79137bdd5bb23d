"""Under torchrun: main-process work that itself asks for main-process work (a stage's annotate inside a
feedback stage's bookkeeping), then a collective every process takes part in."""

import sys

from vlalign import ranks

inner = ranks.on_main(lambda: ranks.on_main(lambda: "inner") + "+outer")
together = ranks.gather([ranks.rank()])
print(f"rank {ranks.rank()}: {inner} {together}", flush=True)
sys.exit(0 if inner == "inner+outer" and together == list(range(ranks.world_size())) else 1)
