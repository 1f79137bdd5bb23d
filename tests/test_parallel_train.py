"""DPO under `torchrun --nproc_per_node 2` on the CPU (gloo): the same trained weights as one process with the
same global batch (each process trains on half of every batch, DDP averages the gradients), the reference
log-probs scored half by each process and cached once, and one saved model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vlalign.data.records import PairRecord
from vlalign.data.store import RunStore
from vlalign.world.render import render
from vlalign.world.scene import PARTNERS, sample_scene

N_PAIRS = 16
# float sums taken in another order (two half batches, then an all-reduce) move the weights by rounding only
# (measured: 3e-8, against a largest change of 2.5e-3 from the start)
TOLERANCE = 1e-6
SETTINGS = ["batch_size=8", "epochs=2", "optim.lr=1e-3", "optim.warmup_ratio=0", "optim.log_every=1"]


def _pairs(root: Path) -> Path:
    """A run with a pairs stage of N_PAIRS pairs in two shards."""
    store = RunStore(root)
    stage = store.stage("pairs")
    rows = []
    for i in range(N_PAIRS):
        scene = sample_scene(i, "prompts")
        obj = scene.objects[0]
        rows.append(PairRecord(id=f"pair-{i:02d}", prompt_id=f"prompt-{i}", image=store.images.put(render(scene, 48)),
                               instruction="describe the image.", chosen=f"there is a {obj.color} {obj.shape}.",
                               rejected=f"there is a {obj.color} {PARTNERS[obj.shape]} and a star.").to_row())
    stage.write_shard(rows[:N_PAIRS // 2])
    stage.write_shard(rows[N_PAIRS // 2:])
    return root


def _dpo(launcher: list[str], pairs: Path, model: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "VLALIGN_DEBUG": "1"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, *launcher, "-m", "vlalign", "dpo", str(pairs), "--policy", str(model),
                           "--out", str(out), *SETTINGS], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return time.monotonic() - start


def _weights(out: Path) -> dict:
    return load_file(str(out / "policy" / "model.safetensors"))


@pytest.mark.slow
def test_two_processes_train_the_weights_of_one(tiny_world_model_dir, tmp_path):
    pairs = _pairs(tmp_path / "run")
    one = _dpo([], pairs, tiny_world_model_dir, tmp_path / "one")
    two = _dpo(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"], pairs,
               tiny_world_model_dir, tmp_path / "two")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    start = load_file(str(tiny_world_model_dir / "model.safetensors"))
    assert a.keys() == b.keys()
    moved = max(float((a[k].float() - start[k].float()).abs().max()) for k in a)
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    print(f"1 process {one:.1f} s, 2 processes {two:.1f} s; weights moved {moved:.2e}, differ by {diff:.2e}")
    assert moved > 1000 * TOLERANCE and diff <= TOLERANCE
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["policy", "training"]
    cache = json.loads((tmp_path / "two" / "training" / "reference_logps.json").read_text())
    assert sorted(cache["logps"]) == [f"pair-{i:02d}" for i in range(N_PAIRS)]
    history = json.loads((tmp_path / "two" / "training" / "train_history.json").read_text())["history"]
    assert len(history) == 4


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("ddp_cpu", "MULTI_GPU"), ("fsdp", "FSDP"),
                                            ("fsdp_cpu", "FSDP"), ("deepspeed_zero2", "DEEPSPEED"),
                                            ("deepspeed_zero3", "DEEPSPEED")])
def test_the_shipped_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    from vlalign.recipes import get

    recipe = get(name)
    assert recipe.method == "accelerate launch"
    config = load_config_from_file(str(recipe.path))
    assert config.distributed_type.name == kind and config.num_processes == 2
