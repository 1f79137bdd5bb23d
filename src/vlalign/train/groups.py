"""Groups as training reads them, and the group-relative policy gradient over them (GRPO and its variants).

A group is one prompt and the n answers the policy sampled for it, each with its advantage (its reward
against the group's, computed once per rollout: `vlalign.feedback.groups.advantages`) and, where the loss
needs them, the per-token log-probs of the policy that sampled it (`old`, for the clipped ratio when a
rollout trains over several steps) and of the KL reference (`ref`), both computed before training by a
stage of the round. A batch holds one row per group: the prompt (image and instruction) forwarded once,
its n answers continuing it (`vlalign.models.prefix`), so the policy reads the image once per group where
a row per answer reads it n times.

The loss is TRL GRPOTrainer's per-token loss (tests check it on the same inputs, variant by variant):
    -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) + kl * (exp(ref - logp) - (ref - logp) - 1)
with r = exp(logp - old) per token (or one ratio per answer), averaged per answer then over answers
(`sequence`), over the batch's tokens (`token`), or summed over answers x max_new_tokens (`constant`).
Under a launcher the averages run over the whole global batch (the counts are summed over processes), so
the gradients are one process's on the same batch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from vlalign.models import prefix
from vlalign.models.batching import pad_id, to_device
from vlalign.train.examples import _Decoded
from vlalign.train.loop import Collate, LossFn
from vlalign.train.settings import PolicyGradientConfig

Logps = tuple[tuple[float, ...], ...]  # per answer, per token


@dataclass(repr=False)
class GroupExample:
    """One prompt's scored answers. `image` is a picture or a function that decodes it (read per batch)."""

    id: str
    image: _Decoded = _Decoded()  # required, as in PreferenceExample (the descriptor's default raises)
    instruction: str  # type: ignore[misc]
    answers: tuple[str, ...]  # type: ignore[misc]
    advantages: tuple[float, ...]  # type: ignore[misc]
    old: Logps | None = None  # the sampling policy's per-token log-probs (None: each rollout trains one step)
    ref: Logps | None = None  # the KL reference's (None: no KL term)

    def __post_init__(self) -> None:
        n = len(self.answers)
        if n < 1 or len(self.advantages) != n or any(x is not None and len(x) != n for x in (self.old, self.ref)):
            raise ValueError(f"group {self.id}: {n} answers need as many advantages and log-prob rows")

    def digest(self) -> str:
        """What the group trains on (a checkpoint of another group set is never resumed)."""
        blob = json.dumps([self.instruction, self.answers, self.advantages, self.old, self.ref])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"GroupExample(id={self.id!r}, answers={len(self.answers)})"


Group = tuple[Image.Image, str, Sequence[str]]  # image, instruction, answers


def group_rows(processor, groups: Sequence[Group], shared: bool = True) -> dict:
    """One packed batch: each group's prompt once, its answers continuing it, slots numbered over all answers
    in order (so the scored tokens run answer by answer, group by group)."""
    rows, slot = [], 0
    for image, instruction, answers in groups:
        rows.append(prefix.answers_group(processor, image, instruction, answers, range(slot, slot + len(answers))))
        slot += len(answers)
    return prefix.collate(rows, pad_id(processor), shared)


def answer_logps(model, batch: dict, temperature: float = 1.0) -> torch.Tensor:
    """Every answer token's log-prob under the sampling distribution (the logits over `temperature`, as TRL
    scores them), in packing order."""
    logits = prefix.token_logits(model, batch)
    return prefix.token_logps(logits / temperature if temperature != 1.0 else logits, batch["packing"]["target"])


@torch.no_grad()
def group_logps(model, processor, groups: Sequence[Group], temperature: float = 1.0) -> list[list[float]]:
    """Per answer, group by group, its per-token log-probs under `model`: the rows training reads, forwarded
    once (each group's prompt once) in eval mode."""
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    batch: dict = to_device(group_rows(processor, groups, prefix.shares_prefix(model)), p.device, p.dtype)
    packing = batch["packing"]
    logps = answer_logps(model, batch, temperature).float().cpu()
    model.train(was_training)
    slots = packing["slot"].cpu()
    out: list[list[float]] = [[] for _ in range(len(packing["last_row"]))]
    for s, v in zip(slots.tolist(), logps.tolist(), strict=True):
        out[s].append(v)
    return out


def _flat(rows: list[Logps], lengths: list[int], what: str, ids: list[str]) -> torch.Tensor:
    """Per-token values in the batch's token order, checked against the answers' tokens."""
    flat = [row for group in rows for row in group]
    for row, n, i in zip(flat, lengths, [i for i, g in zip(ids, rows, strict=True) for _ in g], strict=True):
        if len(row) != n:
            raise ValueError(f"group {i}: an answer has {n} tokens but {len(row)} {what} log-probs; the "
                             f"log-prob stage tokenized it otherwise (delete the round's logps stage)")
    return torch.tensor([v for row in flat for v in row], dtype=torch.float32)


