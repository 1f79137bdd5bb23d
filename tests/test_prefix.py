"""The shared-prefix paths equal the plain ones on every family: a prompt forwarded once with its answers (or
questions, or samples) continuing it gives the log-probs, gradients, P(yes) and samples of one row per text
(`bench/plain_rows.py` keeps those plain paths as the reference)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from tiny_archs import ARCHS, random_image

from vlalign.feedback.labeler import LabeledClaim
from vlalign.models import prefix
from vlalign.models.batching import to_device
from vlalign.models.generate import Decoding, generate
from vlalign.models.moe import is_moe
from vlalign.models.scoring import score_responses, yes_probability
from vlalign.train.columns import Columns
from vlalign.train.examples import PreferenceExample
from vlalign.train.preference import batch_rows, split_columns

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import plain_rows  # noqa: E402

INSTRUCTIONS = ["describe the image.", "is there a red circle?", "what color is the square?"]
CHOSEN = ["there is a red circle.", "yes", "it is blue."]
REJECTED = ["a blue square and a star on the left.", "no, there is a green triangle.", "red"]
QUESTIONS = ["is there a red circle?", "is there a blue square on the left?", "is it yellow?", "is there a star?"]


@pytest.fixture(scope="module")
def built():
    return {}


def _model(built, arch: str):
    if arch not in built:
        built[arch] = ARCHS[arch]()
    return built[arch]


@pytest.fixture
def images() -> list:
    return [random_image(i, size=32 + 8 * i) for i in range(len(INSTRUCTIONS))]


def _examples(images) -> list[PreferenceExample]:
    return [PreferenceExample(f"e{i}", images[i], INSTRUCTIONS[i], CHOSEN[i], REJECTED[i]) for i in range(len(images))]


def _grads(model) -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return out


# Gemma 4's tiny model (five layers, per-layer embeddings, scaled embeddings, shared keys and values) carries
# float32 rounding further: its gradients agree to 1e-4 of their largest entry here, and to 1e-6 in float64
# (test_pair_rows_are_exact_in_float64).
GRADIENT_TOLERANCE = {"gemma4": 5e-4}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pair_rows_give_the_log_probs_and_gradients_of_two_rows(arch, built, images):
    """One row per pair (prompt, chosen, rejected) against two rows per pair: sums equal to 1e-5 (relative to
    their size), every gradient to 1e-5 of its largest entry, answer lengths exactly."""
    model, processor = _model(built, arch)
    model.train()
    examples = _examples(images)
    columns = Columns()
    batch = batch_rows(processor, examples, columns)
    assert batch["input_ids"].shape[0] == 1 and len(batch["packing"]["spans"]) == len(examples)  # a document per pair
    assert bool(batch["attention_mask"].all())  # and no padding
    total, count = prefix.continuation_logps(model, batch)
    total.sum().backward()
    shared = _grads(model)
    plain = _plain_logps(model, processor, examples)
    plain.sum().backward()
    reference = _grads(model)
    model.eval()
    torch.testing.assert_close(total, plain, rtol=1e-5, atol=1e-5 * (10 if arch in GRADIENT_TOLERANCE else 1))
    by_column = split_columns(count, columns)
    tok = processor.tokenizer
    assert by_column["chosen"].tolist() == [len(tok(c, add_special_tokens=False)["input_ids"]) + 1 for c in CHOSEN]
    assert shared.keys() == reference.keys() and reference
    tolerance = GRADIENT_TOLERANCE.get(arch, 1e-5)
    for name, g in reference.items():
        torch.testing.assert_close(shared[name], g, rtol=1e-5, atol=tolerance * max(1.0, float(g.abs().max())),
                                   msg=name)


def _plain_logps(model, processor, examples) -> torch.Tensor:
    pairs = [(c, e) for c in ("chosen", "rejected") for e in examples]
    return plain_rows.sequence_logps(model, processor, [e.image for _, e in pairs], [e.instruction for _, e in pairs],
                                     [Columns().text(c, e) for c, e in pairs])


@pytest.mark.parametrize("arch", list(ARCHS))
def test_pair_rows_are_exact_in_float64(arch, images):
    """In float64 the packed row and the plain rows agree to rounding (log-probs to 1e-10, gradients to 1e-6 of
    their largest entry, as transformers' norms and softmaxes round through float32 even in a float64 model):
    the mask, positions and token types say the same thing, not nearly the same thing."""
    model, processor = ARCHS[arch]()
    model = model.double().train()
    if is_moe(model):
        model.set_experts_implementation("eager")  # the default grouped matmul takes no float64
    examples = _examples(images)
    total, _ = prefix.continuation_logps(model, to_device(batch_rows(processor, examples, Columns()), "cpu",
                                                                   torch.float64))
    total.sum().backward()
    shared = _grads(model)
    plain = _plain_logps(model, processor, examples)
    plain.sum().backward()
    torch.testing.assert_close(total, plain, rtol=0, atol=1e-10)
    for name, g in _grads(model).items():
        torch.testing.assert_close(shared[name], g, rtol=0, atol=1e-6 * max(1.0, float(g.abs().max())), msg=name)


def test_a_corrupted_image_is_its_own_prefix(built, images):
    """mDPO's chosen_corrupt reads the chosen answer under another image: a second row, the same values as
    plain rows."""
    model, processor = _model(built, "llava")
    examples = _examples(images)
    grey = Columns(("chosen", "rejected", "chosen_corrupt"), (("chosen_corrupt", lambda e: e.image.convert("L")
                                                                .convert("RGB")),), key="grey")
    batch = batch_rows(processor, examples, grey)
    assert len(batch["packing"]["spans"]) == 2 * len(examples)
    with torch.no_grad():
        total, _ = prefix.continuation_logps(model, batch)
        corrupt = plain_rows.sequence_logps(model, processor, [e.image.convert("L").convert("RGB") for e in examples],
                                            INSTRUCTIONS, CHOSEN)
    torch.testing.assert_close(split_columns(total, grey)["chosen_corrupt"], corrupt, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_questions_about_one_image_share_it(arch, built, images):
    """The labeler's questions about one image continue one prompt of it; P(yes) equals one forward per
    question to 1e-4 and every accept / reject decision is the same."""
    model, processor = _model(built, arch)
    rows_images = [images[0]] * len(QUESTIONS) + [images[1]] * 2
    questions = QUESTIONS + QUESTIONS[:2]
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(1))
    try:
        shared = yes_probability(model, processor, rows_images, questions)
    finally:
        hook.remove()
    plain = plain_rows.yes_probability(model, processor, rows_images, questions)
    assert shared == pytest.approx(plain, abs=1e-4)
    for holds in (True, False):
        assert [LabeledClaim("", q, p, holds).rejected for q, p in zip(questions, shared, strict=True)] == \
            [LabeledClaim("", q, p, holds).rejected for q, p in zip(questions, plain, strict=True)]
    assert rows == [1]  # one forward for all six questions
    groups = prefix.questions_groups(processor, images[0], QUESTIONS, list(range(len(QUESTIONS))))
    assert len(groups) == 1 and len(groups[0].continuations) == len(QUESTIONS)
    assert (groups[0].prompt["input_ids"] == processor.image_token_id).any() or "token_type_ids" in groups[0].prompt


@pytest.mark.parametrize("arch", list(ARCHS))
def test_samples_from_one_prefill_are_todays_samples(arch, built, images):
    """n seeded samples of a prompt from one prefill: exactly the texts of one prefill per sample."""
    model, processor = _model(built, arch)
    decoding = Decoding(max_new_tokens=6, temperature=1.0)
    rows_images = [images[0]] * 4 + [images[1]] * 3
    instructions = [INSTRUCTIONS[0]] * 4 + [INSTRUCTIONS[1]] * 3
    seeds = list(range(100, 107))
    shared = generate(model, processor, rows_images, instructions, decoding, seeds=seeds)
    assert shared == plain_rows.generate(model, processor, rows_images, instructions, decoding, seeds=seeds)
    assert len(set(shared[:4])) > 1


@pytest.mark.parametrize("arch", ["llava", "gemma3", "qwen3_vl_moe", "gemma4"])
def test_best_of_n_scores_continue_one_prompt(arch, built, images):
    """score_responses packs the answers to one prompt after it (best-of-N's samples)."""
    model, processor = _model(built, arch)
    answers = CHOSEN + REJECTED
    rows_images, instructions = [images[0]] * len(answers), [INSTRUCTIONS[0]] * len(answers)
    scores = score_responses(model, processor, rows_images, instructions, answers)
    with torch.no_grad():
        plain = plain_rows.sequence_logps(model, processor, rows_images, instructions, answers)
    assert [s.sum_logp for s in scores] == pytest.approx(plain.tolist(), abs=1e-4)


def test_models_that_cannot_share_fall_back_to_one_row_per_text(built, images, monkeypatch):
    """The packed attention stands in for sdpa and eager only (not FlashAttention), and a family not in
    SHARED_FAMILIES is not trusted with it: both get one row per continuation (the plain forward), with the
    same values."""
    model, processor = _model(built, "llava")
    assert prefix.shares_prefix(model)
    config = model.config
    monkeypatch.setattr(config, "_attn_implementation", "flash_attention_2")
    assert not prefix.shares_prefix(model)
    assert "flash_attention_2 attention is not one the packed attention stands in for" in prefix.unshared_reason(model)
    monkeypatch.undo()
    monkeypatch.setattr(prefix, "SHARED_FAMILIES", frozenset({"qwen2_vl"}))
    assert not prefix.shares_prefix(model)
    assert "the llava family is not one whose shared-prefix rows are tested" in prefix.unshared_reason(model)
    examples = _examples(images)
    batch = batch_rows(processor, examples, Columns(), shared=False)
    assert batch["input_ids"].shape[0] == 2 * len(examples)
    with torch.no_grad():
        total, _ = prefix.continuation_logps(model, batch)
        plain = plain_rows.sequence_logps(model, processor, [e.image for e in examples] * 2, INSTRUCTIONS * 2,
                                          CHOSEN + REJECTED)
        torch.testing.assert_close(total, plain, rtol=1e-6, atol=1e-6)
        with pytest.raises(ValueError, match="shared=False"):
            prefix.continuation_logps(model, batch_rows(processor, examples, Columns()))
    probs = yes_probability(model, processor, [images[0]] * 3, QUESTIONS[:3])
    assert probs == pytest.approx(plain_rows.yes_probability(model, processor, [images[0]] * 3, QUESTIONS[:3]),
                                  abs=1e-5)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_gradient_checkpointing_gives_the_same_gradients(arch, images):
    """The packed row trains under gradient checkpointing (no key/value cache is involved)."""
    model, processor = ARCHS[arch](seed=3)
    batch = batch_rows(processor, _examples(images), Columns())
    model.train()
    prefix.continuation_logps(model, batch)[0].sum().backward()
    plain = _grads(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    prefix.continuation_logps(model, batch)[0].sum().backward()
    for name, g in _grads(model).items():
        torch.testing.assert_close(g, plain[name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_bf16_pair_rows_train(arch, images):
    """Under the runtime's bf16 the mask takes the model's dtype, and the packed row scores as bf16 plain rows do
    (to bf16's rounding) and backpropagates."""
    model, processor = ARCHS[arch](seed=4)
    model = model.to(torch.bfloat16).train()
    examples = _examples(images)
    batch = to_device(batch_rows(processor, examples, Columns()), "cpu", torch.bfloat16)
    total, _ = prefix.continuation_logps(model, batch)
    total.sum().backward()
    shared = _grads(model)
    plain = _plain_logps(model, processor, examples)
    plain.sum().backward()
    assert shared.keys() == _grads(model).keys() and all(torch.isfinite(g).all() for g in shared.values())
    torch.testing.assert_close(total.detach(), plain.detach(), rtol=2e-2, atol=0.5)


def test_a_fallback_says_why_once_per_model(built, images, monkeypatch):
    """Gemma 4 reading its text both ways (use_bidirectional_attention: all) cannot share a prompt: it scores one
    row per text, as plain rows do, after one notice naming the reason, given once per model."""
    told: list[str] = []
    monkeypatch.setattr(prefix, "warn", told.append)
    model, processor = ARCHS["gemma4"](bidirectional="all")
    other, _ = ARCHS["gemma4"](bidirectional="all")
    questions = QUESTIONS[:3]
    probs = yes_probability(model, processor, [images[0]] * 3, questions)
    yes_probability(model, processor, [images[0]] * 3, questions)
    assert len(told) == 1 and "Gemma4ForConditionalGeneration" in told[0] and "use_bidirectional_attention: all" \
        in told[0] and "\n" not in told[0]
    assert probs == pytest.approx(plain_rows.yes_probability(model, processor, [images[0]] * 3, questions), abs=1e-5)
    prefix.shares_prefix(other)
    assert len(told) == 2  # another model is told anew
    assert prefix.shares_prefix(_model(built, "gemma4")[0]) and len(told) == 2  # the vision-only kind shares


def test_gemma4_reads_an_image_both_ways_in_its_sliding_layers_only(built, images, monkeypatch):
    """The tiny Gemma 4 tells the masks apart: reading images both ways in every layer, or in none, scores
    differently from its plain rows; the sliding layers only (what it does) scores the same."""
    model, processor = _model(built, "gemma4")
    examples = _examples(images)
    batch = batch_rows(processor, examples, Columns())
    with torch.no_grad():
        plain = _plain_logps(model, processor, examples)
        torch.testing.assert_close(prefix.continuation_logps(model, batch)[0], plain, rtol=1e-5, atol=1e-4)
        for wrong in (lambda text: prefix.ALL_LAYERS, lambda text: frozenset()):
            monkeypatch.setitem(prefix.BIDIRECTIONAL_IMAGES, "gemma4", wrong)
            assert float((prefix.continuation_logps(model, batch)[0] - plain).abs().max()) > 1e-2


@pytest.mark.parametrize("arch", ["qwen3_vl", "qwen3_vl_moe"])
def test_deepstack_features_land_on_the_shared_prompts_image_tokens(arch, built, images, monkeypatch):
    """Qwen3-VL adds features of early vision blocks to the image tokens' states in early decoder layers. In a
    packed row they land on the prompt's image tokens, every one of them and nothing else; and they matter to
    the tiny model (without them the log-probs move), so the equality with plain rows covers them."""
    model, processor = _model(built, arch)
    examples = _examples(images)
    batch = batch_rows(processor, examples, Columns())
    text = _inner_text_model(model)
    seen = []
    real = text._deepstack_process
    monkeypatch.setattr(text, "_deepstack_process", lambda h, where, embeds: seen.append(where) or real(h, where, embeds))
    with torch.no_grad():
        total, _ = prefix.continuation_logps(model, batch)
    image = batch["input_ids"] == model.config.image_token_id
    assert len(seen) == len(model.config.vision_config.deepstack_visual_indexes)
    for where in seen:
        assert torch.equal(where, image) and (batch["packing"]["segment"][where] == 0).all()
    torch.testing.assert_close(total, _plain_logps(model, processor, examples), rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(text, "_deepstack_process", lambda h, where, embeds: h)
    with torch.no_grad():
        assert float((prefix.continuation_logps(model, batch)[0] - total).abs().max()) > 1e-2


def _inner_text_model(model):
    return model.model.language_model
