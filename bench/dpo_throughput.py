"""vlalign's DPO step against TRL's DPOTrainer: the same model, pairs, batch size, steps and trainable parameters
(the decoder and projector; the vision tower frozen in both), run in turn, each in a process of its own.

    python bench/dpo_throughput.py --shape llava7b            # LLaVA-1.5-7B's shape scaled for a CPU
    python bench/dpo_throughput.py --shape qwen3vl8b          # Qwen3-VL-8B's shape scaled for a CPU
    python bench/dpo_throughput.py --shape world              # the world's base policy
    python bench/dpo_throughput.py --shape llava7b --real-size --device cuda --pairs 16 --batch 4   # a GPU

Reported: steady-state pairs/s (steps 2 on; vlalign's one-time reference pass on its own), the whole one-epoch
job (vlalign: reference pass + training; TRL: trainer set-up, which loads its reference copy, + training),
peak memory (CPU: peak RSS above the RSS once model and pairs are loaded, glibc's mmap threshold fixed in both
runs so that RSS follows live tensors; CUDA: peak allocated), and the loss of
step 1 of both (sigmoid + sft, so it depends on the log-probs: it must agree to 1e-4; both see the same first
batch). The limits come from the token counts of these pairs: per pair and step TRL forwards and
backpropagates 2(P + A) tokens and forwards 2(P + A) more for its reference, vlalign P + 2A forward and
backward, and its cached reference P + 2A once per dataset; a backward costs two forwards.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing in both (TRL's default, not vlalign's)")
    ap.add_argument("--run", choices=("vlalign", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--order", help=argparse.SUPPRESS)
    return ap.parse_args()


def _data(args, shape):
    from vlalign.train.preference import PreferenceExample

    images, instructions, chosen, rejected = shapes.texts(shape, args.pairs)
    return [PreferenceExample(f"pair-{i}", images[i], instructions[i], chosen[i], rejected[i])
            for i in range(args.pairs)]


def _peak_start(device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        return 0.0
    return shapes.rss_gib()


def _peak(device: str, start: float) -> float:
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**30
    return shapes.peak_rss_gib() - start


class StepTimes:
    """Wall time at the end of every optimizer step (patched onto AdamW.step)."""

    def __init__(self, device: str):
        self.times: list[float] = []
        self.cuda = device.startswith("cuda")
        real = torch.optim.AdamW.step
        times = self.times

        def step(opt, *a, **k):
            out = real(opt, *a, **k)
            if self.cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            return out

        torch.optim.AdamW.step = step

    def steady(self, pairs_per_step: int) -> float:
        return pairs_per_step * (len(self.times) - 1) / (self.times[-1] - self.times[0])


def run_vlalign(args) -> dict:
    import vlalign.train.fit as fit_module
    import vlalign.train.preference as preference
    from vlalign.models.load import load
    from vlalign.models.prefix import shares_prefix
    from vlalign.train.columns import Columns
    from vlalign.train.settings import OptimConfig, TrainConfig

    model, processor = load(args.model_dir, dtype="fp32" if shapes.dtype_of(args) == torch.float32 else "bf16",
                            device=args.device)
    examples = _data(args, shapes.Shape(args.shape, model, processor))
    config = TrainConfig(loss={"sigmoid": 1.0, "sft": 1.0}, beta=BETA, batch_size=args.batch, epochs=1.0,
                         optim=OptimConfig(lr=LR, warmup_ratio=0.0, log_every=1))
    order: list[str] = []
    pairs = preference.pair_collate(processor, Columns(), shares_prefix(model))

    def collate(items, number):
        order.extend(e.id for e, _ in items)
        return pairs(items, number)

    ref_time = {}
    real_ref = fit_module.reference_logps

    def timed_ref(*a, **k):
        start = time.perf_counter()
        out = real_ref(*a, **k)
        ref_time["s"] = time.perf_counter() - start
        return out

    fit_module.reference_logps = timed_ref
    steps = StepTimes(args.device)
    start_mem = _peak_start(args.device)
    start = time.perf_counter()
    _, history = fit_module.fit(model, processor, examples, config, collate=collate,
                                            gradient_checkpointing=args.gc)
    job = time.perf_counter() - start
    return {"job_s": job, "ref_s": ref_time["s"], "steady_pairs_s": steps.steady(args.batch),
            "peak_gib": _peak(args.device, start_mem), "loss1": history[0]["loss"], "order": order,
            "steps": len(steps.times)}


def run_trl(args) -> dict:
    import datasets
    from transformers import AutoModelForImageTextToText
    from trl import DPOConfig, DPOTrainer

    from vlalign.models.lora import is_vision_parameter
    from vlalign.models.processors import load_processor

    dtype = shapes.dtype_of(args)
    model = AutoModelForImageTextToText.from_pretrained(args.model_dir, dtype=dtype).to(args.device)
    for name, p in model.named_parameters():
        p.requires_grad_(not is_vision_parameter(name))
    processor = load_processor(args.model_dir)
    examples = {e.id: e for e in _data(args, shapes.Shape(args.shape, model, processor))}
    order = json.loads(Path(args.order).read_text())
    rows = [examples[i] for i in order]
    dataset = datasets.Dataset.from_dict({
        "images": [[e.image] for e in rows],
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": e.instruction}]}]
                   for e in rows],
        "chosen": [[{"role": "assistant", "content": [{"type": "text", "text": e.chosen}]}] for e in rows],
        "rejected": [[{"role": "assistant", "content": [{"type": "text", "text": e.rejected}]}] for e in rows]})
    cuda = args.device.startswith("cuda")
    config = DPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, max_steps=len(rows) // args.batch,
        learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, logging_steps=1, report_to=[],
        save_strategy="no", bf16=cuda and dtype == torch.bfloat16, use_cpu=not cuda, beta=BETA,
        loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0], max_length=None, max_grad_norm=1.0,
        gradient_checkpointing=args.gc, train_sampling_strategy="sequential", dataloader_num_workers=0, seed=0)
    steps = StepTimes(args.device)
    start_mem = _peak_start(args.device)
    start = time.perf_counter()
    trainer = DPOTrainer(model=model, args=config, train_dataset=dataset, processing_class=processor)
    trainer.train()
    job = time.perf_counter() - start
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"job_s": job, "steady_pairs_s": steps.steady(args.batch), "peak_gib": _peak(args.device, start_mem),
            "loss1": losses[0], "steps": len(steps.times)}


def child(args) -> None:
    shapes.setup(args)
    shapes.emit(run_vlalign(args) if args.run == "vlalign" else run_trl(args))


# A fixed mmap threshold makes glibc hand large freed blocks back at once, so a CPU run's RSS follows its live
# tensors rather than the heap's high-water mark (the same setting for both runs)
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}


def _spawn(which: str, argv: list[str], *extra: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv, "--run", which, *extra], capture_output=True, text=True,
                         env={**os.environ, **MALLOC})
    if out.returncode:
        raise SystemExit(f"the {which} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return shapes.read_result(out.stdout)


def limits(prompt: float, answer: float) -> tuple[float, float]:
    """(steady-state step limit, whole one-epoch job limit) per pair, from the token counts; a backward is two
    forwards, and the cached reference is one forward of the pair per dataset."""
    trl = 3 * 2 * (prompt + answer) + 2 * (prompt + answer)
    ours = 3 * (prompt + 2 * answer)
    return trl / ours, trl / (ours + prompt + 2 * answer)


def main() -> None:
    args = _args()
    if args.run:
        return child(args)
    shapes.setup(args)
    shape = shapes.build(args)
    with tempfile.TemporaryDirectory() as tmp:
        from vlalign.models.load import save

        save(shape.model, shape.processor, Path(tmp) / "model")
        examples = _data(args, shape)
        ims, ins = [e.image for e in examples], [e.instruction for e in examples]
        prompt, chosen = shapes.token_counts(shape.processor, ims, ins, [e.chosen for e in examples])
        _, rejected = shapes.token_counts(shape.processor, ims, ins, [e.rejected for e in examples])
        answer = (chosen + rejected) / 2
        del shape
        argv = [a for a in sys.argv[1:]] + ["--model-dir", str(Path(tmp) / "model")]
        ours = _spawn("vlalign", argv)
        (Path(tmp) / "order.json").write_text(json.dumps(ours["order"]))
        theirs = _spawn("trl", argv, "--order", str(Path(tmp) / "order.json"))
    steps = args.pairs // args.batch
    step_limit, job_limit = limits(prompt, answer)
    if args.shape in ("llava7b", "qwen3vl8b") and not args.real_size:
        print(shapes.describe_shapes(round(prompt), round(answer), args.shape))
    print(f"{args.shape}{' real size' if args.real_size else ''}, {args.device}, {shapes.dtype_of(args)}, "
          f"{args.pairs} pairs, {steps} steps of {args.batch}, gradient checkpointing {'on' if args.gc else 'off'} "
          f"in both; P = {prompt:.0f} prompt tokens, A = {answer:.0f} answer tokens")
    for name, r in (("vlalign", ours), ("TRL", theirs)):
        ref = f", reference pass {r['ref_s']:.1f} s" if "ref_s" in r else ""
        print(f"  {name:8} steady {r['steady_pairs_s']:.3f} pairs/s, job {r['job_s']:.1f} s{ref}, "
              f"peak {r['peak_gib']:.2f} GiB, step-1 loss {r['loss1']:.6f}")
    steady = ours["steady_pairs_s"] / theirs["steady_pairs_s"]
    job = theirs["job_s"] / ours["job_s"]
    memory = ours["peak_gib"] / theirs["peak_gib"]
    agree = abs(ours["loss1"] - theirs["loss1"])
    print(f"limits: steady {step_limit:.2f}x, one-epoch job {job_limit:.2f}x")
    print(f"ratios: steady {steady:.2f}x ({steady / step_limit:.2f} of its limit {step_limit:.2f}x), job {job:.2f}x "
          f"(limit {job_limit:.2f}x), memory {memory:.2f}x TRL's, step-1 loss difference {agree:.1e}")


if __name__ == "__main__":
    main()
