"""Turn (image, instruction, response) triples into model batches for any supported VLM.

Each prompt goes through the processor's own chat template and image handling (so image tokens expand
the way the architecture expects); the response is tokenized separately and appended, and only its
tokens are labelled. Rows are right-padded, so positions match an unpadded forward pass exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

IGNORE = -100
TEXT_KEYS = ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "token_type_ids")


def chat_prompt(processor, instruction: str, with_image: bool = True) -> str:
    """The prompt text up to the assistant's turn, in the model's own chat format (with the run's system
    prompt, when it set one: `vlalign.models.processors.configure`)."""
    content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": instruction}]
    system = getattr(processor, "vlalign_system_prompt", None)
    messages = [{"role": "system", "content": [{"type": "text", "text": system}]}] if system else []
    return processor.apply_chat_template(
        [*messages, {"role": "user", "content": content}], add_generation_prompt=True, tokenize=False
    )


def max_length(processor) -> int | None:
    """The longest row a run allows (`Runtime.max_length`), or None."""
    return getattr(processor, "vlalign_max_length", None)


def encode_prompt_row(processor, image: Image.Image, instruction: str) -> dict[str, torch.Tensor]:
    """The processor's output (a batch of one) for one prompt. Under `Runtime.max_prompt_length` a prompt
    that is longer loses the first tokens of its instruction (TRL's keep_end), never an image token or the
    chat template's; a prompt too long even without its instruction is an error naming the setting."""
    enc = processor(images=[image], text=[chat_prompt(processor, instruction)], return_tensors="pt")
    limit = getattr(processor, "vlalign_max_prompt_length", None)
    length = enc["input_ids"].shape[1]
    if limit is None or length <= limit:
        return enc
    tok = processor.tokenizer
    ids = tok(instruction, add_special_tokens=False)["input_ids"]
    excess = length - limit
    for _ in range(3):  # decoding and encoding again may shift a token or two
        if excess >= len(ids):
            raise ValueError(f"a prompt of {length} tokens holds {length - len(ids)} besides its instruction (image "
                             f"tokens and the chat template), more than max_prompt_length {limit}; raise "
                             f"runtime.max_prompt_length")
        enc = processor(images=[image], text=[chat_prompt(processor, tok.decode(ids[excess:]))], return_tensors="pt")
        if enc["input_ids"].shape[1] <= limit:
            return enc
        excess += enc["input_ids"].shape[1] - limit
    raise ValueError(f"the instruction {instruction[:60]!r} cannot be cut to fit max_prompt_length {limit}")


def _pad_cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding the other dims where shapes differ (e.g. Idefics3 tiles)."""
    shapes = {tuple(t.shape[1:]) for t in tensors}
    if len(shapes) == 1:
        return torch.cat(tensors, dim=0)
    target = [max(s[d] for s in shapes) for d in range(len(next(iter(shapes))))]
    padded = []
    for t in tensors:
        out = t.new_zeros((t.shape[0], *target))
        out[(slice(None), *(slice(0, n) for n in t.shape[1:]))] = t
        padded.append(out)
    return torch.cat(padded, dim=0)


def encode(processor, images: Sequence[Image.Image], instructions: Sequence[str],
           responses: Sequence[str] | None = None, add_eos: bool = True) -> dict[str, torch.Tensor]:
    """A right-padded batch. With `responses`, `labels` marks the response tokens (and EOS) only."""
    if responses is not None and len(responses) != len(instructions):
        raise ValueError(f"got {len(instructions)} instructions but {len(responses)} responses")
    if len(images) != len(instructions):
        raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
    tok = processor.tokenizer
    rows: list[dict[str, torch.Tensor]] = []
    for i, (image, instruction) in enumerate(zip(images, instructions, strict=True)):
        enc = encode_prompt_row(processor, image, instruction)
        ids = enc["input_ids"][0]
        labels = torch.full_like(ids, IGNORE)
        if responses is not None:
            resp = tok(responses[i], add_special_tokens=False)["input_ids"]
            if add_eos and tok.eos_token_id is not None:
                resp = [*resp, tok.eos_token_id]
            resp = resp[:_room(processor, len(ids))]
            resp_t = torch.tensor(resp, dtype=ids.dtype)
            ids = torch.cat([ids, resp_t])
            labels = torch.cat([labels, resp_t])
        row = {k: v for k, v in enc.items() if k not in TEXT_KEYS}
        row["input_ids"], row["labels"] = ids, labels
        if "mm_token_type_ids" in enc or "token_type_ids" in enc:
            key = "mm_token_type_ids" if "mm_token_type_ids" in enc else "token_type_ids"
            tt = enc[key][0]
            row[key] = torch.cat([tt, tt.new_zeros(len(ids) - len(tt))])
        rows.append(row)
    return collate(rows, pad_id=pad_id(processor))


def pad_id(processor) -> int:
    """The token that pads a batch: the tokenizer's pad token, else 0 (masked out either way)."""
    tok = processor.tokenizer
    return tok.pad_token_id if tok.pad_token_id is not None else 0


def _room(processor, prompt_length: int) -> int | None:
    """How many answer tokens (EOS included) fit after a prompt of `prompt_length` tokens: what max_length
    leaves, at most max_completion_length (None: no limit). A prompt that leaves no room is an error."""
    limit, longest = max_length(processor), getattr(processor, "vlalign_max_completion_length", None)
    if limit is None:
        return longest
    if prompt_length >= limit:
        raise ValueError(f"a prompt of {prompt_length} tokens (image tokens included) leaves no room for an "
                         f"answer under max_length {limit}; raise runtime.max_length")
    return limit - prompt_length if longest is None else min(longest, limit - prompt_length)


def collate(rows: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    length = max(len(r["input_ids"]) for r in rows)
    n = len(rows)
    batch = {
        "input_ids": torch.full((n, length), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((n, length), dtype=torch.long),
        "labels": torch.full((n, length), IGNORE, dtype=torch.long),
    }
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in rows[0]:
            batch[key] = torch.zeros((n, length), dtype=torch.long)
    for i, r in enumerate(rows):
        m = len(r["input_ids"])
        batch["input_ids"][i, :m] = r["input_ids"]
        batch["attention_mask"][i, :m] = 1
        batch["labels"][i, :m] = r["labels"]
        for key in ("mm_token_type_ids", "token_type_ids"):
            if key in r:
                batch[key][i, :m] = r[key]
    for key in rows[0]:
        if key not in batch:
            batch[key] = _pad_cat([r[key] for r in rows])
    return batch


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the model's forward takes: everything but the labels."""
    return {k: v for k, v in batch.items() if k != "labels"}


def to_device(batch: dict[str, torch.Tensor], device: torch.device | str,
              dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """Move a batch; image tensors (pixel_*) take the model's dtype, other floats keep theirs."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):  # a nested batch (POVID's clean and noisy rows) moves the same way
            out[k] = to_device(v, device, dtype)
            continue
        v = v.to(device)
        if dtype is not None and v.is_floating_point() and "pixel" in k:
            v = v.to(dtype)
        out[k] = v
    return out
