"""The model shapes the throughput benchmarks run, built in code with random weights, and their data.

- `world`: the world's base policy (world:base, LLaVA: 48-px images of 9 tokens, a 4-layer decoder, short
  prompts and answers), with the world's own prompts and answers.
- `llava7b`: LLaVA-1.5-7B's shape scaled for a CPU. The image is CLIP's 336 px in patches of 14 (576 image
  tokens), prompts and answers have real lengths (about 40 instruction tokens and 150 answer tokens), and the
  widths are chosen so that the shares of the FLOPs of one (prompt + answer) row between the vision tower
  (with its projector), the decoder layers and the LM head (over every position) are the 7B's
  (`flop_shares` prints both). `--real-size` builds the 7B itself (for a GPU, bf16).
- `qwen3vl8b`: Qwen3-VL-8B's shape scaled for a CPU the same way: a 512-px image in 16-px patches merged 2x2
  (1024 patches, 256 image tokens), DeepStack mergers, a Qwen3 decoder with grouped-query attention and
  interleaved M-RoPE, widths chosen so that vision (with its mergers) : decoder : head FLOPs per row are the
  8B's (`qwen3vl_flops`). `--real-size` builds the 8B itself.

Every benchmark prints its ratios as its last line.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import resource
import subprocess
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

# The 7B: CLIP ViT-L/14-336 (24 layers of 1024) + Llama-7B (32 layers of 4096, MLP 11008, 32k vocabulary)
REAL = dict(vision_hidden=1024, vision_layers=24, vision_heads=16, vision_mlp=4096, hidden=4096, layers=32, heads=32,
            mlp=11008, vocab=32064)
# Scaled so that vision : decoder : head FLOPs per row are the 7B's (see flop_shares)
CPU = dict(vision_hidden=64, vision_layers=2, vision_heads=2, vision_mlp=256, hidden=256, layers=6, heads=4, mlp=688,
           vocab=440)
IMAGE, PATCH = 336, 14
INSTRUCTION_TOKENS, ANSWER_TOKENS = 40, 150

# Qwen3-VL-8B: its ViT (27 layers of 1152, MLP 4304, 16-px patches merged 2x2, DeepStack mergers after blocks 8,
# 16 and 24) + Qwen3-8B (36 layers of 4096, 32 query and 8 key/value heads of 128, MLP 12288, 152k vocabulary)
QWEN3_REAL = dict(vision_hidden=1152, vision_layers=27, vision_heads=16, vision_mlp=4304, deepstack=3, hidden=4096,
                  layers=36, heads=32, kv_heads=8, head_dim=128, mlp=12288, vocab=151936)
# Scaled so that vision : decoder : head FLOPs per row are the 8B's (see qwen3vl_flops)
QWEN3_CPU = dict(vision_hidden=48, vision_layers=2, vision_heads=2, vision_mlp=192, deepstack=2, hidden=256, layers=6,
                 heads=4, kv_heads=1, head_dim=64, mlp=768, vocab=1800)
QWEN3_IMAGE, QWEN3_PATCH, QWEN3_MERGE = 512, 16, 2


@dataclass
class Shape:
    name: str
    model: object
    processor: object

    @property
    def image_size(self) -> int:
        if self.name.startswith("qwen3vl8b"):
            return QWEN3_IMAGE
        return self.model.config.vision_config.image_size


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--shape", choices=("world", "llava7b", "qwen3vl8b"), default="llava7b")
    ap.add_argument("--real-size", action="store_true", help="llava7b or qwen3vl8b at its real size (for a GPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default=None, help="default: bf16 on cuda, fp32 on cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch threads on a CPU")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed calls of each path in the labeler and sampling benches; the fastest counts")


def dtype_of(args) -> torch.dtype:
    name = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    return torch.bfloat16 if name == "bf16" else torch.float32


def setup(args) -> None:
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or with --device cpu")


def world_processor(vocab: int | None = None):
    """The world's LLaVA processor at 336 px / 14, its tokenizer padded to `vocab` tokens."""
    from vlalign.world.model import TinyVLMConfig, build_processor

    processor = build_processor(TinyVLMConfig(image_size=IMAGE, patch_size=PATCH))
    tok = processor.tokenizer
    tok.model_max_length = 4096
    if vocab and vocab > len(tok):
        tok.add_tokens([f"<unused{i}>" for i in range(vocab - len(tok))])
    return processor


