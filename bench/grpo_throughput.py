"""vlalign's GRPO (`vlalign run grpo`, a rollout per round) against TRL's GRPOTrainer: the same model, prompts,
reward function (an answer's words), group size 8, loss (DAPO's token mean with a KL term, beta 0.04), one
optimizer step per rollout, trainable parameters (the decoder and projector; the vision tower frozen in
both), each run in a process of its own under /usr/bin/time.

    python bench/grpo_throughput.py --shape llava7b            # LLaVA-1.5-7B's shape scaled for a CPU
    python bench/grpo_throughput.py --shape world              # the world's base policy
    python bench/grpo_throughput.py --shape llava7b --real-size --device cuda --prompts 4 --steps 6   # a GPU

Each is run `--runs` times (processes), the two in turn, and the fastest (steady state) of each counts. Reported:
the whole process (wall seconds and peak RSS from /usr/bin/time, glibc's default allocator), and the
steady state (steps 2 on): seconds per step (a rollout: sampling, reward, reference log-probs, training, and
for vlalign the round's stages and saved policy), and the same without sampling (what the policy and the
reference read). The token limit comes from the token counts: per group TRL forwards (and backpropagates)
n rows of prompt and answer for the policy and forwards them again for the reference, n (P + A) tokens
each; vlalign one row, the prompt once and the n answers after it, P + nA tokens each. Sampling reads the
prompt once per group in vlalign (one prefill) and n times in TRL, and then decodes the same n x A tokens.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import shapes  # noqa: E402

GROUP, LR, BETA = 8, 1e-6, 0.04


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.add_arguments(ap)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step (each answered 8 times)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps (rollouts); the first is not timed")
    ap.add_argument("--runs", type=int, default=1, help="processes of each, in turn; the fastest steady state counts")
    ap.add_argument("--gc", action="store_true", help="gradient checkpointing in both (TRL's default, not vlalign's)")
    ap.add_argument("--run", choices=("vlalign", "trl"), help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    return ap.parse_args()


def answer_tokens(args) -> int:
    return 24 if args.shape == "world" else shapes.ANSWER_TOKENS


def write_prompts(args, shape, folder: Path) -> tuple[list, list[str]]:
    """The steps' prompts as a prompt file (images beside it), in the order both runs read them."""
    images, instructions, _, _ = shapes.texts(shape, args.prompts * args.steps)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "prompts.jsonl", "w") as f:
        for i, (image, instruction) in enumerate(zip(images, instructions, strict=True)):
            image.save(folder / f"{i}.png")
            f.write(json.dumps({"id": f"p{i}", "image": f"{i}.png", "instruction": instruction}) + "\n")
    return images, instructions


class Timers:
    """Wall seconds of every call of the functions patched, by name; and of every optimizer step."""

    def __init__(self, device: str):
        self.cuda = device.startswith("cuda")
        self.calls: dict[str, list[tuple[float, float]]] = {}

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def patch(self, owner, attribute: str, name: str) -> None:
        real = getattr(owner, attribute)
        calls = self.calls.setdefault(name, [])

        def timed(*a, **k):
            start = self._now()
            out = real(*a, **k)
            calls.append((start, self._now()))
            return out

        setattr(owner, attribute, timed)

    def seconds(self, name: str) -> list[float]:
        return [b - a for a, b in self.calls.get(name, [])]

    def steps(self) -> list[float]:
        """Seconds from each optimizer step's end to the next one's."""
        ends = [b for _, b in self.calls.get("optimizer", [])]
        return [b - a for a, b in zip(ends, ends[1:], strict=False)]


def _sampling_within(timers: Timers, windows: list[tuple[float, float]]) -> list[float]:
    """Sampling seconds inside each window (a step)."""
    sampled = timers.calls.get("generate", [])
    return [sum(b - a for a, b in sampled if a >= start and b <= end) for start, end in windows]


