"""Batched generation with one recorded seed per sample.

Sampling draws Gumbel noise from a per-row generator seeded by that sample's seed and then takes the
argmax, which is an exact draw from the temperature / top-p distribution. So a sample depends on its
seed, the model and the prompt only, not on what else shared its batch: n samples of one prompt differ
by seed alone, as RLAIF-V's deconfounded sampling asks.

`generate_detailed` also gives each answer's tokens with their log-probs and the likeliest alternatives
(from the model's raw distribution, before temperature and top-p, as vLLM reports them), which is what a
server needs for `logprobs` / `top_logprobs`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StaticCache,
    TemperatureLogitsWarper,
    TopPLogitsWarper,
)

from vlalign.models import prefix
from vlalign.models.batching import TEXT_KEYS, chat_prompt, max_length, to_device
from vlalign.models.settings import Decoding
from vlalign.progress import progress


class SeededGumbel(LogitsProcessor):
    """Add Gumbel(0, 1) noise drawn from one generator per row; greedy decoding then samples."""

    def __init__(self, seeds: Sequence[int], device: torch.device):
        self.generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        self.device = device

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        vocab = scores.shape[-1]
        u = torch.stack([torch.rand(vocab, generator=g) for g in self.generators]).to(self.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
        return scores.float() + gumbel


def _has_images(images: Sequence[Image.Image | None]) -> bool:
    """True when every row has an image, False when none has; a batch must not mix the two."""
    present = [im is not None for im in images]
    if any(present) and not all(present):
        raise ValueError("a generation batch mixes rows with and without an image; group them first")
    return bool(present) and present[0]


@dataclass(frozen=True)
class Generation:
    """One answer and, when asked for, its tokens as (token, log-prob, the likeliest (token, log-prob) pairs).
    `prompt_tokens` counts the prompt as the model read it (image tokens included), `completion_tokens` the
    tokens generated (the end-of-sequence token included, as vLLM counts); `finish_reason` is "length" when
    the answer was cut by its token limit, "stop" when the model ended it."""

    text: str
    tokens: tuple[tuple[str, float, tuple[tuple[str, float], ...]], ...] | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "stop"


def generate(model, processor, images: Sequence[Image.Image | None], instructions: Sequence[str],
             decoding: Decoding = Decoding(), seeds: Sequence[int] | None = None,
             batch_size: int = 64, description: str | None = None) -> list[str]:
    """One answer per (image, instruction); with temperature > 0 `seeds` (one per row) is required.
    An image of None asks without one (a batch must be all with or all without; `batch_size` chunks).
    With `description`, a progress bar of that name counts the answers."""
    return [g.text for g in generate_detailed(model, processor, images, instructions, decoding, seeds, batch_size,
                                              description)]


@torch.no_grad()
def generate_detailed(model, processor, images: Sequence[Image.Image | None], instructions: Sequence[str],
                      decoding: Decoding = Decoding(), seeds: Sequence[int] | None = None, batch_size: int = 64,
                      description: str | None = None, top_logprobs: int | None = None) -> list[Generation]:
    """`generate`, keeping each answer's token log-probs with `top_logprobs` alternatives when that is set."""
    if len(images) != len(instructions):
        raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
    sampling = decoding.temperature > 0
    if sampling and (seeds is None or len(seeds) != len(instructions)):
        raise ValueError("sampling needs one seed per row: pass seeds=[...] of the same length")
    out: list[Generation] = []
    with progress(description or "", total=len(instructions), disable=description is None) as bar:
        for s in range(0, len(instructions), batch_size):
            out.extend(_generate_chunk(model, processor, images[s:s + batch_size], instructions[s:s + batch_size],
                                       decoding, seeds[s:s + batch_size] if sampling else None, top_logprobs))
            bar.advance(min(batch_size, len(instructions) - s))
    return out


def _generate_chunk(model, processor, images: Sequence[Image.Image | None], instructions: Sequence[str],
                    decoding: Decoding, seeds: Sequence[int] | None, top_logprobs: int | None = None) -> list[Generation]:
    """One padded batch through `model.generate`, each sampled row with its own seeded noise. Rows that ask
    the same (image, instruction) share one prefill of it: the prompt is run once, its key/value cache copied
    to each of its rows, and `generate` goes on from there (a sample still depends on its seed only)."""
    p = next(model.parameters())
    tok = processor.tokenizer
    images = list(images)
    with_images = _has_images(images)
    texts = [chat_prompt(processor, q, with_image=with_images) for q in instructions]
    keys = prefix.images_keys(images) if with_images else [None] * len(texts)
    groups = prefix.group_by(list(zip(keys, texts, strict=True)))
    firsts = [g[0] for g in groups]
    enc = processor(images=[[images[i]] for i in firsts] if with_images else None, text=[texts[i] for i in firsts],
                    return_tensors="pt", padding=True, padding_side="left")
    enc = to_device(dict(enc), p.device, p.dtype)
    row_of = torch.zeros(len(texts), dtype=torch.long)
    for g, members in enumerate(groups):
        row_of[members] = g
    rows = row_of.to(p.device)
    cache, positions = _prefill(model, enc)
    cache.reorder_cache(rows)
    length = enc["input_ids"].shape[1]
    max_new = _new_tokens(processor, decoding, length)
    cache = _preallocated(model, cache, length + max_new)
    text_inputs = {k: enc[k][rows] for k in ("input_ids", "attention_mask", *prefix.TOKEN_TYPES) if k in enc}
    processors = LogitsProcessorList()
    if seeds is not None:
        processors.append(TemperatureLogitsWarper(decoding.temperature))
        if decoding.top_p < 1:
            processors.append(TopPLogitsWarper(decoding.top_p))
        processors.append(SeededGumbel(seeds, p.device))
    scored = top_logprobs is not None
    out = model.generate(
        **text_inputs, position_ids=positions.index_select(positions.dim() - 2, rows), cache=cache,
        max_new_tokens=max_new, do_sample=False, logits_processor=processors,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None,
        output_logits=scored, return_dict_in_generate=scored,
    )
    ids = out.sequences if scored else out
    texts = [t.strip() for t in tok.batch_decode(ids[:, length:], skip_special_tokens=True)]
    counts = _counts(tok, ids[:, length:], enc["attention_mask"][rows].sum(-1).tolist(), max_new)
    tokens = (_token_logprobs(tok, ids[:, length:], torch.stack(out.logits, 1), top_logprobs) if scored
              else [None] * len(texts))
    return [Generation(t, k, *c) for t, k, c in zip(texts, tokens, counts, strict=True)]


