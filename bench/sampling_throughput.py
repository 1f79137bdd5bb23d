"""Sampling samples/s at n samples per prompt: vlalign's `generate` (one prefill per prompt, its key/value
cache copied to the n rows) against today's code before it (one prefill per sample), with the same seeds, so
the samples must be the same texts.

    python bench/sampling_throughput.py --shape llava7b
    python bench/sampling_throughput.py --shape world
    python bench/sampling_throughput.py --shape llava7b --real-size --device cuda

The limit is the token count: n samples of P prompt tokens and T new tokens forward n (P + T) tokens one by
one prefill, P + n T from one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plain_rows  # noqa: E402
import shapes  # noqa: E402


def _args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shapes.add_arguments(ap)
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("-n", type=int, default=10, help="samples per prompt")
    ap.add_argument("--new-tokens", type=int, default=None, help="default: 150 on llava7b, 48 on world")
    return ap.parse_args()


def main() -> None:
    args = _args()
    shapes.setup(args)
    shape = shapes.build(args)
    from vlalign.models.generate import generate, sample_seed
    from vlalign.models.settings import Decoding

    model, processor = shape.model, shape.processor
    images, instructions, _, _ = shapes.texts(shape, args.prompts)
    rows = [(i, k) for i in range(args.prompts) for k in range(args.n)]
    row_images, row_instructions = [images[i] for i, _ in rows], [instructions[i] for i, _ in rows]
    seeds = [sample_seed(0, f"prompt-{i}", k) for i, k in rows]
    new = args.new_tokens or (150 if shape.name.startswith("llava7b") else 48)
    decoding = Decoding(max_new_tokens=new, temperature=0.7)
    clock = shapes.Clock(args.device, args.repeats)
    with torch.no_grad():
        generate(model, processor, row_images[:2], row_instructions[:2], decoding, seeds=seeds[:2])  # warm-up
        ours, ours_s = clock(generate, model, processor, row_images, row_instructions, decoding, seeds=seeds)
        today, today_s = clock(plain_rows.generate, model, processor, row_images, row_instructions, decoding,
                               seeds=seeds)
    tok = processor.tokenizer
    generated = sum(len(tok(t, add_special_tokens=False)["input_ids"]) + 1 for t in ours) / len(ours)
    prompt, _ = shapes.token_counts(processor, images[:1], instructions[:1], [""])
    bound = args.n * (prompt + generated) / (prompt + args.n * generated)
    same = ours == today
    print(f"{shape.name}, {args.device}, {shapes.dtype_of(args)}: {args.prompts} prompts x {args.n} samples, "
          f"P = {prompt:.0f} prompt tokens, {generated:.0f} new tokens a sample (at most {new})")
    print(f"  vlalign (one prefill a prompt)   {len(rows) / ours_s:7.2f} samples/s")
    print(f"  today (one prefill a sample)     {len(rows) / today_s:7.2f} samples/s")
    print(f"ratios: {today_s / ours_s:.2f}x today's samples/s (token limit {bound:.2f}x), same samples {same}")


if __name__ == "__main__":
    main()
