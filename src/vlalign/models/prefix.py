"""Shared-prefix rows: a prompt (image + instruction) is forwarded once, and every text that continues it (a
pair's chosen and rejected answers, a labeler's questions about one image, best-of-N's samples, a group's n
answers) follows it in the same document.

A batch is one row holding its documents one after another, without padding (`collate`); the attention of
`vlalign.models.packing` lets each continuation see its prompt and itself only, and its positions go on from
the prompt's end, so every continuation is scored exactly as in its own row [prompt | continuation]: one
vision pass and one prompt pass serve them all. Positions are the architecture's own: 1-D for most, the 3-D
M-RoPE of Qwen2-VL / Qwen2.5-VL / Qwen3-VL and GLM-4.xV from their `get_rope_index`, for each document
(Qwen3-VL's DeepStack adds vision features at the image tokens, which stay where the prompt put them); image
tokens attend to each other both ways where the family does (Gemma 3 in every layer, Gemma 4 in its sliding
layers), and sliding-window layers get their window by position. A family or attention implementation not
listed in `SHARED_FAMILIES` / `SHARED_ATTENTION` falls back to one right-padded row per continuation
(`shares_prefix`, with a one-line notice naming the reason), which is the plain forward, so such a model
scores the same texts, only without the saving.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from vlalign.models import moe, packing
from vlalign.models.batching import TEXT_KEYS, _pad_cat, _room, chat_prompt, encode_prompt_row
from vlalign.progress import warn

# families whose forward hands `vlalign.models.packing.KWARG` to the decoder's attention and takes position ids
# as this module builds them (tested on each)
SHARED_FAMILIES = frozenset({"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "smolvlm",
                             "gemma3", "qwen3_vl", "qwen3_vl_moe", "internvl", "gemma4", "glm4v", "glm46v",
                             "llava_onevision1_5"})
SHARED_ATTENTION = frozenset({"eager", "sdpa"})  # the implementations the packed attention stands in for
ALL_LAYERS = None
# family -> the layer types in which image tokens attend to their whole image (token types == 1), given the
# text config; ALL_LAYERS: every layer. Gemma 4 does so in its sliding layers only, and only where the
# checkpoint asks for it (use_bidirectional_attention: vision); its global layers stay causal.
BIDIRECTIONAL_IMAGES: dict[str, Callable[[object], frozenset[str] | None]] = {
    "gemma3": lambda text: ALL_LAYERS,
    "gemma4": lambda text: frozenset({"sliding_attention"} if text.use_bidirectional_attention == "vision" else ()),
}
TOKEN_TYPES = ("mm_token_type_ids", "token_type_ids")
# id(config) -> config of each model told why it falls back: one config per model, whichever wrapper (peft, the
# training loop's) holds it; configs are unhashable, and an entry goes when its model does
_told: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


@dataclass
class Prefixed:
    """One prompt and the texts that continue it; `slots` says where each continuation's score goes."""

    prompt: dict[str, torch.Tensor]  # the processor's output for one row: 1-D ids and token types, image tensors
    continuations: list[torch.Tensor]  # 1-D token ids, at least one each
    slots: list[int]  # the batch's slots are numbered 0..n-1 over all its continuations


def unshared_reason(model) -> str | None:
    """Why `model` cannot take shared-prefix rows, or None when it can."""
    config = model.config
    text = config.get_text_config()
    if config.model_type not in SHARED_FAMILIES:
        return f"the {config.model_type} family is not one whose shared-prefix rows are tested equal to plain rows"
    loaded = sorted({packing.original(c) for c in (config, text)} - SHARED_ATTENTION)
    if loaded:
        return (f"{loaded[0]} attention is not one the packed attention stands in for (load it with "
                f"attn_implementation sdpa or eager to share prompts)")
    bidirectional = getattr(text, "use_bidirectional_attention", None)
    if bidirectional and bidirectional != "vision":
        return (f"its text attends both ways (use_bidirectional_attention: {bidirectional}), so a prompt's states "
                f"depend on the text after it")
    return None