def build(args, seed: int = 0) -> Shape:
    """The model and processor of `args.shape`, on `args.device` in the bench's dtype, in eval mode."""
    dtype = dtype_of(args)
    if args.shape == "world":
        from vlalign.models.load import load

        model, processor = load("world:base", dtype="fp32" if dtype == torch.float32 else "bf16", device=args.device)
        return Shape("world", model, processor)
    if args.shape == "qwen3vl8b":
        return build_qwen3vl(args, dtype, seed)
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    sizes = REAL if args.real_size else CPU
    processor = world_processor(sizes["vocab"])
    tok = processor.tokenizer
    vision = CLIPVisionConfig(hidden_size=sizes["vision_hidden"], intermediate_size=sizes["vision_mlp"],
                              num_hidden_layers=sizes["vision_layers"], num_attention_heads=sizes["vision_heads"],
                              image_size=IMAGE, patch_size=PATCH, projection_dim=768)
    text = LlamaConfig(vocab_size=max(sizes["vocab"], len(tok)), hidden_size=sizes["hidden"],
                       intermediate_size=sizes["mlp"], num_hidden_layers=sizes["layers"],
                       num_attention_heads=sizes["heads"], num_key_value_heads=sizes["heads"],
                       max_position_embeddings=4096, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=processor.image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-2)
    return _random_weights(args, LlavaForConditionalGeneration, config, processor, dtype, seed)


def _random_weights(args, model_class, config, processor, dtype: torch.dtype, seed: int) -> Shape:
    """`model_class` of `config` with random weights on the bench's device, named by the shape."""
    torch.manual_seed(seed)
    with torch.device(args.device):
        model = model_class._from_config(config, dtype=dtype)
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(processor.tokenizer, key))
    return Shape(f"{args.shape}-real" if args.real_size else args.shape, model.eval(), processor)


# Qwen's turns, the newline between them put before a turn rather than after it, so that an answer's turn ends
# at <|im_end|>: TRL then scores the answer and <|im_end|>, the tokens vlalign scores (the world's words have no
# newline token to score)
QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if not loop.first %}\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><image><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>{% endfor %}"
    "{% if add_generation_prompt %}\n<|im_start|>assistant\n{% endif %}"
)


