"""Packed rows (`vlalign.models.packing`): documents of different sizes (a group of n answers, a pair, a single
answer) one after another in one row with no padding give exactly the log-probs, the training loss and the
gradients of one row per answer on every family; no tensor of the row's length squared (a mask of the row,
attention weights over it) is made in the forward or the backward; the model's other calls are unchanged."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_archs import ARCHS, random_image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from vlalign.models import packing, prefix
from vlalign.models.batching import encode, model_inputs, pad_id, to_device
from vlalign.train.preference import Columns, PreferenceExample, make_loss, pair_collate, reference_logps
from vlalign.train.settings import TrainConfig

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
    _close_grads(packed, reference)


def _close_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys() and want
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-5, atol=1e-5 * max(1.0, float(g.abs().max())), msg=name)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_training_loss_and_its_gradients_are_those_of_unpacked_rows(arch):
    """Every family: the objective `vlalign dpo` trains (sigmoid DPO against cached reference values, plus the
    NLL term, plus the router term where a mixture of experts weighs it) on one packed row, a document per
    pair, equals it on one right-padded row per answer, and so do its metrics and gradients."""
    model, processor = ARCHS[arch](seed=12)
    model.train()
    images = _images()
    items = [(PreferenceExample(f"e{i}", images[i], q, answers[0], answers[-1] if len(answers) > 1 else "red"),
              {"chosen": -4.0 - i, "rejected": -6.0 + 2 * i}) for i, (q, answers) in enumerate(DOCUMENTS)]
    loss_fn = make_loss(TrainConfig(loss={"sigmoid": 1.0, "sft": 1.0}, beta=0.1), Columns())
    out = {}
    for shared in (True, False):
        batch = pair_collate(processor, Columns(), shared)(items, 0)
        rows = batch["input_ids"].shape[0]
        loss, metrics = loss_fn(model, batch)
        loss.backward()
        out[shared] = rows, loss.detach(), metrics, _grads(model)
    (rows, loss, metrics, grads), (plain_rows_, plain_loss, plain_metrics, plain_grads) = out[True], out[False]
    assert rows == 1 and plain_rows_ == 2 * len(items)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert metrics.keys() == plain_metrics.keys() and metrics == pytest.approx(plain_metrics, rel=1e-4, abs=1e-5)
    _close_grads(grads, plain_grads)


class _Made(TorchDispatchMode):
    """The shape of every tensor the operations inside make, forward and backward, with the number of
    elements its storage holds (a view or an expanded number holds few)."""

    def __init__(self):
        super().__init__()
        self.made: list[tuple[tuple[int, ...], int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.made += [(tuple(t.shape), t.untyped_storage().nbytes() // t.element_size())
                      for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out

    def squares(self, length: int) -> list[tuple[int, ...]]:
        """The tensors with two dimensions of `length` that hold `length`^2 elements or more (a model width
        may exceed a tiny row's length, so a dimension merely as large is not counted)."""
        return [shape for shape, stored in self.made if shape.count(length) >= 2 and stored >= length * length]


# the kinds of attention the packed rows meet (1-D, M-RoPE, sliding with bidirectional images, Gemma 4's
# layer types, experts) in the fast suite; every other family under -m slow
SQUARES_FAST = ("llava", "qwen2_vl", "gemma3", "gemma4", "qwen3_vl_moe")


@pytest.mark.parametrize("arch", [a if a in SQUARES_FAST else pytest.param(a, marks=pytest.mark.slow) for a in ARCHS])
def test_no_tensor_of_the_rows_length_squared_is_made(arch):
    """Every family: training on a packed row of length L makes no tensor with two dimensions of L and L^2
    elements (no mask of the row, no attention weights over it), in the forward or the backward. The
    same check on a padded batch of plain rows of length l finds the l x l mask or weights it makes, so it is
    not blind to them."""
    model, processor = ARCHS[arch](seed=13)
    model.train()
    groups = _groups(processor, _images())
    batch = prefix.collate(groups, pad_id(processor))
    with _Made() as made:
        prefix.continuation_logps(model, batch)[0].sum().backward()
    assert len(made.made) > 100 and made.squares(batch["input_ids"].shape[1]) == []
    plain = prefix.collate(groups, pad_id(processor), shared=False)
    with _Made() as made:
        prefix.continuation_logps(model, plain)[0].sum().backward()
    assert made.squares(plain["input_ids"].shape[1])


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
    _close_grads(packed, _grads(model))


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
    """The decoder gets a stand-in mask that is one number; the attention's own masks span a document's prompt
    and first answer (call A) or a prompt and one later answer (call B), never the row; every decoder layer reads
    the packed row."""
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
    calls = [v for v in rows._cache.values() if isinstance(v, tuple)]
    assert len(calls) == 2 and all(a is not None and b is not None for a, b in calls)  # sliding and full layers
    for a, b in calls:  # Gemma's images read both ways: call A has a mask too
        assert a.shape == (len(rows.spans), 1, plan.first, plan.first) and plan.first <= longest
        # call B: each later continuation against its prompt and itself, not its document's other answers
        assert b.shape == (len(plan.later), 1, plan.rest, plan.prompt + plan.rest) == (4, 1, plan.rest, b.shape[-1])
        assert plan.prompt + plan.rest < longest


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