def shares_prefix(model) -> bool:
    """Whether `model` takes shared-prefix rows; otherwise every continuation gets a row of its own, and the
    first time a model falls back a one-line notice says why."""
    reason = unshared_reason(model)
    config = model.config
    if reason is not None and _told.get(id(config)) is not config:
        _told[id(config)] = config
        warn(f"{type(model).__name__} scores one row per text (no shared prompts): {reason}")
    return reason is None


def encode_prompt(processor, image: Image.Image, instruction: str) -> dict[str, torch.Tensor]:
    """The processor's row for one prompt, with the batch dimension of text tensors dropped."""
    enc = encode_prompt_row(processor, image, instruction)
    return {k: (v[0] if k in TEXT_KEYS else v) for k, v in enc.items() if k not in ("attention_mask", "labels")}


def answer_ids(processor, prompt: dict[str, torch.Tensor], answers: Sequence[str], add_eos: bool = True
               ) -> list[torch.Tensor]:
    """Each answer's tokens (and EOS) as it continues `prompt`, cut to the run's max_length and
    max_completion_length as `encode` cuts it."""
    tok = processor.tokenizer
    room = _room(processor, len(prompt["input_ids"]))
    out = []
    for text in answers:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if add_eos and tok.eos_token_id is not None:
            ids = [*ids, tok.eos_token_id]
        out.append(torch.tensor(ids[:room], dtype=torch.long))
    return out


def answers_group(processor, image: Image.Image, instruction: str, answers: Sequence[str], slots: Sequence[int]
                  ) -> Prefixed:
    prompt = encode_prompt(processor, image, instruction)
    return Prefixed(prompt, answer_ids(processor, prompt, answers), list(slots))


def questions_groups(processor, image: Image.Image, questions: Sequence[str], slots: Sequence[int]) -> list[Prefixed]:
    """Prompts that differ only after the image share the tokens they have in common (the image and the chat
    template's opening); each question's own tokens continue them. The image goes through the processor
    once; the other questions are tokenized as text (what follows the image tokenizes the same with or
    without their expansion, checked on the first prompt). Prompts whose difference reaches into the image
    tokens are not shared."""
    if len(questions) > 1:
        texts = [chat_prompt(processor, q) for q in questions]
        first = encode_prompt(processor, image, questions[0])
        raw = [torch.tensor(ids, dtype=torch.long) for ids in processor.tokenizer(texts)["input_ids"]]
        common = _common_length(raw)
        tail = raw[0][common:]
        start = len(first["input_ids"]) - len(tail)
        if start > 0 and first["input_ids"][start:].equal(tail) and not _has_image_tokens(processor, first, start):
            return [Prefixed(_cut(first, start), [r[common:] for r in raw], list(slots))]
    prompts = [encode_prompt(processor, image, q) for q in questions]
    ids = [p["input_ids"] for p in prompts]
    common = _common_length(ids)
    if len(prompts) > 1 and not any(_has_image_tokens(processor, p, common) for p in prompts):
        return [Prefixed(_cut(prompts[0], common), [i[common:] for i in ids], list(slots))]
    return [Prefixed(_cut(p, len(i) - 1), [i[-1:]], [s]) for p, i, s in zip(prompts, ids, slots, strict=True)]


def _common_length(ids: Sequence[torch.Tensor]) -> int:
    """How many leading tokens all of `ids` share, keeping at least the last token of each out."""
    common = min(len(i) for i in ids) - 1
    for i in ids[1:]:
        differs = (i[:common] != ids[0][:common]).nonzero()
        common = int(differs[0]) if len(differs) else common
    return common


def _has_image_tokens(processor, prompt: dict[str, torch.Tensor], start: int) -> bool:
    tail = prompt["input_ids"][start:]
    image_token = getattr(processor, "image_token_id", None)
    types = next((prompt[k][start:] for k in TOKEN_TYPES if k in prompt), None)
    return bool((types is not None and (types != 0).any()) or (image_token is not None and (tail == image_token).any()))