def build_qwen3vl(args, dtype: torch.dtype, seed: int = 0) -> Shape:
    """Qwen3-VL-8B's shape (`QWEN3_CPU` widths, or `QWEN3_REAL` with --real-size) over the world's words and
    Qwen's chat tokens, with the architecture's own processor at a fixed 512-px image."""
    from transformers import (
        Qwen2VLImageProcessorPil,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
        Qwen3VLProcessor,
    )

    from vlalign.models.processors import make_processor

    sizes = QWEN3_REAL if args.real_size else QWEN3_CPU
    tok = world_processor(sizes["vocab"]).tokenizer
    tok.add_special_tokens({"additional_special_tokens": ["<image>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                                                          "<|vision_end|>", "<|video_pad|>"]})
    tok.eos_token = "<|im_end|>"
    pixels = QWEN3_IMAGE * QWEN3_IMAGE
    image_processor = Qwen2VLImageProcessorPil(size={"shortest_edge": pixels, "longest_edge": pixels},
                                               patch_size=QWEN3_PATCH, temporal_patch_size=2, merge_size=QWEN3_MERGE)
    processor = make_processor(Qwen3VLProcessor, image_processor=image_processor, tokenizer=tok,
                               chat_template=QWEN3_CHAT_TEMPLATE)
    ids = tok.convert_tokens_to_ids
    half = sizes["head_dim"] // 2  # M-RoPE's T, H, W sections in the 8B's proportions (24, 20, 20 of 64)
    sections = [half - 2 * (half * 20 // 64), half * 20 // 64, half * 20 // 64]
    config = Qwen3VLConfig(
        vision_config=dict(depth=sizes["vision_layers"], hidden_size=sizes["vision_hidden"],
                           intermediate_size=sizes["vision_mlp"], num_heads=sizes["vision_heads"],
                           out_hidden_size=sizes["hidden"], patch_size=QWEN3_PATCH, spatial_merge_size=QWEN3_MERGE,
                           temporal_patch_size=2, num_position_embeddings=2304,
                           deepstack_visual_indexes=list(range(sizes["vision_layers"]))[-sizes["deepstack"]:]
                           if not args.real_size else [8, 16, 24]),
        text_config=dict(vocab_size=max(sizes["vocab"], len(tok)), hidden_size=sizes["hidden"],
                         intermediate_size=sizes["mlp"], num_hidden_layers=sizes["layers"],
                         num_attention_heads=sizes["heads"], num_key_value_heads=sizes["kv_heads"],
                         head_dim=sizes["head_dim"], max_position_embeddings=4096,
                         rope_parameters={"rope_type": "default", "rope_theta": 5000000.0, "mrope_section": sections,
                                          "mrope_interleaved": True},
                         pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_id=ids("<image>"), video_token_id=ids("<|video_pad|>"), vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return _random_weights(args, Qwen3VLForConditionalGeneration, config, processor, dtype, seed)


# ---- FLOPs ----

def flops(sizes: dict, prompt: int, answer: int, image_tokens: int = (IMAGE // PATCH) ** 2) -> dict[str, float]:
    """Forward FLOPs of one (prompt + answer) row: vision tower and projector, decoder layers (attention
    scores included, causal), LM head over every position."""
    tv, dv, d, t = image_tokens + 1, sizes["vision_hidden"], sizes["hidden"], prompt + answer
    vision = sizes["vision_layers"] * (2 * tv * (4 * dv * dv + 2 * dv * sizes["vision_mlp"]) + 2 * tv * tv * dv * 2)
    projector = 2 * image_tokens * (dv * d + d * d)
    decoder = sizes["layers"] * (2 * t * (4 * d * d + 3 * d * sizes["mlp"]) + 2 * t * t * d)
    head = 2 * t * d * sizes["vocab"]
    return {"vision": vision + projector, "decoder": decoder, "head": head}


def qwen3vl_flops(sizes: dict, prompt: int, answer: int,
                  patches: int = (QWEN3_IMAGE // QWEN3_PATCH) ** 2) -> dict[str, float]:
    """Forward FLOPs of one (prompt + answer) row of Qwen3-VL: the ViT (patch embedding over two frames,
    attention over the image's patches) and its main and DeepStack mergers, the decoder (grouped-query
    attention, scores causal), the LM head over every position."""
    tv, dv, d, t = patches, sizes["vision_hidden"], sizes["hidden"], prompt + answer
    merged = patches // QWEN3_MERGE**2
    vision = (sizes["vision_layers"] * (2 * tv * (4 * dv * dv + 2 * dv * sizes["vision_mlp"]) + 4 * tv * tv * dv)
              + 2 * tv * 3 * 2 * QWEN3_PATCH**2 * dv)
    mergers = (1 + sizes["deepstack"]) * 2 * merged * (16 * dv * dv + 4 * dv * d)
    q, kv = sizes["heads"] * sizes["head_dim"], sizes["kv_heads"] * sizes["head_dim"]
    decoder = sizes["layers"] * (2 * t * (2 * d * q + 2 * d * kv + 3 * d * sizes["mlp"]) + 2 * t * t * q)
    head = 2 * t * d * sizes["vocab"]
    return {"vision": vision + mergers, "decoder": decoder, "head": head}


def flop_shares(sizes: dict, prompt: int, answer: int, count=flops) -> str:
    f = count(sizes, prompt, answer)
    total = sum(f.values())
    return " ".join(f"{k} {100 * v / total:.1f}%" for k, v in f.items())


def describe_shapes(prompt: int, answer: int, shape: str = "llava7b") -> str:
    if shape == "qwen3vl8b":
        return (f"FLOP shares of one row (P={prompt}, A={answer}): 8B "
                f"{flop_shares(QWEN3_REAL, prompt, answer, qwen3vl_flops)}; CPU shape "
                f"{flop_shares(QWEN3_CPU, prompt, answer, qwen3vl_flops)}")
    return (f"FLOP shares of one row (P={prompt}, A={answer}): 7B {flop_shares(REAL, prompt, answer)}; "
            f"CPU shape {flop_shares(CPU, prompt, answer)}")


# ---- data ----

LONG_INSTRUCTION = ("describe the image in detail . name every object you see , say its color , its size and "
                    "where it is in the image , and say which objects are next to each other or above each other .")


def answer_lengths(text: str) -> tuple[int, int]:
    """`--answers`: "150" (every answer about 150 tokens) or "50-300" (each drawn uniformly in that range)."""
    low, _, high = text.partition("-")
    bounds = (int(low), int(high or low))
    if not 0 < bounds[0] <= bounds[1]:
        raise SystemExit(f"--answers takes N or LOW-HIGH tokens with 0 < LOW <= HIGH, got {text!r}")
    return bounds


def texts(shape: Shape, n: int, seed: int = 0, answers: tuple[int, int] = (ANSWER_TOKENS, ANSWER_TOKENS)
          ) -> tuple[list, list[str], list[str], list[str]]:
    """n (image, instruction, chosen, rejected): the world's describe prompts on the world shape; on llava7b
    a 40-token instruction and answers of `answers` tokens (world descriptions strung together; a length is
    drawn uniformly in the range for each answer)."""
    from vlalign.world.render import render
    from vlalign.world.scene import sample_scene
    from vlalign.world.text import DESCRIBE_INSTRUCTIONS, caption, describe

    rng = np.random.default_rng(seed)
    images, instructions, chosen, rejected = [], [], [], []
    tok = shape.processor.tokenizer
    for i in range(n):
        scene = sample_scene(i, "prompts")
        images.append(render(scene, shape.image_size))
        if shape.name == "world":
            instructions.append(DESCRIBE_INSTRUCTIONS[i % len(DESCRIBE_INSTRUCTIONS)])
            chosen.append(describe(scene, rng))
            rejected.append(caption(sample_scene(1000 + i, "prompts"), rng, hallucination=0.5))
            continue
        instructions.append(LONG_INSTRUCTION)
        for out, offset in ((chosen, 0), (rejected, 5000)):
            target = answers[0] if answers[0] == answers[1] else int(rng.integers(answers[0], answers[1] + 1))
            words: list[str] = []
            k = 0
            while len(tok(" ".join(words), add_special_tokens=False)["input_ids"]) < target:
                words += describe(sample_scene(offset + i * 50 + k, "prompts"), rng).split()
                k += 1
            while len(tok(" ".join(words[:-1]), add_special_tokens=False)["input_ids"]) >= target:
                words.pop()
            out.append(" ".join(words))
    return images, instructions, chosen, rejected


def token_counts(processor, images, instructions, answers) -> tuple[float, float]:
    """Mean prompt tokens (image tokens included) and mean answer tokens (with EOS) of a batch."""
    from vlalign.models.batching import IGNORE, encode

    batch = encode(processor, images, instructions, answers)
    answer = (batch["labels"] != IGNORE).sum(-1).float()
    total = batch["attention_mask"].sum(-1).float()
    return float((total - answer).mean()), float(answer.mean())


# ---- measuring ----

class Clock:
    """Wall time around a callable, synchronised on CUDA: the fastest of `repeats` calls (as timeit takes), so
    that the allocator's first growth to a path's shapes is not charged to whichever path runs first."""

    def __init__(self, device: str, repeats: int = 1):
        self.cuda, self.repeats = device.startswith("cuda"), max(1, repeats)

    def __call__(self, fn, *a, **k):
        best = float("inf")
        for _ in range(self.repeats):
            if self.cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*a, **k)
            if self.cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return out, best


def rss_gib() -> float:
    """This process's current resident set (Linux)."""
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def emit(result: dict) -> None:
    """A child run's result, as the last line of its output (the parent reads it)."""
    print("RESULT " + json.dumps(result), flush=True)


def read_result(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"the child run printed no result:\n{output[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


# ---- whole processes ----

@dataclass(frozen=True)
class Process:
    """A finished child process as `/usr/bin/time -v` saw it: wall-clock seconds and peak resident set."""

    stdout: str
    stderr: str
    wall_s: float
    peak_rss_gib: float


def timed_process(argv: list[str], env: dict[str, str] | None = None, what: str = "the child") -> Process:
    """Run `argv` under GNU time (`/usr/bin/time -v`), with the environment as given (glibc's default
    allocator unless the caller's environment says otherwise), and read its figures."""
    out = subprocess.run(["/usr/bin/time", "-v", *argv], capture_output=True, text=True, env=env)
    if out.returncode:
        raise SystemExit(f"{what} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time .*: (?:(\d+):)?(\d+):([\d.]+)", out.stderr)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr)
    if wall is None or rss is None:
        raise RuntimeError(f"no figures from /usr/bin/time -v in:\n{out.stderr[-2000:]}")
    hours, minutes, seconds = wall.groups()
    return Process(out.stdout, out.stderr, int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds),
                   int(rss.group(1)) / 2**20)


# ---- live tensors ----

def tensor_bytes() -> int:
    """Bytes of the storages of every tensor Python can reach now (parameters, their gradients, optimizer
    state, cached inputs), each storage once."""
    seen: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance on some deprecated module attributes warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        for t in (obj, obj.grad if isinstance(obj, torch.nn.Parameter) else None):
            if t is not None and t.device.type == "cpu" and not t.is_sparse:
                storage = t.untyped_storage()
                seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


class LiveTensors:
    """The peak bytes held by CPU tensors over a window (one training step): those alive when it opens
    (`tensor_bytes`) plus the highest running sum of the allocations and frees the profiler records inside
    it. It is what the step's tensors need, whatever the allocator keeps on top (that shows in RSS)."""

    def __init__(self):
        self.start = 0
        self.profiler = None

    def open(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        self.start = tensor_bytes()
        self.profiler = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self.profiler.__enter__()

    def close(self) -> float:
        """The window's peak in GiB."""
        self.profiler.__exit__(None, None, None)
        events = [e for e in self.profiler.profiler.kineto_results.events()
                  if e.name() == "[memory]" and e.device_type().name == "CPU"]
        running = peak = 0
        for e in sorted(events, key=lambda e: e.start_ns()):
            running += e.nbytes()
            peak = max(peak, running)
        return (self.start + peak) / 2**30