def group_collate(processor, shared: bool = True) -> Collate:
    """Rows of every group, their answers' advantages, and the cached per-token log-probs (`old`, `ref`)."""

    def collate(items: list, number: int) -> dict:
        examples = [e for e, _ in items]
        batch = group_rows(processor, [(e.image, e.instruction, e.answers) for e in examples], shared)
        p = batch["packing"]
        lengths = torch.bincount(p["slot"], minlength=len(p["last_row"])).tolist()
        ids = [e.id for e in examples]
        batch["advantages"] = torch.tensor([a for e in examples for a in e.advantages], dtype=torch.float32)
        batch["groups"] = torch.tensor(len(examples))
        for key in ("old", "ref"):
            rows = [getattr(e, key) for e in examples]
            if all(r is not None for r in rows):
                batch[key] = _flat(rows, lengths, key, ids)
        return batch

    return collate


def _global(counts: torch.Tensor) -> torch.Tensor:
    """`counts` summed over the processes of a launched job (as they are in one process)."""
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        counts = counts.clone()
        torch.distributed.all_reduce(counts)
    return counts


def per_token_loss(logps: torch.Tensor, slot: torch.Tensor, counts: torch.Tensor, advantages: torch.Tensor,
                   old: torch.Tensor | None, ref: torch.Tensor | None, config: PolicyGradientConfig
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The per-token loss of answers whose tokens lie flat (`slot` names each token's answer, `counts` the
    answers' lengths), and the per-token values the metrics read."""
    old = logps.detach() if old is None else old.to(logps.dtype)
    log_ratio = logps - old
    if config.ratio == "sequence":
        log_ratio = (torch.zeros_like(counts, dtype=logps.dtype).index_add(0, slot, log_ratio) / counts)[slot]
    ratio = torch.exp(log_ratio)
    advantage = advantages.to(logps.dtype)[slot]
    clipped = torch.clamp(ratio, 1 - config.clip_low, 1 + config.clip_high)
    loss = -torch.min(ratio * advantage, clipped * advantage)
    values = {"clipped": ((ratio < 1 - config.clip_low) & (advantage < 0))
              | ((ratio > 1 + config.clip_high) & (advantage > 0)), "ratio": ratio}
    if config.kl:
        if ref is None:
            raise ValueError("the KL term needs the reference's log-probs of every answer; none were given")
        delta = ref.to(logps.dtype) - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + config.kl * kl
        values["kl"] = kl
    return loss, values


def aggregate(loss: torch.Tensor, slot: torch.Tensor, counts: torch.Tensor, groups: int,
              config: PolicyGradientConfig, max_tokens: int) -> torch.Tensor:
    """This process's share of the batch loss. The loop weighs each process's loss by its share of the
    batch's groups and DDP averages the gradients, so the share is written per group, with the batch's
    answers and tokens per group (over every process) in the denominator."""
    answers, tokens = len(counts), len(loss)
    total_groups, total_answers, total_tokens = _global(
        torch.tensor([groups, answers, tokens], dtype=torch.float64, device=loss.device)).tolist()
    if config.aggregate == "sequence":
        summed = (torch.zeros_like(counts, dtype=loss.dtype).index_add(0, slot, loss) / counts).sum()
        per_group = total_answers / total_groups
    elif config.aggregate == "token":
        summed, per_group = loss.sum(), total_tokens / total_groups
    else:
        summed, per_group = loss.sum(), total_answers / total_groups * max_tokens
    return summed / (groups * per_group)


def make_group_loss(config: PolicyGradientConfig, max_tokens: int, temperature: float = 1.0) -> LossFn:
    """(model, batch) -> (loss, metrics): the policy gradient on a batch of `group_collate`, the answers'
    log-probs read at the temperature they were sampled at."""

    def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        advantages, groups = batch.pop("advantages"), int(batch.pop("groups"))
        old, ref = batch.pop("old", None), batch.pop("ref", None)
        p = batch["packing"]
        logps = answer_logps(model, batch, temperature)
        slot = p["slot"]
        counts = torch.zeros(len(p["last_row"]), dtype=logps.dtype, device=logps.device).index_add(
            0, slot, torch.ones_like(logps))
        tokens, values = per_token_loss(logps, slot, counts, advantages, old, ref, config)
        loss = aggregate(tokens, slot, counts, groups, config, max_tokens)
        metrics = {"clip_fraction": float(values["clipped"].float().mean()),
                   "ratio": float(values["ratio"].detach().mean()), "answer_tokens": float(counts.mean()),
                   "logp": float(logps.detach().mean())}
        if "kl" in values:
            metrics["kl"] = float(values["kl"].detach().mean())
        return loss, metrics

    return loss_fn
