"""Score text under a VLM: per-sequence log-probs of a response, and P(yes) of a yes/no question."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from vlalign.models import prefix
from vlalign.models.batching import IGNORE, model_inputs, pad_id, to_device


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits).gather(-1, index), one row at a time so a 150k vocabulary fits in memory."""
    return torch.stack([prefix.token_logps(row, row_index) for row, row_index in zip(logits, index, strict=True)])


def logits_at(model, inputs: dict[str, torch.Tensor], positions: torch.Tensor) -> torch.Tensor:
    """The logits at sequence `positions` (1-D, the same for every row) only: the LM head never runs over the
    prompt (hundreds of image tokens) or builds a full-vocabulary tensor for it."""
    try:
        return model(**inputs, logits_to_keep=positions).logits
    except TypeError:  # a model without logits_to_keep: the full logits, then the positions
        return model(**inputs).logits[:, positions]


def token_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each labelled token and the mask of labelled tokens, both shaped (B, L-1). Logits are
    computed only over the window of the batch's answer tokens (from the earliest answer start on); the
    log-probs are laid out over the whole row again, so sums reduce exactly as over full logits."""
    labels = batch["labels"][:, 1:]
    mask = labels != IGNORE
    answered = mask.any(0).nonzero()
    first = int(answered[0]) if len(answered) else labels.shape[1] - 1
    logits = logits_at(model, model_inputs(batch), torch.arange(first, labels.shape[1], device=labels.device))
    window = selective_log_softmax(logits, labels[:, first:].clamp(min=0))
    logps = torch.cat([window.new_zeros(len(labels), first), window], dim=1)
    return logps * mask, mask


def sequence_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of response-token log-probs per row, and the number of response tokens per row."""
    logps, mask = token_logps(model, batch)
    return logps.sum(-1), mask.sum(-1)


@dataclass
class ResponseScore:
    sum_logp: float
    mean_logp: float
    n_tokens: int


def _device_dtype(model) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters())
    return p.device, p.dtype


@torch.no_grad()
def score_responses(model, processor, images: Sequence[Image.Image], instructions: Sequence[str],
                    responses: Sequence[str], batch_size: int = 16) -> list[ResponseScore]:
    """Sum and mean log-prob of each response given its image and instruction. Responses to the same prompt
    (best-of-N's samples) continue one forward of it (`vlalign.models.prefix`); `batch_size` responses a pass."""
    device, dtype = _device_dtype(model)
    keys = prefix.images_keys(images)
    groups = prefix.group_by([(k, q) for k, q in zip(keys, instructions, strict=True)])

    def make(members: list[int], slots: list[int]) -> list[prefix.Prefixed]:
        i = members[0]
        return [prefix.answers_group(processor, images[i], instructions[i], [responses[m] for m in members], slots)]

    def score(batch: dict) -> torch.Tensor:
        total, count = prefix.continuation_logps(model, to_device(batch, device, dtype))
        return torch.stack([total, count], -1).cpu()

    scored = prefix.run_grouped(groups, batch_size, make, score, pad_id(processor), prefix.shares_prefix(model))
    out = []
    for i in range(len(responses)):
        total, count = scored[i].tolist()
        out.append(ResponseScore(total, total / max(count, 1), int(count)))
    return out


def answer_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """First-token ids of each word as an answer may begin with it (with and without a leading space)."""
    ids: set[int] = set()
    for w in words:
        for variant in (w, " " + w):
            enc = tokenizer(variant, add_special_tokens=False)["input_ids"]
            if enc and enc[0] != tokenizer.unk_token_id:
                ids.add(enc[0])
    if not ids:
        raise ValueError(f"none of {list(words)} is a token of this tokenizer")
    return sorted(ids)


YES_WORDS = ("yes", "Yes")
NO_WORDS = ("no", "No")


@torch.no_grad()
def yes_probability(model, processor, images: Sequence[Image.Image], questions: Sequence[str],
                    batch_size: int = 32) -> list[float]:
    """P(yes) / (P(yes) + P(no)) for each question, from the next-token distribution after it (no generation).
    "Yes" and "yes" count together, as RLAIF-V's labeler does. The questions about one image share one
    forward of it: its prompt up to the question is read once, each question continues it
    (`vlalign.models.prefix`); `batch_size` questions a pass."""
    device, dtype = _device_dtype(model)
    yes = torch.tensor(answer_token_ids(processor.tokenizer, YES_WORDS), device=device)
    no = torch.tensor(answer_token_ids(processor.tokenizer, NO_WORDS), device=device)
    groups = prefix.group_by(prefix.images_keys(images))

    def make(members: list[int], slots: list[int]) -> list[prefix.Prefixed]:
        return prefix.questions_groups(processor, images[members[0]], [questions[m] for m in members], slots)

    def score(batch: dict) -> torch.Tensor:
        probs = prefix.last_logits(model, to_device(batch, device, dtype)).float().softmax(-1)
        p_yes, p_no = probs[:, yes].sum(-1), probs[:, no].sum(-1)
        return (p_yes / (p_yes + p_no).clamp(min=1e-12)).cpu()

    scored = prefix.run_grouped(groups, batch_size, make, score, pad_id(processor), prefix.shares_prefix(model))
    return [float(scored[i]) for i in range(len(questions))]