def _cut(prompt: dict[str, torch.Tensor], length: int) -> dict[str, torch.Tensor]:
    return {k: (v[:length] if k in TEXT_KEYS else v) for k, v in prompt.items()}


def image_key(image: Image.Image) -> tuple:
    """Equal pictures, equal keys (whatever object holds them), so their prompts can be shared."""
    return image.mode, image.size, hashlib.sha1(image.tobytes()).digest()


def group_by(keys: Sequence[Hashable]) -> list[list[int]]:
    """Indices of equal keys together, groups in order of first appearance."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def images_keys(images: Sequence[Image.Image]) -> list[tuple]:
    """`image_key` of each image, hashing each object once."""
    seen: dict[int, tuple] = {}
    for im in images:
        if id(im) not in seen:
            seen[id(im)] = image_key(im)
    return [seen[id(im)] for im in images]


def batches(groups: Sequence[list[int]], limit: int) -> Iterator[list[list[int]]]:
    """Groups packed into batches of at most `limit` members. A group is never split unless it alone is larger
    than `limit` (its prompt would be forwarded once more for each part)."""
    batch: list[list[int]] = []
    size = 0
    for group in groups:
        for s in range(0, len(group), limit):
            part = group[s:s + limit]
            if size + len(part) > limit and batch:
                yield batch
                batch, size = [], 0
            batch.append(part)
            size += len(part)
    if batch:
        yield batch


Make = Callable[[list[int], list[int]], list[Prefixed]]  # (members, their slots) -> rows


def run_grouped(groups: Sequence[list[int]], limit: int, make: Make, score: Callable[[dict], torch.Tensor],
                pad_id: int, shared: bool) -> dict[int, torch.Tensor]:
    """Score every member of every group, at most `limit` members a forward: member index -> its value."""
    out: dict[int, torch.Tensor] = {}
    for batch in batches(groups, limit):
        prefixed: list[Prefixed] = []
        members: list[int] = []
        for part in batch:
            prefixed += make(part, list(range(len(members), len(members) + len(part))))
            members += part
        values = score(collate(prefixed, pad_id, shared))
        out.update(zip(members, values, strict=True))
    return out


def collate(groups: Sequence[Prefixed], pad_id: int, shared: bool = True) -> dict:
    """A batch and, under `packing`, what the forward needs to mask and score it. With `shared`, one row holds
    every group as a document, its prompt then its continuations, and no token is padding
    (`vlalign.models.packing`); otherwise every continuation gets a row of its own, [prompt | continuation],
    right-padded: the plain forward, for models that cannot take packed rows."""
    rows = [[(g, list(range(len(g.continuations)))) for g in groups]] if shared else \
        [[(g, [j])] for g in groups for j in range(len(g.continuations))]
    length = max(sum(len(g.prompt["input_ids"]) + sum(len(g.continuations[j]) for j in js) for g, js in row)
                 for row in rows)
    n = len(rows)
    batch = {"input_ids": torch.full((n, length), pad_id, dtype=torch.long)}
    types = [k for k in TOKEN_TYPES if k in groups[0].prompt]
    for key in types:
        batch[key] = torch.zeros((n, length), dtype=torch.long)
    segment = torch.full((n, length), -1, dtype=torch.long)
    position = torch.zeros((n, length), dtype=torch.long)
    scored: dict[str, list[int]] = {"row": [], "index": [], "target": [], "slot": []}
    last: dict[int, tuple[int, int]] = {}
    spans: list[tuple[int, int, int, int]] = []  # (row, start, prompt end, end) of each document
    for r, row in enumerate(rows):
        start = 0
        for g, js in row:
            p = len(g.prompt["input_ids"])
            end = start + p
            batch["input_ids"][r, start:end] = g.prompt["input_ids"]
            for key in types:
                batch[key][r, start:end] = g.prompt[key]
            segment[r, start:end] = 0
            position[r, start:end] = torch.arange(p)
            for k, j in enumerate(js, start=1):
                ids, m = g.continuations[j], len(g.continuations[j])
                batch["input_ids"][r, end:end + m] = ids
                segment[r, end:end + m] = k
                position[r, end:end + m] = torch.arange(p, p + m)
                slot = g.slots[j]
                scored["row"] += [r] * m
                scored["index"] += [start + p - 1, *range(end, end + m - 1)]  # the logit that predicts each token
                scored["target"] += ids.tolist()
                scored["slot"] += [slot] * m
                last[slot] = (r, end + m - 1)
                end += m
            spans.append((r, start, start + p, end))
            start = end
    prompts = [g for row in rows for g, _ in row]
    for key in {k for g in prompts for k in g.prompt} - set(TEXT_KEYS):
        batch[key] = _pad_cat([g.prompt[key] for g in prompts])
    slots = sorted(last)
    batch["attention_mask"] = (segment >= 0).long()
    batch["packing"] = {"segment": segment, "position": position,
                        **{k: torch.tensor(v, dtype=torch.long) for k, v in scored.items()},
                        "last_row": torch.tensor([last[s][0] for s in slots], dtype=torch.long),
                        "last_index": torch.tensor([last[s][1] for s in slots], dtype=torch.long),
                        "spans": torch.tensor(spans, dtype=torch.long)}
    if "image_grid_thw" in batch:  # how many of the batch's image grids each document's prompt holds (M-RoPE)
        batch["packing"]["grids"] = torch.tensor([len(g.prompt["image_grid_thw"]) for g in prompts], dtype=torch.long)
    return batch


def is_packed(batch: dict) -> bool:
    """Whether a row of `batch` holds more than one text after a prompt (several documents, or a document
    with several continuations): such rows need `vlalign.models.packing`'s attention."""
    p = batch["packing"]
    return len(p["spans"]) > batch["input_ids"].shape[0] or int(p["segment"].max()) > 1


