"""A judge that is a VLM loaded in this process (a world judge, a local LLaVA / Qwen2-VL checkpoint).

Requests are grouped by whether they carry an image and by their decoding, and generated in batches; the
system message, if any, is put before the prompt (small chat templates have no system role). A request with
more than one image is answered with an error: these models read one image per turn.

A request's `n` answers are drawn with seeds `seed + i` (vLLM's rule for `n` with a `seed`), so an answer
depends on its seed, not on its batch; a sampled request without a seed takes one from the judge's own
`seed` and its position in the list. `logprobs` returns each answer's tokens with that many alternatives.
A reply counts its tokens as the model's tokenizer does (the prompt once, however many answers), and each
answer says whether its token limit cut it.
"""

from __future__ import annotations

from collections.abc import Sequence

from vlalign.feedback.judge import ChatReply, ChatRequest, Choice, TokenLogprob
from vlalign.models.generate import Generation, generate_detailed
from vlalign.models.settings import Decoding

_Key = tuple  # (with an image, max_tokens, temperature, top_p, logprobs)


class ModelJudge:
    """`complete(requests)` by greedy (or sampled) generation with a local model."""

    def __init__(self, model, processor, name: str = "local", batch_size: int = 16, seed: int = 0):
        self.model, self.processor, self.batch_size, self.seed = model, processor, batch_size, seed
        self.name = f"model:{name}"

    def _seed(self, request: ChatRequest, position: int, choice: int, count: int) -> int:
        """Answer `choice`'s seed: the request's seed + choice, else one no other answer of the list shares."""
        if request.seed is not None:
            return request.seed + choice
        return self.seed + position + choice * count

    def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply]:
        replies: dict[int, ChatReply] = {}
        groups: dict[_Key, list[tuple[int, int]]] = {}
        for i, r in enumerate(requests):
            if len(r.images) > 1:
                replies[i] = ChatReply(None, f"record {r.id or '?'}: {self.name} reads one image per request, "
                                             f"got {len(r.images)}")
                continue
            key = (bool(r.images), r.max_tokens, r.temperature, r.top_p, r.logprobs)
            groups.setdefault(key, []).extend((i, c) for c in range(max(r.n, 1)))
        answers: dict[tuple[int, int], Generation] = {}
        for key, members in groups.items():
            answers.update(zip(members, self._generate(requests, key, members), strict=True))
        for i, r in enumerate(requests):
            if i not in replies:
                made = [answers[i, c] for c in range(max(r.n, 1))]
                replies[i] = ChatReply(made[0].text, prompt_tokens=made[0].prompt_tokens,
                                       completion_tokens=sum(g.completion_tokens for g in made),
                                       choices=[_choice(g) for g in made])
        return [replies[i] for i in range(len(requests))]

    def _generate(self, requests: Sequence[ChatRequest], key: _Key, members: list[tuple[int, int]]) -> list[Generation]:
        with_image, max_tokens, temperature, top_p, logprobs = key
        chosen = [requests[i] for i, _ in members]
        prompts = [f"{r.system}\n{r.prompt}" if r.system else r.prompt for r in chosen]
        images = [r.images[0] if with_image else None for r in chosen]
        seeds = [self._seed(requests[i], i, c, len(requests)) for i, c in members] if temperature > 0 else None
        return generate_detailed(self.model, self.processor, images, prompts,
                                 Decoding(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p),
                                 seeds=seeds, batch_size=self.batch_size, top_logprobs=logprobs)


def _choice(g: Generation) -> Choice:
    tokens = None if g.tokens is None else tuple(TokenLogprob(t, lp, top) for t, lp, top in g.tokens)
    return Choice(g.text, tokens, g.finish_reason)
