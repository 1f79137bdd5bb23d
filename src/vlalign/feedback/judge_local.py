"""A judge that is a VLM loaded in this process (a world judge, a local LLaVA / Qwen2-VL checkpoint).

Requests are grouped by whether they carry an image and generated in batches; the system message, if
any, is put before the prompt (small chat templates have no system role). A request with more than one
image is answered with an error: these models read one image per turn.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlalign.feedback.judge import ChatReply, ChatRequest
from vlalign.models.generate import generate
from vlalign.models.settings import Decoding


class ModelJudge:
    """`complete(requests)` by greedy (or sampled) generation with a local model."""

    def __init__(self, model, processor, name: str = "local", batch_size: int = 16, seed: int = 0):
        self.model, self.processor, self.batch_size, self.seed = model, processor, batch_size, seed
        self.name = f"model:{name}"

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        replies: list[ChatReply | None] = [None] * len(requests)
        groups: dict[tuple[bool, int, float], list[int]] = {}
        for i, r in enumerate(requests):
            if len(r.images) > 1:
                replies[i] = ChatReply(None, f"record {r.id or '?'}: {self.name} reads one image per request, "
                                             f"got {len(r.images)}")
                continue
            groups.setdefault((bool(r.images), r.max_tokens, r.temperature), []).append(i)
        for (with_image, max_tokens, temperature), idx in groups.items():
            chosen = [requests[i] for i in idx]
            prompts = [f"{r.system}\n{r.prompt}" if r.system else r.prompt for r in chosen]
            images = [r.images[0] if with_image else None for r in chosen]
            seeds = [self.seed + i for i in idx] if temperature > 0 else None
            texts = generate(self.model, self.processor, images, prompts,
                             Decoding(max_new_tokens=max_tokens, temperature=temperature), seeds=seeds,
                             batch_size=self.batch_size)
            for i, text in zip(idx, texts, strict=True):
                replies[i] = ChatReply(text)
        return [r for r in replies if r is not None]