def run_vlalign(args) -> dict:
    import vlalign.models.generate as generation
    import vlalign.runner as runner
    from vlalign.config import load_config
    from vlalign.models.processors import load_processor
    from vlalign.plugins import METHODS

    timers = Timers(args.device)
    timers.patch(torch.optim.AdamW, "step", "optimizer")
    timers.patch(generation, "generate", "generate")
    timers.patch(runner, "run_round", "round")
    method = METHODS.get("grpo")
    dtype = "fp32" if shapes.dtype_of(args) == torch.float32 else "bf16"
    config = load_config(method.config, None, [
        f"policy={args.model_dir}", f"runtime.dtype={dtype}", f"runtime.device={args.device}",
        f"runtime.gradient_checkpointing={str(args.gc).lower()}", f"prompts.source={args.data}/prompts.jsonl",
        f"prompts.per_round={args.prompts}", f"rounds={args.steps}", f"samples={GROUP}",
        f"decoding.max_new_tokens={answer_tokens(args)}", "decoding.temperature=1.0", "rewards=[length]",
        "groups.drop_equal=false", f"objective={{aggregate: token, kl: {BETA}}}", f"train.batch_size={args.prompts}",
        f"train.optim.lr={LR}", "train.optim.log_every=1", f"batch_size={args.prompts * GROUP}", "eval_base=false",
        "report=false"])
    tok = load_processor(args.model_dir).tokenizer
    with tempfile.TemporaryDirectory() as out:
        summary = runner.run(method, config, out)
        tokens = [len(tok(r["response"], add_special_tokens=False)["input_ids"]) + 1 for k in range(1, args.steps + 1)
                  for r in runner.RunStore(out).stage(f"round{k}/responses").rows()]
    rounds = timers.calls["round"]
    step_seconds = [b - a for a, b in rounds]
    sampling = _sampling_within(timers, rounds)
    return {"step_s": step_seconds, "sampling_s": sampling, "loss1": summary["rounds"][0]["final_loss"],
            "answer_tokens": sum(tokens) / len(tokens)}


def run_trl(args) -> dict:
    import datasets
    from PIL import Image
    from transformers import AutoModelForImageTextToText
    from transformers.generation.utils import GenerationMixin
    from trl import GRPOConfig, GRPOTrainer

    from vlalign.models.lora import is_vision_parameter
    from vlalign.models.processors import load_processor

    timers = Timers(args.device)
    timers.patch(torch.optim.AdamW, "step", "optimizer")
    timers.patch(GenerationMixin, "generate", "generate")
    dtype = shapes.dtype_of(args)
    model = AutoModelForImageTextToText.from_pretrained(args.model_dir, dtype=dtype).to(args.device)
    for name, p in model.named_parameters():
        p.requires_grad_(not is_vision_parameter(name))
    processor = load_processor(args.model_dir)
    rows = [json.loads(line) for line in (Path(args.data) / "prompts.jsonl").read_text().splitlines()]

    dataset = datasets.Dataset.from_dict({
        "image": [Image.open(Path(args.data) / r["image"]).convert("RGB") for r in rows],
        "prompt": [[{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": r["instruction"]}]}]
                   for r in rows]})

    def words(completions, **kwargs) -> list[float]:  # the same reward as vlalign's `length` component
        return [float(len((c[0]["content"] if isinstance(c, list) else c).split())) for c in completions]

    cuda = args.device.startswith("cuda")
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.prompts * GROUP, num_generations=GROUP,
        max_steps=args.steps, learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, logging_steps=1,
        report_to=[], save_strategy="no", bf16=cuda and dtype == torch.bfloat16, use_cpu=not cuda, beta=BETA,
        loss_type="dapo", scale_rewards="group", max_completion_length=answer_tokens(args), temperature=1.0,
        gradient_checkpointing=args.gc, shuffle_dataset=False, dataloader_num_workers=0, seed=0, max_grad_norm=1.0)
    trainer = GRPOTrainer(model=model, args=config, train_dataset=dataset, reward_funcs=[words],
                          processing_class=processor)
    start = timers._now()
    trainer.train()
    ends = [b for _, b in timers.calls["optimizer"]]
    windows = list(zip([start, *ends[:-1]], ends, strict=True))  # a step generates its batch, then trains
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"step_s": [b - a for a, b in windows], "sampling_s": _sampling_within(timers, windows),
            "loss1": losses[0]}


