"""`vlalign dpo` against TRL's DPOTrainer as a user times them: the same model, pairs (read from disk), batch
size, steps and trainable parameters (the decoder and projector; the vision tower frozen in both), each a
whole process under `/usr/bin/time -v` with glibc's default allocator, run in turn A B A B.

    python bench/dpo_throughput.py --shape llava7b                      # LLaVA-1.5-7B's shape scaled for a CPU
    python bench/dpo_throughput.py --shape llava7b --answers 50-300     # answers of mixed lengths
    python bench/dpo_throughput.py --shape qwen3vl8b                    # Qwen3-VL-8B's shape scaled for a CPU
    python bench/dpo_throughput.py --shape world --pairs 512            # the world's base policy, 64 steps of 8
    python bench/dpo_throughput.py --shape llava7b --real-size --device cuda --pairs 16 --batch 4   # a GPU

The pairs are written once as a run's pairs stage (what `vlalign dpo` reads) and exported in TRL's format
(`vlalign export --format trl`, what DPOTrainer reads); each child loads the saved model, trains one epoch
and saves the result. Reported per run: whole-process wall and peak RSS (GNU time), steady-state pairs/s
(steps 2 on), when the first step ended, the step-1 loss (sigmoid + sft, so it depends on the log-probs: the
two must agree to 1e-4; both see the same first batch). Then, from one more run of each, the live tensors:
on a CPU the peak bytes of tensors during step 2 (those alive when it starts plus the profiler's running
allocations), on CUDA torch.cuda.max_memory_allocated over the run.

The limits come from the token counts: per step TRL forwards and backpropagates its padded rows (chosen and
rejected, 2 x batch rows as long as the batch's longest) and forwards them once more for its reference;
vlalign forwards and backpropagates each pair's P + c + r tokens, and its cached reference forwards them once
per dataset; a backward costs two forwards. vlalign's padding counts as waste, so a padded batch cannot
reach the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

LR, BETA = 1e-5, 0.1


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.add_arguments(ap)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--answers", default=str(shapes.ANSWER_TOKENS),
                    help="llava7b answer tokens: N, or LOW-HIGH for lengths drawn uniformly in that range")
    ap.add_argument("--rounds", type=int, default=2, help="A B rounds of whole-process runs (A B A B for 2)")
    ap.add_argument("--no-live", action="store_true", help="skip the two extra runs that measure live tensors")
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing in both (TRL's default, not vlalign's)")
    ap.add_argument("--row-tokens", type=int, help="vlalign's optim.row_tokens: rows of at most this many tokens")
    ap.add_argument("--run", choices=("vlalign", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--live", action="store_true", help=argparse.SUPPRESS)
    return ap.parse_args()


# ---- the children ----

class StepTimes:
    """Wall time at the end of every optimizer step (patched onto AdamW.step); with `live`, the live tensors of
    step 2 (`shapes.LiveTensors`) on a CPU."""

    def __init__(self, device: str, live: bool):
        self.times: list[float] = []
        self.cuda = device.startswith("cuda")
        self.tensors = shapes.LiveTensors() if live and not self.cuda else None
        self.live_gib: float | None = None
        real = torch.optim.AdamW.step

        def step(opt, *a, **k):
            out = real(opt, *a, **k)
            if self.cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            if self.tensors is not None and len(self.times) == 1:
                self.tensors.open()
            elif self.tensors is not None and len(self.times) == 2:
                self.live_gib = self.tensors.close()
            return out

        torch.optim.AdamW.step = step
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()

    def result(self, batch: int) -> dict:
        t = self.times
        out = {"steps": len(t), "first_step_s": t[0] - START,
               "steady_pairs_s": batch * (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")}
        if self.cuda:
            out["live_gib"] = torch.cuda.max_memory_allocated() / 2**30
        elif self.live_gib is not None:
            out["live_gib"] = self.live_gib
        return out


START = time.perf_counter()


def run_vlalign(args, data: Path, out: Path) -> dict:
    """`vlalign dpo` as a user types it (its own imports, loading, reference pass, training, saving)."""
    from vlalign.cli import main

    steps = StepTimes(args.device, args.live)
    sys.argv = ["vlalign", "dpo", str(data / "run"), "--policy", str(data / "model"), "--out", str(out),
                "--dtype", "fp32" if shapes.dtype_of(args) == torch.float32 else "bf16",
                *(["--gradient-checkpointing"] if args.gc else []),
                "loss={sigmoid: 1.0, sft: 1.0}", f"beta={BETA}", f"batch_size={args.batch}", "epochs=1",
                f"optim.lr={LR}", "optim.warmup_ratio=0", "optim.log_every=1", "optim.max_grad_norm=1.0",
                *([f"optim.row_tokens={args.row_tokens}"] if args.row_tokens else [])]
    try:
        main()
    except SystemExit as e:
        if e.code:
            raise
    history = json.loads((out / "training" / "train_history.json").read_text())["history"]
    return {**steps.result(args.batch), "loss1": history[0]["loss"]}


def run_trl(args, data: Path, out: Path) -> dict:
    """DPOTrainer on the exported pairs, in the order vlalign drew them, then `save_model`."""
    import datasets
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    from vlalign.models.lora import is_vision_parameter
    from vlalign.models.processors import load_processor

    steps = StepTimes(args.device, args.live)
    dtype = shapes.dtype_of(args)
    model = AutoModelForImageTextToText.from_pretrained(data / "model", dtype=dtype).to(args.device)
    for name, p in model.named_parameters():
        p.requires_grad_(not is_vision_parameter(name))
    processor = load_processor(data / "model")
    dataset = datasets.load_from_disk(str(data / "trl"))
    position = {i: k for k, i in enumerate(dataset["id"])}
    dataset = dataset.select([position[i] for i in json.loads((data / "order.json").read_text())])
    cuda = args.device.startswith("cuda")
    config = DPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.batch, max_steps=len(dataset) // args.batch,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1, report_to=[],
        save_strategy="no", bf16=cuda and dtype == torch.bfloat16, use_cpu=not cuda, beta=BETA,
        loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], max_length=None, max_grad_norm=1.0,
        gradient_checkpointing=args.gc, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0)
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    trainer.save_model(str(out / "policy"))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {**steps.result(args.batch), "loss1": losses[0]}


def child(args) -> None:
    shapes.setup(args)
    with tempfile.TemporaryDirectory() as out:
        run = run_vlalign if args.run == "vlalign" else run_trl
        shapes.emit(run(args, Path(args.data), Path(out)))


# ---- the data, written once ----

def write_data(args, shape, data: Path) -> list[dict[str, int]]:
    """The model, the pairs as a run's pairs stage and as TRL's export, the order vlalign's shuffle draws them
    in (`order.json`, which TRL follows), and every pair's token counts (prompt, chosen, rejected)."""
    from vlalign.data.records import PairRecord, stable_id
    from vlalign.data.store import RunStore
    from vlalign.formats.export import export_trl
    from vlalign.models.load import save
    from vlalign.models.prefix import answers_group
    from vlalign.stages.pairs import examples_under
    from vlalign.train.examples import Shuffled

    save(shape.model, shape.processor, data / "model")
    images, instructions, chosen, rejected = shapes.texts(shape, args.pairs, answers=shapes.answer_lengths(args.answers))
    store = RunStore(data / "run")
    rows, tokens = [], []
    for i in range(args.pairs):
        rows.append(PairRecord(id=stable_id("bench", i), prompt_id=f"p{i}", image=store.images.put(images[i]),
                               instruction=instructions[i], chosen=chosen[i], rejected=rejected[i],
                               method="bench").to_row())
        group = answers_group(shape.processor, images[i], instructions[i], [chosen[i], rejected[i]], [0, 1])
        tokens.append({"prompt": len(group.prompt["input_ids"]),
                       **{k: len(c) for k, c in zip(("chosen", "rejected"), group.continuations, strict=True)}})
    store.stage("pairs").write_shard(rows)
    export_trl(data / "run", data / "trl")
    pairs = examples_under(data / "run")
    ids = [pairs[p].id for p in range(len(pairs))]
    by_id = {r["id"]: t for r, t in zip(rows, tokens, strict=True)}
    order = [ids[p] for batch in Shuffled(range(len(ids)), lambda p: {}, args.batch, 0) for p, _ in batch]
    (data / "order.json").write_text(json.dumps(order))
    return [by_id[i] for i in order]


