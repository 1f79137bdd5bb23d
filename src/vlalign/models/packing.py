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


@dataclass
class Rows:
    """A packed batch as its attention reads it. `spans` holds each document's (start, prompt end, end) in the
    one row; `segment` numbers each token's text within its document (0: the prompt, k: its k-th
    continuation), `position` is its position id in a row of its own, `blocks` numbers bidirectional image
    blocks (-1 elsewhere; None when the family has none). Masks are built on the first layer that needs them
    and shared by the rest (and by the backward's recomputation under gradient checkpointing)."""

    spans: list[tuple[int, int, int]]
    segment: torch.Tensor  # (L,)
    position: torch.Tensor  # (L,)
    blocks: torch.Tensor | None = None  # (L,)
    calls: int = 0  # attention layers that read these rows (the forward checks that every decoder layer did)
    _masks: dict = field(default_factory=dict, repr=False)

    def parts(self) -> list[int]:
        """Lengths of the row's pieces in order: each document's prompt, then its continuations."""
        return [n for s, p, e in self.spans for n in (p - s, e - p)]

    def masks(self, window: int | None, dtype: torch.dtype, device: torch.device) -> list[tuple]:
        """Per document: (the prompt's additive mask or None for plain causal, the continuations' additive
        mask over the document's keys), in `dtype` so the kernels take them as they are."""
        key = (window, dtype, device)
        if key not in self._masks:
            self._masks[key] = [self._document_masks(s, p, e, window, dtype, device) for s, p, e in self.spans]
        return self._masks[key]

    def _document_masks(self, s: int, p: int, e: int, window: int | None, dtype: torch.dtype,
                        device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor]:
        segment = self.segment[s:e].to(device)
        position = self.position[s:e].to(device)
        index = torch.arange(e - s, device=device)
        q = slice(p - s, e - s)  # the continuations' queries
        allowed = (index[None, :] < p - s) | ((segment[q, None] == segment[None, :]) & (index[q, None] >= index))
        if window is not None:
            allowed &= (position[q, None] - position[None, :]) < window
        blocks = self.blocks[s:p].to(device) if self.blocks is not None else None
        bidirectional = blocks is not None and bool((blocks >= 0).any())
        prompt = None
        if bidirectional or (window is not None and p - s > window):
            first = index[:p - s]
            ok = first[:, None] >= first[None, :]
            if bidirectional:
                ok |= (blocks[:, None] == blocks[None, :]) & (blocks[:, None] >= 0)
            if window is not None:
                ok &= (position[:p - s, None] - position[None, :p - s]) < window
            prompt = _additive(ok, dtype)
        return prompt, _additive(allowed, dtype)

    def attend(self, module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None = None,
               dropout: float = 0.0, sliding_window: int | None = None, softcap: float | None = None, **_
               ) -> tuple[torch.Tensor, None]:
        """Attention over the packed row, document by document; (1, L, heads, head_dim) as transformers'
        implementations return it."""
        if softcap is not None:
            raise ValueError(f"{type(module).__name__} caps its attention logits, which packed rows do not support")
        self.calls += 1
        groups = query.shape[1] // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        window = sliding_window if sliding_window is not None else getattr(module, "sliding_window", None)
        masks = self.masks(window, query.dtype, query.device)
        queries = query.split(self.parts(), dim=2)
        keys = key.split([e - s for s, _, e in self.spans], dim=2)
        values = value.split([e - s for s, _, e in self.spans], dim=2)
        out = []
        for d, ((s, p, _), (prompt_mask, mask)) in enumerate(zip(self.spans, masks, strict=True)):
            k, v = keys[d], values[d]
            out.append(F.scaled_dot_product_attention(queries[2 * d], k[:, :, :p - s], v[:, :, :p - s],
                                                      attn_mask=prompt_mask, dropout_p=dropout,
                                                      is_causal=prompt_mask is None, scale=scaling))
            out.append(F.scaled_dot_product_attention(queries[2 * d + 1], k, v, attn_mask=mask, dropout_p=dropout,
                                                      scale=scaling))
        return torch.cat(out, dim=2).transpose(1, 2).contiguous(), None


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


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
    """The attention implementation of `config`'s decoder before `install`."""
    name = config.get_text_config()._attn_implementation or "eager"
    return name.removeprefix(PREFIX)


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