def _counts(tok, new_ids: torch.Tensor, prompt_lengths: list[int], max_new: int) -> list[tuple[int, int, str]]:
    """(prompt tokens, completion tokens, finish reason) of each row: an answer that never reached the end of
    sequence within `max_new` tokens was cut ("length")."""
    stop = {tok.eos_token_id, tok.pad_token_id} - {None}
    out = []
    for prompt, row in zip(prompt_lengths, new_ids.tolist(), strict=True):
        end = next((j for j, token_id in enumerate(row) if token_id in stop), None)
        if end is None:
            out.append((int(prompt), len(row), "length" if len(row) >= max_new else "stop"))
        else:
            out.append((int(prompt), end + (row[end] == tok.eos_token_id), "stop"))
    return out


def _token_logprobs(tok, new_ids: torch.Tensor, logits: torch.Tensor, top: int) -> list[tuple]:
    """Each row's generated tokens (up to its end-of-sequence) as (token, log-prob, top alternatives)."""
    logps = logits.float().log_softmax(-1)
    best = logps.topk(min(top, logps.shape[-1]), dim=-1) if top else None
    stop = {tok.eos_token_id, tok.pad_token_id} - {None}
    rows = []
    for r, row in enumerate(new_ids.tolist()):
        steps = []
        for j, token_id in enumerate(row):
            if token_id in stop:
                break
            alternatives = () if best is None else tuple(
                (tok.decode([int(i)]), float(v)) for v, i in zip(best.values[r, j], best.indices[r, j], strict=True))
            steps.append((tok.decode([token_id]), float(logps[r, j, token_id]), alternatives))
        rows.append(tuple(steps))
    return rows


def _prefill(model, enc: dict[str, torch.Tensor]):
    """The key/value cache of every prompt but its last token (which `generate` then reads from the cache, so
    no image is encoded twice), and the positions `generate` would give the whole prompts."""
    positions = model._prepare_position_ids_for_generation(enc["input_ids"], dict(enc))
    inputs = {k: (v[..., :-1] if k in TEXT_KEYS else v) for k, v in enc.items()}
    out = model(**inputs, position_ids=positions[..., :-1], use_cache=True, logits_to_keep=1)
    return out.cache, positions


def _preallocated(model, cache, size: int):
    """The prefill's cache copied into one of `size` positions allocated at once (transformers' StaticCache).
    A dynamic cache grows by concatenation, copying itself whole at every new token, which is a large part
    of sampling long answers; the samples are the same. Models with sliding-window layers keep the dynamic
    cache (their static layers keep another layout)."""
    text = model.config.get_text_config(decoder=True)
    if any(kind != "full_attention" for kind in getattr(text, "layer_types", None) or ()):
        return cache
    static = StaticCache(config=model.config, max_cache_len=size)
    for layer, filled in zip(static.layers, cache.layers, strict=True):
        filled_positions = torch.arange(filled.keys.shape[-2], device=filled.keys.device)
        layer.update(filled.keys, filled.values, cache_kwargs={"cache_position": filled_positions})
    return static


def _new_tokens(processor, decoding: Decoding, prompt_length: int) -> int:
    """`decoding.max_new_tokens`, cut so that no row outgrows the run's max_length."""
    limit = max_length(processor)
    if limit is None:
        return decoding.max_new_tokens
    if prompt_length >= limit:
        raise ValueError(f"prompts of {prompt_length} tokens (image tokens included) leave no room for an answer "
                         f"under max_length {limit}; raise runtime.max_length")
    return min(decoding.max_new_tokens, limit - prompt_length)


def sample_seed(base_seed: int, record_id: str, index: int) -> int:
    """A stable seed for sample `index` of record `record_id`, independent of batching and order."""
    digest = hashlib.sha256(f"{base_seed}:{record_id}:{index}".encode()).digest()
    return int.from_bytes(digest[:7], "little")
