"""Peak memory of importing and training on RLAIF-V-Dataset-format pairs, from 1k to 83k pairs (the released set's
size): records are checked and stored batch by batch, read back shard by shard, and images decoded per batch,
so the peak RSS must stay within BOUND of the smallest run's. Each size runs in a process of its own: import the
synthetic parquet with `vlalign import`'s importer, then one epoch of DPO on a tiny world LLaVA.

    python bench/scale_memory.py                      # 1k, 20k, 83k pairs
    python bench/scale_memory.py --sizes 1000 5000    # a quicker look
    python bench/scale_memory.py --speedup            # also: the same DPO job in 1 and in 2 processes (torchrun)

The last line is the ratio of the largest run's peak RSS to the smallest's, against the bound.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BOUND = 1.2
SIZES = (1000, 20000, 83000)
BATCH = 64
MAX_LENGTH = 64  # tokens per row: short rows keep an epoch of 83k pairs to minutes on a CPU
VOCABULARY = ("the a an image shows there is are on of in with left right next to above below small large red blue "
         "green yellow white black person dog cat car tree table chair cup book sign window street sky wall "
         "wearing holding sitting standing near behind front background foreground two three several")
WORDS = VOCABULARY.split()
GROUP = 1000  # records per parquet row group, as the released files are written in pieces


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words)).capitalize() + "."


def _png(rng: random.Random, size: int = 48) -> bytes:
    """A distinct small picture: an 8x8 random mosaic scaled up (a few hundred bytes of PNG)."""
    from PIL import Image

    tile = Image.frombytes("RGB", (8, 8), bytes(rng.randrange(256) for _ in range(8 * 8 * 3)))
    buf = io.BytesIO()
    tile.resize((size, size), Image.NEAREST).save(buf, format="PNG")
    return buf.getvalue()


def make_parquet(path: Path, n: int, seed: int = 0) -> Path:
    """n records in RLAIF-V-Dataset's columns, with question and answer lengths like the released ones
    (a sentence of a question; answers of 40 to 120 words)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    writer = None
    for start in range(0, n, GROUP):
        rows = [{"ds_name": "synthetic", "image": {"bytes": _png(rng), "path": None},
                 "question": _text(rng, rng.randint(6, 16)) + "?", "chosen": _text(rng, rng.randint(40, 120)),
                 "rejected": _text(rng, rng.randint(40, 120)), "origin_dataset": "synthetic",
                 "origin_split": "train", "idx": i, "image_path": f"synthetic/{i}.png"}
                for i in range(start, min(n, start + GROUP))]
        table = pa.Table.from_pylist(rows)
        writer = writer or pq.ParquetWriter(path, table.schema)
        writer.write_table(table)
    writer.close()
    return path


def _tiny():
    from vlalign.world.model import TinyVLMConfig, build_model, build_processor

    config = TinyVLMConfig(image_size=16, patch_size=16, vision_hidden=16, vision_layers=1, vision_heads=2,
                           text_hidden=32, text_layers=1, text_heads=2, text_intermediate=64)
    processor = build_processor(config)
    return build_model(processor, config, seed=0), processor


def child(parquet: Path, run: Path) -> dict:
    """Import, then one epoch of DPO; the peak RSS of this process after each."""
    from vlalign.formats.imports import import_data
    from vlalign.stages.pairs import examples_under
    from vlalign.train.fit import fit
    from vlalign.train.settings import OptimConfig, TrainConfig

    start = time.monotonic()
    import_data("rlaif-v", parquet, run)
    imported, after_import = time.monotonic() - start, _peak_mb()
    examples = examples_under(run)
    model, processor = _tiny()
    processor.vlalign_max_length = MAX_LENGTH
    config = TrainConfig(batch_size=BATCH, epochs=1.0, optim=OptimConfig(lr=1e-4, log_every=100))
    start = time.monotonic()
    _, history = fit(model, processor, examples, config, out=run / "training")
    return {"pairs": len(examples), "import_s": round(imported, 1), "train_s": round(time.monotonic() - start, 1),
            "peak_import_mb": round(after_import, 1), "peak_rss_mb": round(_peak_mb(), 1),
            "steps": history[-1]["step"]}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_child(parquet: Path, run: Path) -> dict:
    done = subprocess.run([sys.executable, __file__, "--child", str(parquet), str(run)], capture_output=True,
                          text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode:
        raise SystemExit(f"the run on {parquet} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def speedup(run: Path, work: Path) -> dict:
    """Wall time of `vlalign dpo` on `run`'s pairs in one process and under torchrun with two (one thread each,
    the same global batch)."""
    from vlalign.models.load import save

    model, processor = _tiny()
    processor.vlalign_max_length = MAX_LENGTH
    policy = save(model, processor, work / "policy0")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    times = {}
    for name, launcher in (("1 process", []),
                           ("2 processes", ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"])):
        start = time.monotonic()
        subprocess.run([sys.executable, *launcher, "-m", "vlalign", "dpo", str(run), "--policy", str(policy),
                        "--out", str(work / name.replace(" ", "_")), f"batch_size={BATCH}", "epochs=1"],
                       env=env, check=True, capture_output=True)
        times[name] = round(time.monotonic() - start, 1)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--speedup", action="store_true", help="also time the smallest run's DPO in 1 and 2 processes")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return
    results = []
    with tempfile.TemporaryDirectory(prefix="scale-memory-") as tmp:
        for n in args.sizes:
            parquet = make_parquet(Path(tmp) / f"rlaif-v-{n}.parquet", n)
            results.append(_run_child(parquet, Path(tmp) / f"run-{n}"))
            print(json.dumps(results[-1]), flush=True)
        if args.speedup:
            times = speedup(Path(tmp) / f"run-{args.sizes[0]}", Path(tmp))
            print(f"DPO on {results[0]['pairs']} pairs: " + ", ".join(f"{k} {v} s" for k, v in times.items())
                  + f"; speed-up {times['1 process'] / times['2 processes']:.2f}x", flush=True)
    ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
    verdict = "within" if ratio <= BOUND else "OVER"
    print(f"peak RSS {results[-1]['pairs']} pairs / {results[0]['pairs']} pairs: {ratio:.3f}x ({verdict} the "
          f"bound {BOUND}x)")


if __name__ == "__main__":
    main()