def limits(tokens: list[dict[str, int]], batch: int) -> tuple[float, float]:
    """(steady-state limit, whole-job limit) from the token counts, in the order of training: TRL's padded
    rows against vlalign's tokens without padding."""
    trl = ours = 0.0
    for s in range(0, len(tokens) - batch + 1, batch):
        part = tokens[s:s + batch]
        longest = max(t["prompt"] + max(t["chosen"], t["rejected"]) for t in part)
        trl += (3 + 1) * 2 * len(part) * longest
        ours += sum(t["prompt"] + t["chosen"] + t["rejected"] for t in part)
    return trl / (3 * ours), trl / (3 * ours + ours)


# ---- the parent ----

def _spawn(which: str, argv: list[str], *extra: str) -> dict:
    proc = shapes.timed_process([sys.executable, __file__, *argv, "--run", which, *extra],
                                env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
                                what=f"the {which} run")
    return {**shapes.read_result(proc.stdout), "wall_s": proc.wall_s, "rss_gib": proc.peak_rss_gib}


def _spread(values: list[float], fmt: str) -> str:
    return ", ".join(format(v, fmt) for v in values) + (f" (median {statistics.median(values):{fmt}})"
                                                        if len(values) > 2 else "")


def main() -> None:
    args = _args()
    if args.run:
        return child(args)
    shapes.setup(args)
    shape = shapes.build(args)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        tokens = write_data(args, shape, data)
        del shape
        argv = [*sys.argv[1:], "--data", str(data)]
        runs = []
        for _ in range(args.rounds):
            runs += [("vlalign", _spawn("vlalign", argv)), ("TRL", _spawn("trl", argv))]
        live = {} if args.no_live else {"vlalign": _spawn("vlalign", argv, "--live"), "TRL": _spawn("trl", argv, "--live")}
    steps = args.pairs // args.batch
    step_limit, job_limit = limits(tokens, args.batch)
    prompt = statistics.mean(t["prompt"] for t in tokens)
    answer = statistics.mean((t["chosen"] + t["rejected"]) / 2 for t in tokens)
    if args.shape in ("llava7b", "qwen3vl8b") and not args.real_size:
        print(shapes.describe_shapes(round(prompt), round(answer), args.shape))
    print(f"{args.shape}{' real size' if args.real_size else ''}, {args.device}, {shapes.dtype_of(args)}, "
          f"{args.pairs} pairs, {steps} steps of {args.batch}, gradient checkpointing {'on' if args.gc else 'off'} "
          f"in both; P = {prompt:.0f} prompt tokens, A = {answer:.0f} answer tokens (mean"
          f"{f', drawn from {args.answers}' if args.shape == 'llava7b' else ''})"
          f"{f'; vlalign rows of at most {args.row_tokens} tokens' if args.row_tokens else ''}")
    print("whole process (/usr/bin/time -v, glibc's default allocator), in the order run:")
    for name, r in runs:
        print(f"  {name:8} wall {r['wall_s']:6.1f} s, peak RSS {r['rss_gib']:.2f} GiB, steady {r['steady_pairs_s']:.3f} "
              f"pairs/s, first step done at {r['first_step_s']:.1f} s, step-1 loss {r['loss1']:.6f}")
    if live:
        what = ("peak allocated (torch.cuda.max_memory_allocated)" if args.device.startswith("cuda")
                else "live tensors at their peak in step 2")
        print(f"{what}: vlalign {live['vlalign']['live_gib']:.2f} GiB, TRL {live['TRL']['live_gib']:.2f} GiB "
              f"({live['vlalign']['live_gib'] / live['TRL']['live_gib']:.2f}x)")
    ours = [r for n, r in runs if n == "vlalign"]
    theirs = [r for n, r in runs if n == "TRL"]
    pairs = list(zip(ours, theirs, strict=True))
    wall = [t["wall_s"] / o["wall_s"] for o, t in pairs]
    rss = [o["rss_gib"] / t["rss_gib"] for o, t in pairs]
    steady = [o["steady_pairs_s"] / t["steady_pairs_s"] for o, t in pairs]
    agree = max(abs(o["loss1"] - t["loss1"]) for o, t in pairs)
    print(f"limits from the token counts: steady {step_limit:.2f}x, whole job {job_limit:.2f}x")
    print(f"ratios (vlalign against TRL, per A B round): wall {_spread(wall, '.2f')}x faster; peak RSS "
          f"{_spread(rss, '.2f')}x TRL's; steady {_spread(steady, '.2f')}x "
          f"({_spread([s / step_limit for s in steady], '.2f')} of its limit); step-1 loss difference {agree:.1e}")


if __name__ == "__main__":
    main()
