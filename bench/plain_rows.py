"""The plain paths, one row per (prompt, text), kept only as the reference that the equality tests and the
benchmarks compare the shared-prefix paths with (`vlalign.models.prefix`); nothing in vlalign uses them.

- `sequence_logps`: every (image, instruction, answer) its own row, the prompt forwarded once per answer;
- `yes_probability`: one full forward per question (the image encoded again for each);
- `rlaif_v_yes_probability`: RLAIF-V's labeler, one `generate` call per question at batch 1, reading the
  first token's yes / no scores;
- `generate`: one prefill per sample (the prompt repeated in every row of `model.generate`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from vlalign.models.batching import chat_prompt, encode, model_inputs, to_device
from vlalign.models.generate import SeededGumbel, _new_tokens
from vlalign.models.scoring import NO_WORDS, YES_WORDS, answer_token_ids, logits_at
from vlalign.models.scoring import sequence_logps as _row_logps
from vlalign.models.settings import Decoding


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


def sequence_logps(model, processor, images, instructions, answers, batch_size: int = 16) -> torch.Tensor:
    """Summed answer log-probs, one row per answer (differentiable when grad is on)."""
    device, dtype = _device_dtype(model)
    out = []
    for s in range(0, len(answers), batch_size):
        batch = encode(processor, images[s:s + batch_size], instructions[s:s + batch_size], answers[s:s + batch_size])
        out.append(_row_logps(model, to_device(batch, device, dtype))[0])
    return torch.cat(out)


def _p_yes(probs: torch.Tensor, yes: torch.Tensor, no: torch.Tensor) -> torch.Tensor:
    p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
    return p_yes / (p_yes + p_no).clamp(min=1e-12)


@torch.no_grad()
def yes_probability(model, processor, images, questions, batch_size: int = 32) -> list[float]:
    """P(yes) from one full forward per question (batched rows, each with its image)."""
    device, dtype = _device_dtype(model)
    yes = torch.tensor(answer_token_ids(processor.tokenizer, YES_WORDS), device=device)
    no = torch.tensor(answer_token_ids(processor.tokenizer, NO_WORDS), device=device)
    out: list[float] = []
    for s in range(0, len(questions), batch_size):
        batch = to_device(encode(processor, images[s:s + batch_size], questions[s:s + batch_size]), device, dtype)
        last = batch["attention_mask"].sum(-1) - 1
        positions, row_position = torch.unique(last, return_inverse=True)
        logits = logits_at(model, model_inputs(batch), positions)
        probs = logits[torch.arange(len(last), device=device), row_position].float().softmax(-1)
        out.extend(_p_yes(probs, yes, no).tolist())
    return out


@torch.no_grad()
def rlaif_v_yes_probability(model, processor, images, questions) -> list[float]:
    """RLAIF-V's way: `generate` one token per question at batch 1 and read its yes / no scores."""
    device, dtype = _device_dtype(model)
    tok = processor.tokenizer
    yes = torch.tensor(answer_token_ids(tok, YES_WORDS), device=device)
    no = torch.tensor(answer_token_ids(tok, NO_WORDS), device=device)
    out = []
    for image, question in zip(images, questions, strict=True):
        enc = processor(images=[[image]], text=[chat_prompt(processor, question)], return_tensors="pt")
        enc = to_device(dict(enc), device, dtype)
        gen = model.generate(**enc, max_new_tokens=1, do_sample=False, output_scores=True, return_dict_in_generate=True,
                             pad_token_id=tok.pad_token_id, temperature=None, top_p=None, top_k=None)
        out.append(float(_p_yes(gen.scores[0].float().softmax(-1), yes, no)[0]))
    return out


@torch.no_grad()
def generate(model, processor, images, instructions, decoding: Decoding, seeds: Sequence[int] | None = None,
             batch_size: int = 64) -> list[str]:
    """Today's sampling before the shared prefill: each row's prompt prefilled on its own."""
    device, dtype = _device_dtype(model)
    tok = processor.tokenizer
    out: list[str] = []
    for s in range(0, len(instructions), batch_size):
        texts = [chat_prompt(processor, q) for q in instructions[s:s + batch_size]]
        enc = processor(images=[[im] for im in images[s:s + batch_size]], text=texts, return_tensors="pt",
                        padding=True, padding_side="left")
        enc = to_device(dict(enc), device, dtype)
        processors = LogitsProcessorList()
        if seeds is not None:
            processors.append(TemperatureLogitsWarper(decoding.temperature))
            if decoding.top_p < 1:
                processors.append(TopPLogitsWarper(decoding.top_p))
            processors.append(SeededGumbel(seeds[s:s + batch_size], device))
        ids = model.generate(**enc, max_new_tokens=_new_tokens(processor, decoding, enc["input_ids"].shape[1]),
                             do_sample=False, logits_processor=processors, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id, temperature=None, top_p=None, top_k=None)
        out.extend(t.strip() for t in tok.batch_decode(ids[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out