# ---- the forward ----

def _inner(model):
    """The transformers model under a peft wrapper, and its multimodal backbone (`.model`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "model", base)


def _block_ids(token_types: torch.Tensor) -> torch.Tensor:
    """Each run of image tokens (type 1) numbered from 0, -1 elsewhere: Gemma 3's bidirectional blocks."""
    image = token_types == 1
    starts = image & ~torch.nn.functional.pad(image, (1, 0))[:, :-1]
    return torch.where(image, starts.long().cumsum(-1) - 1, -1)


def packed_rows(model, batch: dict) -> packing.Rows:
    """The packed row of `batch` as the attention reads it, with the image blocks of a family whose image
    tokens read their image both ways (and the layer types in which they do)."""
    p = batch["packing"]
    blocks, layers = None, ALL_LAYERS
    both_ways = BIDIRECTIONAL_IMAGES.get(model.config.model_type)
    if both_ways is not None:
        layers = both_ways(model.config.get_text_config())
        blocks = _block_ids(next(batch[t] for t in TOKEN_TYPES if t in batch))[0]
    return packing.Rows([(s, e_prompt, e) for _, s, e_prompt, e in p["spans"].tolist()], p["segment"][0],
                        p["position"][0], blocks, layers)


def decoder_masks(model, length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor | dict:
    """What the decoder takes as its mask for a packed row: a stand-in the packed attention ignores, one per
    layer type where layers differ (as the family's forward expects)."""
    mask = packing.placeholder_mask(length, dtype, device)
    types = set(getattr(model.config.get_text_config(), "layer_types", None) or ())
    return {t: mask for t in types} if len(types) > 1 or "sliding_attention" in types else mask


def position_ids(model, batch: dict) -> torch.Tensor:
    """1-D positions, or for M-RoPE models each document's prompt with its own 3-D positions
    (`get_rope_index`) and its continuations going on as text after the prompt's largest position."""
    p = batch["packing"]
    position = p["position"]
    rope_index = getattr(_inner(model), "get_rope_index", None)
    if rope_index is None or "image_grid_thw" not in batch:
        return position
    out = position[None].repeat(3, 1, 1)
    grids = batch["image_grid_thw"]
    first = 0
    for (r, s, e_prompt, e), n in zip(p["spans"].tolist(), p["grids"].tolist(), strict=True):
        ids = batch["input_ids"][r:r + 1, s:e_prompt]
        rope, _ = rope_index(ids, mm_token_type_ids=batch["mm_token_type_ids"][r:r + 1, s:e_prompt],
                             image_grid_thw=grids[first:first + n], attention_mask=torch.ones_like(ids))
        first += n
        out[:, r, s:e_prompt] = rope[:, 0]
        last = rope[:, 0, -1].amax()  # text goes on from the largest position so far (as after an image)
        out[:, r, e_prompt:e] = last + position[r, e_prompt:e] - (e_prompt - s - 1)
    return out


def _model_inputs(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if k not in ("packing", "labels")}


def forward_at(model, batch: dict, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Logits at the (row, index) pairs, in their order: the LM head runs at those positions only (each once)."""
    keep = torch.zeros_like(batch["input_ids"], dtype=torch.bool)
    keep[rows, index] = True
    inputs = _model_inputs(batch)
    layout = None
    if is_packed(batch):
        if not shares_prefix(model):
            raise ValueError(f"{type(model).__name__} cannot take shared-prefix rows; collate with shared=False")
        packing.install(model)
        layout = packed_rows(model, batch)
        dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        inputs.update(attention_mask=decoder_masks(model, keep.shape[1], dtype, keep.device),
                      position_ids=position_ids(model, batch), **{packing.KWARG: layout})
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: the full logits, then the positions
        logits = model(**inputs).logits[keep]
    layers = model.config.get_text_config().num_hidden_layers
    if layout is not None and layout.calls < layers:
        raise RuntimeError(f"{type(model).__name__}: only {layout.calls} of {layers} decoder layers took the packed "
                           f"rows (the family's forward drops `{packing.KWARG}`); take it out of SHARED_FAMILIES")
    rank = keep.flatten().cumsum(0) - 1
    return logits[rank.view_as(keep)[rows, index]]


def token_logits(model, batch: dict) -> torch.Tensor:
    """(T, V): the logits that predict each continuation token, in packing order."""
    p = batch["packing"]
    return forward_at(model, batch, p["row"], p["index"])


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[target] per row, in float32 at least."""
    logits = at_least_fp32(logits)
    return logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def slot_sums(values: torch.Tensor, batch: dict) -> torch.Tensor:
    """Per-token values summed per slot (slots are numbered 0..n-1)."""
    slot = batch["packing"]["slot"]
    n = len(batch["packing"]["last_row"])
    return values.new_zeros(n).index_add(0, slot, values)


def continuation_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of each continuation's token log-probs, and its number of tokens, per slot."""
    p = batch["packing"]
    logps = token_logps(token_logits(model, batch), p["target"])
    return slot_sums(logps, batch), slot_sums(torch.ones_like(logps), batch)


def token_weights(batch: dict) -> torch.Tensor:
    """(B, L): how many plain rows [prompt | continuation] hold each token: a prompt token one per continuation
    of its document, a continuation token one, padding none."""
    segment = batch["packing"]["segment"]
    weights = (segment > 0).long()
    for r, s, prompt_end, e in batch["packing"]["spans"].tolist():
        weights[r, s:prompt_end] = segment[r, s:e].amax().clamp(min=1)
    return weights


def continuation_logps_and_router(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`continuation_logps`, and from the same forward the MoE routers' load-balancing loss over the batch's
    tokens, each counted as often as plain rows hold it (`token_weights`): the value TRL adds on its rows."""
    with moe.captured_router_logits(model) as router_logits:
        total, count = continuation_logps(model, batch)
    return total, count, moe.load_balancing_loss(model, router_logits, token_weights(batch))


def last_logits(model, batch: dict) -> torch.Tensor:
    """(slots, V): the logits after each continuation's last token (the next-token distribution)."""
    p = batch["packing"]
    return forward_at(model, batch, p["last_row"], p["last_index"])