def child(args) -> None:
    shapes.setup(args)
    shapes.emit(run_vlalign(args) if args.run == "vlalign" else run_trl(args))


TIME_LINES = {"wall": re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)"),
              "rss": re.compile(r"Maximum resident set size \(kbytes\): (\d+)")}


def _clock(text: str) -> float:
    parts = [float(p) for p in text.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def _spawn(which: str, argv: list[str]) -> dict:
    """A child run under /usr/bin/time -v (the default allocator): its result, wall seconds and peak RSS."""
    out = subprocess.run(["/usr/bin/time", "-v", sys.executable, __file__, *argv, "--run", which],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the {which} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    result = shapes.read_result(out.stdout)
    result["wall_s"] = _clock(TIME_LINES["wall"].search(out.stderr).group(1))
    result["peak_gib"] = int(TIME_LINES["rss"].search(out.stderr).group(1)) / 2**20
    return result


def _steady(values: list[float]) -> float:
    """The mean of the steps after the first (which pays for warming up)."""
    later = values[1:] or values
    return sum(later) / len(later)


def main() -> None:
    args = _args()
    if args.run:
        return child(args)
    shapes.setup(args)
    shape = shapes.build(args)
    with tempfile.TemporaryDirectory() as tmp:
        from vlalign.models.load import save

        save(shape.model, shape.processor, Path(tmp) / "model")
        images, instructions = write_prompts(args, shape, Path(tmp) / "data")
        prompt, _ = shapes.token_counts(shape.processor, images[:1], instructions[:1], ["x"])
        del shape
        argv = [*sys.argv[1:], "--model-dir", str(Path(tmp) / "model"), "--data", str(Path(tmp) / "data")]
        runs: dict[str, list[dict]] = {"vlalign": [], "trl": []}
        for _ in range(args.runs):  # in turn, so that a machine whose load changes weighs on both alike
            for which in runs:
                runs[which].append(_spawn(which, argv))
        ours, theirs = (min(runs[w], key=lambda r: _steady(r["step_s"])) for w in ("vlalign", "trl"))
    answer = ours["answer_tokens"]
    limit = GROUP * (prompt + answer) / (prompt + GROUP * answer)
    print(f"{args.shape}{' real size' if args.real_size else ''}, {args.device}, {shapes.dtype_of(args)}, "
          f"{args.steps} steps of {args.prompts} prompts x {GROUP} answers, gradient checkpointing "
          f"{'on' if args.gc else 'off'} in both; P = {prompt:.0f} prompt tokens, A = {answer:.0f} answer tokens")
    rows = {}
    for name, r in (("vlalign", ours), ("TRL", theirs)):
        step, sampling = _steady(r["step_s"]), _steady(r["sampling_s"])
        rows[name] = (step, step - sampling)
        print(f"  {name:8} whole process {r['wall_s']:.1f} s, peak RSS {r['peak_gib']:.2f} GiB; steady "
              f"{1 / step:.3f} steps/s ({step:.2f} s a step, {sampling:.2f} s of it sampling); step-1 loss "
              f"{r['loss1']:.4f} (on its own samples)")
    steady = rows["TRL"][0] / rows["vlalign"][0]
    training = rows["TRL"][1] / rows["vlalign"][1]
    print(f"token limit (policy and reference rows): {limit:.2f}x")
    print(f"ratios: steady {steady:.2f}x a whole step, {training:.2f}x without sampling ({training / limit:.2f} of "
          f"the token limit); whole process {theirs['wall_s'] / ours['wall_s']:.2f}x; peak memory "
          f"{ours['peak_gib'] / theirs['peak_gib']:.2f}x TRL's")


if __name__ == "__main__":
    main()
