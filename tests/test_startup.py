"""What `vlalign dpo` imports before its first step: the libraries it trains with, not the ones it only needs
for other commands (datasets and pandas, peft without LoRA, TRL, an API client)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from vlalign.data.records import PairRecord
from vlalign.data.store import RunStore

UNUSED = ("datasets", "pandas", "peft", "trl", "openai")
PROBE = f"""
import json, sys, torch
def first_step(optimizer, *a, **k):
    print("MODULES " + json.dumps([m for m in {UNUSED!r} if m in sys.modules]), flush=True)
    sys.exit(0)
torch.optim.AdamW.step = first_step
sys.argv = ["vlalign", "dpo", *sys.argv[1:]]
from vlalign.cli import main
main()
"""


def test_the_modules_dpo_loads_import_none_of_them():
    code = ("import sys, vlalign.cli, vlalign.stages, vlalign.models.load, vlalign.train.preference; "
            f"print([m for m in {UNUSED!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_dpo_reaches_its_first_step_without_them(tmp_path, tiny_world_model_dir):
    store = RunStore(tmp_path / "run")
    image = store.images.put(Image.new("RGB", (32, 32), (200, 10, 10)))
    store.stage("pairs").write_shard([PairRecord(id=f"q{i}", prompt_id=f"p{i}", image=image, instruction="what?",
                                                 chosen="a red square.", rejected="a dog.", method="x").to_row()
                                      for i in range(2)])
    out = subprocess.run([sys.executable, "-c", PROBE, str(store.root), "--policy", str(tiny_world_model_dir),
                          "--out", str(tmp_path / "out"), "batch_size=2"], capture_output=True, text=True, timeout=600)
    lines = [line for line in out.stdout.splitlines() if line.startswith("MODULES ")]
    assert lines, out.stdout + out.stderr
    assert json.loads(lines[0].removeprefix("MODULES ")) == []
