"""Packed rows: every document of a batch (a prompt and the texts that continue it) one after another in a
single row, with no padding, and the attention that reads that row document by document.

A document's prompt attends to itself causally (Gemma 3's image tokens to their whole image, sliding layers
within their window), and each continuation to the whole prompt and causally to itself, never to another
continuation or document. The decoder's attention (the text config's implementation) is routed through
`attention`, registered with transformers' `AttentionInterface`: when a forward passes `vlalign_rows` (a
`Rows`), every document is attended with `scaled_dot_product_attention` on views of the row, the prompt with
`is_causal` and the continuations against the document's keys under a mask of their own queries only; any
other call goes to the implementation the model had (sdpa or eager), unchanged. So no (L x L) mask of the row
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
    """Where the row's tokens go in the two batched attention calls of `Rows.attend`. Documents are laid
    side by side, `length` slots each (the longest document): call A takes each document's prompt and first
    continuation (`first` slots, causal), call B its other continuations (`rest` slots) against all its
    keys. Every index points into the row; the slots past a document's end point anywhere (their queries'
    outputs are dropped and no real query reads their keys)."""

    length: int
    first: int
    rest: int
    uniform: bool  # every document `length` long: the key slots are the row itself
    keys: torch.Tensor  # (documents * length,): the row's token in each key slot
    queries_a: torch.Tensor  # (documents * first,)
    queries_b: torch.Tensor  # (documents * rest,)
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

    def plan(self, device: torch.device) -> Plan:
        if device not in self._cache:
            firsts = self._firsts()
            length = max(e - s for s, _, e in self.spans)
            first = max(firsts)
            rest = max(e - s - f for (s, _, e), f in zip(self.spans, firsts, strict=True))
            keys, queries_a, queries_b, out = [], [], [], []
            for d, ((s, _, e), f) in enumerate(zip(self.spans, firsts, strict=True)):
                keys += [s + o if o < e - s else s for o in range(length)]
                queries_a += [s + o if o < f else s for o in range(first)]
                queries_b += [s + f + o if o < e - s - f else s for o in range(rest)]
                out += [d * first + o for o in range(f)]
                out += [len(self.spans) * first + d * rest + o for o in range(e - s - f)]
            uniform = all(e - s == length for s, _, e in self.spans)
            self._cache[device] = Plan(length, first, rest, uniform, *(torch.tensor(i, dtype=torch.long, device=device)
                                                                       for i in (keys, queries_a, queries_b, out)))
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
        ends = torch.tensor([e - s for s, _, e in self.spans], device=device)
        prompts = torch.tensor([p - s for s, p, _ in self.spans], device=device)
        keys = plan.keys.view(n, plan.length)
        real = torch.arange(plan.length, device=device) < ends[:, None]  # (n, length): key slots in the document
        segment, position = self.segment.to(device), self.position.to(device)
        slot = torch.arange(plan.length, device=device)
        mask_a = None
        blocks = None
        if images and self.blocks is not None:  # slots past a document's end hold no image
            blocks = torch.where(real[:, :plan.first], self.blocks.to(device)[keys[:, :plan.first]], -1)
        bidirectional = blocks is not None and bool((blocks >= 0).any())
        if bidirectional or (window is not None and plan.first > window):
            pa = position[keys[:, :plan.first]]
            ok = (slot[:plan.first, None] >= slot[None, :plan.first]).expand(n, -1, -1)
            if bidirectional:
                ok = ok | ((blocks[:, :, None] == blocks[:, None, :]) & (blocks[:, :, None] >= 0))
            if window is not None:
                ok = ok & ((pa[:, :, None] - pa[:, None, :]) < window)
            mask_a = _additive(ok | torch.eye(plan.first, dtype=torch.bool, device=device), dtype)
        if plan.rest == 0:
            return mask_a, None
        queries = plan.queries_b.view(n, plan.rest)
        firsts = torch.tensor(self._firsts(), device=device)
        offset = firsts[:, None] + slot[None, :plan.rest]  # each call-B query's slot in its document
        live = offset < ends[:, None]
        same = segment[queries][:, :, None] == segment[keys][:, None, :]
        ok = (slot[None, None, :] < prompts[:, None, None]) | (same & (slot[None, None, :] <= offset[:, :, None]))
        ok = ok & real[:, None, :]
        if window is not None:
            ok = ok & ((position[queries][:, :, None] - position[keys][:, None, :]) < window)
        ok = ok | (~live[:, :, None] & (slot == 0))  # a padding query reads one key, so no row is empty
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

        def slots(x: torch.Tensor, index: torch.Tensor | None, size: int) -> torch.Tensor:
            """(1, H, L, D) -> (n, H, size, D), gathered token-major (the layout the kernels read and write)."""
            x = x.transpose(1, 2)
            x = x if index is None else x.index_select(1, index)
            return x.reshape(n, size, heads, dim).transpose(1, 2)

        def tokens(out: torch.Tensor) -> torch.Tensor:  # (n, H, size, D) -> (1, n * size, H, D)
            return out.transpose(1, 2).reshape(1, -1, heads, dim)

        keys = None if plan.uniform else plan.keys  # documents of one length already lie side by side
        k, v = slots(key, keys, plan.length), slots(value, keys, plan.length)
        # call A's queries are the first slots of each document's (a later continuation's queries there
        # read the wrong keys, and their outputs are dropped: call B makes theirs)
        q = slots(query, None, plan.length)[:, :, :plan.first] if plan.uniform else \
            slots(query, plan.queries_a, plan.first)
        first = F.scaled_dot_product_attention(q, k[:, :, :plan.first], v[:, :, :plan.first], attn_mask=mask_a,
                                               dropout_p=dropout, is_causal=mask_a is None, scale=scaling)
        if mask_b is None:
            return tokens(first).index_select(1, plan.out), None
        rest = F.scaled_dot_product_attention(slots(query, plan.queries_b, plan.rest), k, v, attn_mask=mask_b,
                                              dropout_p=dropout, scale=scaling)
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
