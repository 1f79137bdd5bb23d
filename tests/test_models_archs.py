"""The model layer on tiny random-weight models of every family the README names (tests/tiny_archs.py).

Batching, scoring, P(yes), seeded generation, saving and loading, freezing, LoRA and one DPO step must
work on each without architecture-specific code in vlalign.models.
"""

from __future__ import annotations

import math

import pytest
import torch
from tiny_archs import ARCHS, random_image

from vlalign.models.batching import IGNORE, chat_prompt, encode, model_inputs
from vlalign.models.families import FAMILIES
from vlalign.models.generate import Decoding, generate
from vlalign.models.load import load, save
from vlalign.models.lora import (
    apply_lora,
    freeze_vision,
    is_vision_parameter,
    language_targets,
    reference_context,
)
from vlalign.models.moe import is_moe, router_coefficient
from vlalign.models.scoring import NO_WORDS, YES_WORDS, answer_token_ids, score_responses, yes_probability
from vlalign.models.settings import LoraSettings
from vlalign.train.examples import PreferenceExample
from vlalign.train.fit import fit
from vlalign.train.settings import OptimConfig, TrainConfig

INSTRUCTIONS = ["describe the image.", "is there a red circle?", "what color is the square?",
                "describe this picture."]
RESPONSES = ["there is a red circle.", "yes", "it is blue.", "this picture shows a green triangle and a star."]
QUESTIONS = ["is there a red circle?", "is there a blue square on the left?", "is it yellow?"]
VISION_MODULE = {"llava": "vision_tower", "qwen2_vl": "visual", "idefics3": "vision_model", "llava_next": "vision_tower",
                 "qwen2_5_vl": "visual", "smolvlm": "vision_model", "gemma3": "vision_tower",
                 "llava_onevision": "vision_tower", "qwen3_vl": "visual", "qwen3_vl_moe": "visual",
                 "internvl": "vision_tower", "gemma4": "vision_tower", "glm4v": "visual", "glm46v": "visual",
                 "llava_onevision1_5": "visual"}

pytestmark = pytest.mark.parametrize("arch", list(ARCHS))


@pytest.fixture(scope="module")
def built():
    """One model per architecture for the read-only tests (tests that change a model build their own)."""
    return {name: build() for name, build in ARCHS.items()}


@pytest.fixture
def images() -> list:
    # different sizes, so per-image token counts and pixel tensors differ where the architecture allows
    return [random_image(i, size=32 + 8 * i) for i in range(len(INSTRUCTIONS))]


def _logits(model, batch: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**model_inputs(batch)).logits


