"""Packed rows: every document of a batch (a prompt and the texts that continue it) one after another in a
single row, with no padding, and the attention that reads that row document by document.

A document's prompt attends to itself causally (Gemma 3's image tokens to their whole image, sliding layers
within their window), and each continuation to the whole prompt and causally to itself, never to another
continuation or document. The decoder's attention (the text config's implementation) is routed through
`attention`, registered with transformers' `AttentionInterface`: when a forward passes `vlalign_rows` (a
`Rows`), every document is attended with `scaled_dot_product_attention` on views of the row, the prompt and
its first continuation with `is_causal`, and each later continuation against the keys of its prompt and its
own, gathered for it (the memory of one more prompt's keys per continuation, for the work of a row of prompt
and answer rather than of the whole document); any other call goes to the implementation the model had (sdpa
or eager), unchanged. So no (L x L) mask of the row
and no attention matrix is ever made, no padding token is computed, and the same code runs on a CPU (the
fused flash kernel) and on CUDA (flash for the prompts, memory-efficient kernels for the masked parts).
FlexAttention would do the same on CUDA, but it has no backward on a CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

PREFIX = "vlalign_packed:"  # + the implementation calls without packed rows go to
KWARG = "vlalign_rows"


@dataclass(frozen=True)
class Plan:
    """Where the row's tokens go in the two batched attention calls of `Rows.attend`. Call A lays the documents
    side by side, `first` slots each: a document's prompt and first continuation, causal. Call B takes every
    later continuation (`rest` query slots each) against its own keys only: its document's prompt (`prompt`
    slots) and itself, never another continuation, so its work is that of a row of prompt and answer. Every
    index points into the row; the slots past a text's end point at its document's first token (their
    queries' outputs are dropped and their keys are masked)."""

    length: int  # the longest document
    first: int
    rest: int
    prompt: int
    uniform: bool  # every document `length` long: call A reads the row itself, without a gather
    queries_a: torch.Tensor  # (documents * first,): call A's queries, and its keys
    queries_b: torch.Tensor  # (continuations * rest,)
    keys_b: torch.Tensor  # (continuations * (prompt + rest),)
    later: list[tuple[int, int, int]]  # each later continuation's (document, start, end) in the row
    out: torch.Tensor  # (L,): each token's output among [call A's slots, call B's slots]


@dataclass
class Rows:
    """A packed batch as its attention reads it. `spans` holds each document's (start, prompt end, end) in the
    one row; `segment` numbers each token's text within its document (0: the prompt, k: its k-th
    continuation), `position` is its position id in a row of its own, `blocks` numbers bidirectional image
    blocks (-1 elsewhere; None when the family has none), read both ways in the layers of `block_layers`
    (None: every layer; else layer types, "sliding_attention" or "full_attention"). The plan and the masks
    are made on the first layer that needs them and shared by the rest (and by the backward's recomputation
    under gradient checkpointing)."""

    spans: list[tuple[int, int, int]]
    segment: torch.Tensor  # (L,)
    position: torch.Tensor  # (L,)
    blocks: torch.Tensor | None = None  # (L,)
    block_layers: frozenset[str] | None = None
    calls: int = 0  # attention layers that read these rows (the forward checks that every decoder layer did)
    _cache: dict = field(default_factory=dict, repr=False)

    def _firsts(self) -> list[int]:
        """Per document, the length of its prompt and first continuation."""
        second = (self.segment >= 2).tolist()
        return [next((i - s for i in range(p, e) if second[i]), e - s) for s, p, e in self.spans]

    def _later(self, firsts: list[int]) -> list[tuple[int, int, int]]:
        """Every continuation after a document's first: (document, start, end) in the row, in row order."""
        segment = self.segment.tolist()
        out = []
        for d, ((s, _, e), f) in enumerate(zip(self.spans, firsts, strict=True)):
            start = s + f
            for i in range(s + f + 1, e + 1):
                if i == e or segment[i] != segment[start]:
                    out.append((d, start, i))
                    start = i
        return out

    def plan(self, device: torch.device) -> Plan:
        if device not in self._cache:
            firsts = self._firsts()
            later = self._later(firsts)
            length = max(e - s for s, _, e in self.spans)
            first = max(firsts)
            rest = max((e - s for _, s, e in later), default=0)
            prompt = max(p - s for s, p, _ in self.spans)
            queries_a, queries_b, keys_b, out = [], [], [], []
            continuing = iter(enumerate(later))  # in row order, so a document's come after its call-A tokens
            for d, ((s, _, e), f) in enumerate(zip(self.spans, firsts, strict=True)):
                queries_a += [s + o if o < f else s for o in range(first)]
                out += [d * first + o for o in range(f)]
                while len(out) < e:
                    c, (_, cs, ce) = next(continuing)
                    out += [len(self.spans) * first + c * rest + o for o in range(ce - cs)]
            for d, cs, ce in later:
                s, p, _ = self.spans[d]
                queries_b += [cs + o if o < ce - cs else s for o in range(rest)]
                keys_b += [s + j if j < p - s else s for j in range(prompt)]
                keys_b += [cs + o if o < ce - cs else s for o in range(rest)]
            uniform = all(e - s == length for s, _, e in self.spans)
            self._cache[device] = Plan(length, first, rest, prompt, uniform,
                                       *(torch.tensor(i, dtype=torch.long, device=device)
                                         for i in (queries_a, queries_b, keys_b)), later,
                                       torch.tensor(out, dtype=torch.long, device=device))
        return self._cache[device]

    def masks(self, window: int | None, dtype: torch.dtype, device: torch.device
              ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The additive masks of call A (None: plain causal) and call B (None: no document has a second
        continuation) of a layer with that window (None: a global layer), in `dtype` so the kernels take them
        as they are."""
        layer_type = "full_attention" if window is None else "sliding_attention"
        images = self.blocks is not None and (self.block_layers is None or layer_type in self.block_layers)
        key = (window, images, dtype, device)
        if key not in self._cache:
            self._cache[key] = self._masks(self.plan(device), window, images, dtype, device)
        return self._cache[key]

    def _masks(self, plan: Plan, window: int | None, images: bool, dtype: torch.dtype, device: torch.device
               ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        n = len(self.spans)
        position = self.position.to(device)
        slot = torch.arange(max(plan.first, plan.prompt + plan.rest), device=device)
        mask_a = None
        blocks = None
        keys_a = plan.queries_a.view(n, plan.first)
        if images and self.blocks is not None:  # slots past a document's first continuation hold no image
            real = slot[:plan.first] < torch.tensor(self._firsts(), device=device)[:, None]
            blocks = torch.where(real, self.blocks.to(device)[keys_a], -1)
        bidirectional = blocks is not None and bool((blocks >= 0).any())
        if bidirectional or (window is not None and plan.first > window):
            pa = position[keys_a]
            ok = (slot[:plan.first, None] >= slot[None, :plan.first]).expand(n, -1, -1)
            if bidirectional:
                ok = ok | ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0))
            if window is not None:
                ok = ok & ((pa[:, :, None] - pa[:, None, :]) < window)
            mask_a = _additive(ok | torch.eye(plan.first, dtype=torch.bool, device=device), dtype)
        if plan.rest == 0:
            return mask_a, None
        m = len(plan.later)
        prompts = torch.tensor([self.spans[d][1] - self.spans[d][0] for d, _, _ in plan.later], device=device)
        lengths = torch.tensor([e - s for _, s, e in plan.later], device=device)
        query = slot[:plan.rest]
        live = query[None, :] < lengths[:, None]  # (m, rest)
        in_prompt = slot[None, :plan.prompt] < prompts[:, None]  # (m, prompt)
        own = (query[None, None, :] <= query[None, :, None]) & (query[None, None, :] < lengths[:, None, None])
        ok = torch.cat([in_prompt[:, None, :].expand(m, plan.rest, plan.prompt), own], dim=-1)
        if window is not None:
            queries, keys = plan.queries_b.view(m, plan.rest), plan.keys_b.view(m, plan.prompt + plan.rest)
            ok = ok & ((position[queries][:, :, None] - position[keys][:, None, :]) < window)
        ok = ok | (~live[:, :, None] & (slot[:plan.prompt + plan.rest] == 0))  # a padding query reads one key
        return mask_a, _additive(ok, dtype)

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None = None,
               dropout: float = 0.0, sliding_window: int | None = None, softcap: float | None = None, **_
               ) -> tuple[torch.Tensor, None]:
        """Attention over the packed row in two batched calls; (1, L, heads, head_dim) as transformers'
        implementations return it."""
        if softcap is not None:
            raise ValueError(f"{type(module).__name__} caps its attention logits, which packed rows do not support")
        self.calls += 1
        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
        plan = self.plan(query.device)
        mask_a, mask_b = self.masks(window, query.dtype, query.device)
        n, heads, dim = len(self.spans), query.shape[1], query.shape[-1]

        def slots(x: torch.Tensor, index: torch.Tensor | None, count: int, size: int) -> torch.Tensor:
            """(1, H, L, D) -> (count, H, size, D), gathered token-major (the layout the kernels read and write)."""
            x = x.transpose(1, 2)
            x = x if index is None else x.index_select(1, index)
            return x.reshape(count, size, heads, dim).transpose(1, 2)

        def tokens(out: torch.Tensor) -> torch.Tensor:  # (count, H, size, D) -> (1, count * size, H, D)
            return out.transpose(1, 2).reshape(1, -1, heads, dim)

        if plan.uniform:  # documents of one length already lie side by side: views of the row
            q, k, v = (slots(x, None, n, plan.length)[:, :, :plan.first] for x in (query, key, value))
        else:
            q, k, v = (slots(x, plan.queries_a, n, plan.first) for x in (query, key, value))
        first = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_a, dropout_p=dropout,
                                               is_causal=mask_a is None, scale=scaling)
        if mask_b is None:
            return tokens(first).index_select(1, plan.out), None
        m, width = len(plan.later), plan.prompt + plan.rest
        rest = F.scaled_dot_product_attention(slots(query, plan.queries_b, m, plan.rest),
                                              slots(key, plan.keys_b, m, width), slots(value, plan.keys_b, m, width),
                                              attn_mask=mask_b, dropout_p=dropout, scale=scaling)
        return torch.cat([tokens(first), tokens(rest)], dim=1).index_select(1, plan.out), None


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(documents, 1, queries, keys): 0 where `allowed`, the dtype's lowest number elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _attention_for(fallback: str):
    """The decoder's attention function: packed rows when the forward passed them, else `fallback`."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        rows = kwargs.pop(KWARG, None)
        if rows is not None:
            return rows.attend(module, query, key, value, **kwargs)
        eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        return AttentionInterface().get_interface(fallback, eager)(module, query, key, value, attention_mask, **kwargs)

    return attention


def original(config) -> str:
    """The attention implementation `config` names, as it was before `install`."""
    return (config._attn_implementation or "eager").removeprefix(PREFIX)


def install(model) -> None:
    """Route `model`'s decoder attention through `attention` (once; calls without packed rows are unchanged).
    Vision towers keep their own implementation, and nothing of this is saved with the model."""
    text = model.config.get_text_config()
    current = text._attn_implementation or "eager"
    if current.startswith(PREFIX):
        return
    name = PREFIX + current
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _attention_for(current))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[current])
    text._attn_implementation = name


def placeholder_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A (1, 1, L, L) stand-in for the decoder's mask, a view of one number: transformers passes a 4-D mask
    through as it is (so it builds none of its own), and `attention` never reads it."""
    return torch.zeros((), dtype=dtype, device=device).expand(1, 1, length, length)
