"""Packed rows (`vlalign.models.packing`): documents of different sizes (a group of n answers, a pair, a single
answer) one after another in one row with no padding give exactly the log-probs and gradients of one row per
answer, the attention never builds a mask of the row, and the model's other calls are unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_archs import ARCHS, random_image

from vlalign.models import packing, prefix
from vlalign.models.batching import encode, model_inputs, pad_id, to_device
from vlalign.train.preference import Columns, PreferenceExample, reference_logps

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import plain_rows  # noqa: E402

# (instruction, answers): a group of four, a pair, one answer; lengths differ within and across documents
DOCUMENTS = [("describe the image.", ["a red circle.", "there is a blue square and a star on the left.", "no.",
                                      "it is a green triangle on the top right of the picture."]),
             ("is there a red circle?", ["yes", "no, there is a yellow star."]),
             ("what color is the square?", ["it is blue and it is on the bottom left."])]


def _groups(processor, images):
    slots = iter(range(100))
    return [prefix.answers_group(processor, image, q, answers, [next(slots) for _ in answers])
            for image, (q, answers) in zip(images, DOCUMENTS, strict=True)]


def _plain(model, processor, images):
    rows = [(image, q, a) for image, (q, answers) in zip(images, DOCUMENTS, strict=True) for a in answers]
    return plain_rows.sequence_logps(model, processor, *map(list, zip(*rows, strict=True)))


def _images():
    return [random_image(10 + i, size=32 + 8 * i) for i in range(len(DOCUMENTS))]


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


@pytest.mark.parametrize("arch", list(ARCHS))
def test_documents_of_any_size_in_one_row_give_the_plain_rows(arch):
    """Every family: one row without padding (its length is the sum of the prompts and answers) scores every
    answer as its own row does, to 1e-5, and backpropagates the same gradients."""
    model, processor = ARCHS[arch](seed=5)
    model.train()
    images = _images()
    groups = _groups(processor, images)
    batch = prefix.collate(groups, pad_id(processor))
    tokens = sum(len(g.prompt["input_ids"]) + sum(len(c) for c in g.continuations) for g in groups)
    assert batch["input_ids"].shape == (1, tokens) and bool(batch["attention_mask"].all())
    total, count = prefix.continuation_logps(model, batch)
    total.sum().backward()
    packed = _grads(model)
    plain = _plain(model, processor, images)
    plain.sum().backward()
    reference = _grads(model)
    torch.testing.assert_close(total, plain, rtol=1e-5, atol=1e-5)
    assert count.tolist() == [len(c) for g in groups for c in g.continuations]
    assert packed.keys() == reference.keys() and reference
    for name, g in reference.items():
        torch.testing.assert_close(packed[name], g, rtol=1e-5, atol=1e-5 * max(1.0, float(g.abs().max())), msg=name)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "gemma3"])
def test_documents_of_one_length_lie_side_by_side(arch):
    """Documents of equal length (same-size images, answers of equal lengths) take the path without gathers:
    the same log-probs and gradients as plain rows."""
    model, processor = ARCHS[arch](seed=11)
    model.train()
    images = [random_image(20 + i, size=40) for i in range(3)]
    answers = [["a red circle.", "there is a blue square."], ["a blue star.", "there is a green circle."],
               ["a green square.", "there is a red triangle."]]
    groups = [prefix.answers_group(processor, image, "describe the image.", a, [2 * i, 2 * i + 1])
              for i, (image, a) in enumerate(zip(images, answers, strict=True))]
    batch = prefix.collate(groups, pad_id(processor))
    rows = prefix.packed_rows(model, batch)
    assert rows.plan(torch.device("cpu")).uniform
    total, _ = prefix.continuation_logps(model, batch)
    total.sum().backward()
    packed = _grads(model)
    plain = plain_rows.sequence_logps(model, processor, [im for im in images for _ in range(2)],
                                      ["describe the image."] * 6, [x for a in answers for x in a])
    plain.sum().backward()
    torch.testing.assert_close(total, plain, rtol=1e-5, atol=1e-5)
    for name, g in _grads(model).items():
        torch.testing.assert_close(packed[name], g, rtol=1e-5, atol=1e-5 * max(1.0, float(g.abs().max())), msg=name)


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "gemma3"])
def test_packed_rows_are_exact_in_float64(arch):
    """1-D positions, M-RoPE and Gemma 3's bidirectional images with a sliding window that cuts the prompts:
    in float64 the packed row and the plain rows agree to rounding."""
    model, processor = ARCHS[arch](seed=6)
    model = model.double()
    images = _images()
    with torch.no_grad():
        total, _ = prefix.continuation_logps(model, to_device(prefix.collate(_groups(processor, images),
                                                                             pad_id(processor)), "cpu", torch.float64))
        plain = _plain(model, processor, images)
    torch.testing.assert_close(total, plain, rtol=0, atol=1e-10)


def test_the_attention_builds_no_mask_of_the_row():
    """The decoder gets a stand-in mask that is one number; the attention's own masks span one document's keys
    (the longest document's length, never the row's); every decoder layer reads the packed row."""
    model, processor = ARCHS["gemma3"](seed=7)
    batch = prefix.collate(_groups(processor, _images()), pad_id(processor))
    length = batch["input_ids"].shape[1]
    stand_in = prefix.decoder_masks(model, length, torch.float32, torch.device("cpu"))
    assert all(m.shape == (1, 1, length, length) and m.untyped_storage().nbytes() == 4 for m in stand_in.values())
    layouts = []
    real = packing.Rows.attend

    def attend(self, *a, **k):
        layouts.append(self)
        return real(self, *a, **k)

    with torch.no_grad(), pytest.MonkeyPatch.context() as mp:
        mp.setattr(packing.Rows, "attend", attend)
        prefix.continuation_logps(model, batch)
    rows = layouts[0]
    assert len(layouts) == model.config.text_config.num_hidden_layers and rows.calls == len(layouts)
    plan = rows.plan(torch.device("cpu"))
    longest = max(e - s for s, _, e in rows.spans)
    assert plan.length == longest < length
    masks = [m for v in rows._cache.values() if isinstance(v, tuple) for m in v if m is not None]
    assert masks and all(m.shape[0] == len(rows.spans) and m.shape[-1] <= longest for m in masks)
    assert len(masks) == 4  # both calls of the sliding and the full layers: Gemma's images read both ways


def test_calls_without_packed_rows_are_unchanged():
    """Once the packed attention is installed, a padded batch of plain rows gives the logits it gave before."""
    model, processor = ARCHS["qwen2_vl"](seed=8)
    images = _images()
    batch = model_inputs(encode(processor, images, [q for q, _ in DOCUMENTS], [a[0] for _, a in DOCUMENTS]))
    with torch.no_grad():
        before = model(**batch).logits
        prefix.continuation_logps(model, prefix.collate(_groups(processor, images), pad_id(processor)))
        assert model.config.text_config._attn_implementation.startswith(packing.PREFIX)
        after = model(**batch).logits
    valid = batch["attention_mask"].bool()
    torch.testing.assert_close(after[valid], before[valid], rtol=0, atol=0)
    assert packing.original(model.config) == "sdpa" and prefix.shares_prefix(model)


def test_a_decoder_that_drops_the_packed_rows_is_an_error(monkeypatch):
    """A family whose forward does not hand `vlalign_rows` to its attention would silently attend causally
    over the whole row: the forward counts the layers that read it and refuses."""
    model, processor = ARCHS["llava"](seed=9)
    decoder = model.model.language_model
    real = type(decoder).forward

    def dropping(self, *a, **k):
        k.pop(packing.KWARG, None)
        return real(self, *a, **k)

    monkeypatch.setattr(type(decoder), "forward", dropping)
    with torch.no_grad(), pytest.raises(RuntimeError, match="SHARED_FAMILIES"):
        prefix.continuation_logps(model, prefix.collate(_groups(processor, _images()), pad_id(processor)))


def test_the_reference_pass_is_packed_and_equals_plain_rows(monkeypatch):
    """The cached reference scores every pair's answers in packed rows (one row a batch, a document per
    pair): the values of plain rows."""
    model, processor = ARCHS["qwen2_vl"](seed=10)
    images = _images()
    examples = [PreferenceExample(f"e{i}", images[i], q, answers[0], answers[-1])
                for i, (q, answers) in enumerate(DOCUMENTS)]
    shapes = []
    real = prefix.forward_at

    def forward_at(model, batch, *a):
        shapes.append((batch["input_ids"].shape[0], len(batch["packing"]["spans"])))
        return real(model, batch, *a)

    monkeypatch.setattr(prefix, "forward_at", forward_at)
    ref = reference_logps(model, processor, examples, Columns(), batch_size=2)
    assert shapes == [(1, 2), (1, 1)]
    with torch.no_grad():
        plain = plain_rows.sequence_logps(model, processor, images * 2, [e.instruction for e in examples] * 2,
                                          [e.chosen for e in examples] + [e.rejected for e in examples])
    got = torch.tensor([[ref.row(i)[c] for i in range(len(examples))] for c in ("chosen", "rejected")],
                       dtype=torch.float64).flatten()
    torch.testing.assert_close(got, plain.double(), rtol=1e-5, atol=1e-5)