def test_encode_labels_only_response_and_eos(arch, built, images):
    model, processor = built[arch]
    tok = processor.tokenizer
    batch = encode(processor, images, INSTRUCTIONS, RESPONSES)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert not (batch["input_ids"] == tok.unk_token_id).any(), "the tiny tokenizer must cover the test text"
    for i, (image, instruction, response) in enumerate(zip(images, INSTRUCTIONS, RESPONSES, strict=True)):
        prompt = processor(images=[image], text=[chat_prompt(processor, instruction)],
                           return_tensors="pt")["input_ids"][0]
        resp = tok(response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        n = int(batch["attention_mask"][i].sum())
        assert n == len(prompt) + len(resp)
        assert batch["input_ids"][i, :len(prompt)].tolist() == prompt.tolist()
        assert batch["input_ids"][i, len(prompt):n].tolist() == resp
        assert (batch["labels"][i, :len(prompt)] == IGNORE).all()
        assert batch["labels"][i, len(prompt):n].tolist() == resp
        assert (batch["labels"][i, n:] == IGNORE).all() and (batch["attention_mask"][i, n:] == 0).all()
        # the prompt holds the image placeholder tokens the architecture expands to
        image_token = model.config.image_token_id
        assert (batch["input_ids"][i, :len(prompt)] == image_token).sum() >= 1
        assert (batch["input_ids"][i, len(prompt):] != image_token).all()
    for key in ("mm_token_type_ids", "token_type_ids"):
        if key in batch:  # multimodal token types mark the image span, never the response or padding
            assert (batch[key][batch["input_ids"] == model.config.image_token_id] == 1).all()
            assert (batch[key][(batch["labels"] != IGNORE) | (batch["attention_mask"] == 0)] == 0).all()


def test_score_sum_mean_match_manual_log_softmax(arch, built, images):
    model, processor = built[arch]
    scores = score_responses(model, processor, images, INSTRUCTIONS, RESPONSES, batch_size=len(RESPONSES))
    tok = processor.tokenizer
    for i, s in enumerate(scores):
        assert s.n_tokens == len(tok(RESPONSES[i], add_special_tokens=False)["input_ids"]) + 1
        assert s.mean_logp == pytest.approx(s.sum_logp / s.n_tokens, rel=1e-6)
        assert s.sum_logp < 0
        # by hand: one unpadded row, log_softmax of the logits one position before each response token
        single = encode(processor, [images[i]], [INSTRUCTIONS[i]], [RESPONSES[i]])
        logp = _logits(model, single)[0].float().log_softmax(-1)
        labels = single["labels"][0]
        positions = (labels != IGNORE).nonzero().flatten()
        manual = sum(float(logp[p - 1, labels[p]]) for p in positions)
        assert s.sum_logp == pytest.approx(manual, abs=1e-4)


def test_batched_scoring_equals_one_by_one(arch, built, images):
    """Right padding leaves every row's positions as in its own forward pass."""
    model, processor = built[arch]
    batched = score_responses(model, processor, images, INSTRUCTIONS, RESPONSES, batch_size=len(RESPONSES))
    single = score_responses(model, processor, images, INSTRUCTIONS, RESPONSES, batch_size=1)
    for b, s in zip(batched, single, strict=True):
        assert b.n_tokens == s.n_tokens
        assert b.sum_logp == pytest.approx(s.sum_logp, abs=1e-4)
    assert len({round(s.sum_logp, 3) for s in single}) == len(single)  # the scores are not all alike


def test_yes_probability_matches_softmax_over_yes_no(arch, built, images):
    model, processor = built[arch]
    imgs = images[:len(QUESTIONS)]
    probs = yes_probability(model, processor, imgs, QUESTIONS, batch_size=len(QUESTIONS))
    yes = answer_token_ids(processor.tokenizer, YES_WORDS)
    no = answer_token_ids(processor.tokenizer, NO_WORDS)
    assert yes and no and not set(yes) & set(no)
    for i, p in enumerate(probs):
        assert 0.0 <= p <= 1.0
        last = _logits(model, encode(processor, [imgs[i]], [QUESTIONS[i]]))[0, -1].float().softmax(-1)
        manual = float(last[yes].sum() / (last[yes].sum() + last[no].sum()))
        assert p == pytest.approx(manual, abs=1e-5)
    one_by_one = yes_probability(model, processor, imgs, QUESTIONS, batch_size=1)
    assert probs == pytest.approx(one_by_one, abs=1e-5)


def test_generate_seeded_sampling_and_greedy(arch, built, images):
    model, processor = built[arch]
    sample = Decoding(max_new_tokens=6, temperature=1.0)
    img, q = images[0], INSTRUCTIONS[0]
    seeds = [11, 12, 13, 14, 11]
    first = generate(model, processor, [img] * 5, [q] * 5, sample, seeds=seeds)
    again = generate(model, processor, [img] * 5, [q] * 5, sample, seeds=seeds)
    assert first == again  # same seeds, same text
    assert first[0] == first[4]  # a sample depends on its seed, not on its place in the batch
    assert len(set(first[:4])) > 1  # different seeds give different samples
    # ... nor on what else shared its batch
    alone = generate(model, processor, [img], [q], sample, seeds=[13])
    assert alone == [first[2]]
    with pytest.raises(ValueError, match="seed"):
        generate(model, processor, [img], [q], sample)

    greedy = Decoding(max_new_tokens=6)
    out = generate(model, processor, images, INSTRUCTIONS, greedy)
    assert out == generate(model, processor, images, INSTRUCTIONS, greedy)
    # left-padded batched greedy decoding equals unpadded one-by-one decoding
    assert out == [generate(model, processor, [i], [q], greedy)[0] for i, q in zip(images, INSTRUCTIONS, strict=True)]
    assert all(isinstance(t, str) for t in out)


def test_save_load_round_trip_gives_identical_logits(arch, built, images, tmp_path):
    model, processor = built[arch]
    save(model, processor, tmp_path / arch)
    model2, processor2 = load(tmp_path / arch, dtype="float32", device="cpu")
    assert type(model2) is type(model) and type(processor2) is type(processor)
    assert chat_prompt(processor2, INSTRUCTIONS[0]) == chat_prompt(processor, INSTRUCTIONS[0])
    batch = encode(processor, images, INSTRUCTIONS, RESPONSES)
    batch2 = encode(processor2, images, INSTRUCTIONS, RESPONSES)
    assert batch.keys() == batch2.keys()
    for k in batch:
        assert torch.equal(batch[k], batch2[k]), k
    assert torch.equal(_logits(model, batch), _logits(model2, batch2))


def test_freeze_vision_then_lora_reference_is_base(arch, images):
    model, processor = ARCHS[arch](seed=1)
    vision = [n for n, _ in model.named_parameters() if is_vision_parameter(n)]
    # LLaVA-NeXT's and OneVision's image_newline (a learned embedding after each row of tiles) counts as vision
    assert vision and all(VISION_MODULE[arch] in n.split(".") or n == "model.image_newline" for n in vision)
    assert freeze_vision(model) == len(vision)
    for name, param in model.named_parameters():
        assert param.requires_grad == (not is_vision_parameter(name)), name

    targets = language_targets(model)
    assert targets and not any(VISION_MODULE[arch] in t.split(".") for t in targets)
    batch = encode(processor, images, INSTRUCTIONS, RESPONSES)
    base = _logits(model, batch)
    lora = apply_lora(model, LoraSettings(r=4))
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert torch.allclose(_logits(lora, batch), base, atol=1e-5)  # a fresh adapter (B = 0) changes nothing
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    adapted = _logits(lora, batch)
    assert not torch.allclose(adapted, base, atol=1e-3)
    with reference_context(lora) as ref:
        assert torch.allclose(_logits(ref, batch), base, atol=1e-5)
    assert torch.allclose(_logits(lora, batch), adapted)  # adapters back on afterwards


# what LoRA adapts by default, family by family: GLM fuses its MLP's gate and up projections; a mixture of
# experts' experts are 3-D tensors that no LoRA adapter wraps, so its adapters sit on attention
ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
FAMILIES_BY_TYPE = {f.model_type: f for f in FAMILIES}
LORA_TARGETS = {"glm4v": ATTENTION | {"gate_up_proj", "down_proj"}, "glm46v": ATTENTION | {"gate_up_proj", "down_proj"},
                "qwen3_vl_moe": ATTENTION}


def test_the_family_table_says_which_decoders_slide(arch, built):
    """The README's 'dynamic cache' is said of exactly the families whose decoders have sliding layers, which
    is what sampling decides by (models/generate.py keeps their dynamic cache)."""
    model, _ = built[arch]
    kinds = set(getattr(model.config.get_text_config(decoder=True), "layer_types", None) or ())
    assert FAMILIES_BY_TYPE[arch].sliding == bool(kinds - {"full_attention"})


def test_lora_adapts_the_familys_decoder_projections(arch, built):
    model, _ = built[arch]
    targets = language_targets(model)
    assert {t.rsplit(".", 1)[-1] for t in targets} == LORA_TARGETS.get(arch, ATTENTION | {"gate_proj", "up_proj",
                                                                                           "down_proj"})
    assert not any(is_vision_parameter(t) for t in targets)


@pytest.mark.parametrize("lora", [None, LoraSettings(r=4)], ids=["full", "lora"])
def test_one_dpo_step_changes_trainable_weights(arch, lora, images):
    model, processor = ARCHS[arch](seed=2)
    examples = [PreferenceExample(id=f"p{i}", image=images[i], instruction=INSTRUCTIONS[i], chosen=RESPONSES[i],
                                  rejected=RESPONSES[(i + 1) % len(RESPONSES)]) for i in range(2)]
    config = TrainConfig(batch_size=2, epochs=1.0, lora=lora, optim=OptimConfig(lr=1e-2, warmup_ratio=0.0, log_every=1))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained, history = fit(model, processor, examples, config)
    assert len(history) == 1
    assert history[0]["loss_sigmoid"] == pytest.approx(math.log(2), abs=1e-4)  # policy == reference at step 1
    # a mixture of experts adds its routers' load-balancing term with the checkpoint's weight
    router = router_coefficient(model, None) * history[0]["loss_router"] if is_moe(model) else 0.0
    assert history[0]["loss"] == pytest.approx(math.log(2) + router, abs=1e-4)
    after = dict(trained.named_parameters())
    changed = set()
    for name, param in after.items():
        key = name.replace("base_model.model.", "").replace(".base_layer", "")
        if key in before and not torch.equal(before[key], param.detach()):
            changed.add(key)
        if "lora_B" in name:
            assert param.detach().abs().sum() > 0, name  # LoRA B starts at zero; the step moved it
    if lora is None:
        assert changed and not any(is_vision_parameter(n) for n in changed)  # vision frozen, the rest learns
    else:
        assert not changed  # base weights stay frozen under LoRA


def test_the_lm_head_runs_only_where_tokens_are_scored(arch, built, images):
    """Log-probs run the LM head at the positions that predict answer tokens, P(yes) at the questions' last
    positions: never over the prompt's image tokens or the padding."""
    model, processor = built[arch]
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: rows.append(o.shape[:-1].numel()))
    try:
        score_responses(model, processor, images, INSTRUCTIONS, RESPONSES, batch_size=len(RESPONSES))
        yes_probability(model, processor, images[:len(QUESTIONS)], QUESTIONS, batch_size=len(QUESTIONS))
    finally:
        hook.remove()
    batch = encode(processor, images, INSTRUCTIONS, RESPONSES)
    assert rows == [int((batch["labels"] != IGNORE).sum()), len(QUESTIONS)]
