"""The response pool (VLFeedback): each prompt answered by `k` different models of a pool, drawn per prompt
with a seed. Local members are loaded one at a time, in turn, and each is freed before the next loads; API
members answer through their endpoints (a failed request costs only its answer).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from PIL import Image

from vlalign.config import to_dict
from vlalign.data.records import PromptRecord, ResponseRecord
from vlalign.data.store import Stage, batch_result, run_stage
from vlalign.feedback.judge import ChatRequest, JudgeError
from vlalign.models.settings import Decoding, Runtime
from vlalign.stages.round import Models, Round
from vlalign.stages.settings import RunConfig


@dataclass(frozen=True)
class PoolMember:
    """One model of the response pool: a local model (a directory, world:<name>) or `api:MODEL[@URL]`."""

    SHORTHAND = "model"

    model: str  # a model directory, world:<name>, or api:MODEL[@URL]
    name: str | None = None  # how its answers are labelled (default: the model, with its temperature)
    temperature: float = 0.0  # 0: greedy
    max_new_tokens: int = 512  # longest answer
    runtime: Runtime | None = None  # how a local member loads (null: as the policy)

    @property
    def label(self) -> str:
        return self.name or (self.model if self.temperature == 0 else f"{self.model}@t{self.temperature}")


def assign_members(prompt_id: str, n_members: int, k: int, seed: int) -> list[int]:
    """Which `k` pool members answer this prompt: a seeded draw, so every prompt gets k different models."""
    import numpy as np  # numpy stays out of the config check, which imports this module

    key = int.from_bytes(hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()[:4], "little")
    return sorted(np.random.default_rng([seed, key]).choice(n_members, size=k, replace=False).tolist())


class _Holder:
    """The pool member in memory: switching to another member frees the one before."""

    def __init__(self, models: Models):
        self.models, self.held = models, ExitStack()
        self.member: str | None = None
        self.loaded: tuple = ()

    def answer(self, member: PoolMember, images: Sequence[Image.Image], instructions: Sequence[str],
               seeds: Sequence[int]) -> list[str | Exception]:
        if member.model.startswith("api:"):
            with self.models.chat(member.model) as endpoint:
                replies = endpoint.complete([ChatRequest(q, (im,), max_tokens=member.max_new_tokens,
                                                         temperature=member.temperature)
                                             for im, q in zip(images, instructions, strict=True)])
            return [x.text if x.ok and x.text is not None else JudgeError(f"{member.label}: {x.error}")
                    for x in replies]
        from vlalign.models.generate import generate  # torch: kept out of the config check

        if self.member != member.model:
            self.close()
            self.loaded = self.held.enter_context(self.models.using(member.model, member.runtime))
            self.member = member.model
        model, processor = self.loaded
        decoding = Decoding(max_new_tokens=member.max_new_tokens, temperature=member.temperature)
        return list(generate(model, processor, images, instructions, decoding,
                             seeds=seeds if member.temperature > 0 else None))

    def close(self) -> None:
        self.held.close()
        self.member = None


def pool_stage(r: Round[RunConfig], out: Stage, pool: Sequence[PoolMember], per_prompt: int) -> Stage:
    """`per_prompt` answers per prompt, each from a different pool member (recorded as `model`)."""
    from vlalign.models.generate import sample_seed

    seed = r.config.seed
    records = [PromptRecord.from_row(row) for row in r.prompt_stage().rows()]
    items = sorted(((m, p) for p in records for m in assign_members(p.id, len(pool), per_prompt, seed)),
                   key=lambda item: (item[0], item[1].id))
    holder = _Holder(r.models)

    def process(batch: list[tuple[int, PromptRecord]]) -> list[dict]:
        rows: list[dict] = []
        errors: dict[int, BaseException] = {}
        for m in sorted({m for m, _ in batch}):
            member, where = pool[m], [i for i, (mm, _) in enumerate(batch) if mm == m]
            chosen = [batch[i][1] for i in where]
            seeds = [sample_seed(seed, p.id, m) for p in chosen]
            texts = holder.answer(member, [r.store.images.get(p.image) for p in chosen],
                                  [p.instruction for p in chosen], seeds)
            errors.update({i: t for i, t in zip(where, texts, strict=True) if isinstance(t, Exception)})
            rows += [ResponseRecord(id=f"{p.id}/{member.label}", prompt_id=p.id, image=p.image,
                                    instruction=p.instruction, response=t, model=member.label,
                                    seed=s if member.temperature > 0 else None).to_row()
                     for p, t, s in zip(chosen, texts, seeds, strict=True) if not isinstance(t, Exception)]
        return batch_result(rows, errors)

    try:
        run_stage(out, items, process, id_of=lambda item: f"{item[1].id}/{pool[item[0]].label}",
                  batch_size=r.config.batch_size,
                  description="response pool",
                  manifest={"config": {"pool": [{k: v for k, v in to_dict(m).items() if k != "runtime"} for m in pool],
                                       "k": per_prompt, "seed": seed}})
    finally:
        holder.close()
    return out
