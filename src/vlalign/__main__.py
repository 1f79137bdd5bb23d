"""`python -m vlalign`, as launchers start it: `accelerate launch -m vlalign dpo ...`, `torchrun -m vlalign ...`."""

from vlalign.cli import main

main()
