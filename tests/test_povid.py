"""POVID: the diffusion-noise schedule, the two-term loss, the noisy-answer log-probs, stage-2 training on the
tiny random world model, and hallucination injection (rule-based and through a chat judge)."""

from __future__ import annotations

import contextlib
import copy
import math
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import vlalign.train.povid as povid
from vlalign.data.corrupt import add_diffusion_noise, alpha_bar, sigmoid_betas
from vlalign.feedback.injection import (
    Injection,
    LLMInjector,
    RuleInjector,
    english_vocabulary,
    fit_cooccurrence,
)
from vlalign.feedback.judge import ChatReply
from vlalign.models.batching import encode, model_inputs
from vlalign.models.load import load
from vlalign.models.settings import LoraSettings
from vlalign.train.examples import PreferenceExample
from vlalign.train.fit import fit
from vlalign.train.losses import dpo_loss, povid_loss
from vlalign.train.objectives import POVIDNoise
from vlalign.train.settings import NoiseConfig, OptimConfig, TrainConfig
from vlalign.world.render import render
from vlalign.world.scene import COLORS, sample_scene
from vlalign.world.text import NUMBERS
from vlalign.world.vocabulary import world_vocabulary

LN2 = math.log(2.0)


# ---------------------------------------------------------------- the noise schedule


def _beta(i: int, T: int) -> float:
    """betas = sigmoid(linspace(-6, 6, T)) * (5e-3 - 1e-5) + 1e-5, written out for index i."""
    x = -6.0 + 12.0 * i / (T - 1)
    return 1.0 / (1.0 + math.exp(-x)) * (5e-3 - 1e-5) + 1e-5


def test_sigmoid_betas_endpoints_and_middle():
    betas = sigmoid_betas(1000)
    assert betas.shape == (1000,) and betas.dtype == torch.float64
    # sigmoid(-6) = 1 / (1 + e^6) = 0.0024726; * 0.00499 + 1e-5 = 2.23384e-5
    assert betas[0].item() == pytest.approx(1 / (1 + math.exp(6)) * 4.99e-3 + 1e-5, rel=1e-9)
    assert betas[0].item() == pytest.approx(2.23384e-5, rel=1e-4)
    # sigmoid(6) = 0.9975274; * 0.00499 + 1e-5 = 0.00498766
    assert betas[-1].item() == pytest.approx(0.00498766, rel=1e-5)
    # an inner point of T = 1000: x_500 = -6 + 12 * 500 / 999
    assert betas[500].item() == pytest.approx(_beta(500, 1000), rel=1e-9)
    # with T = 1001 the middle node is x = 0 exactly: sigmoid(0) = 0.5 -> 0.5 * 0.00499 + 1e-5 = 0.002505
    assert sigmoid_betas(1001)[500].item() == pytest.approx(0.002505, rel=1e-9)
    assert bool((betas[1:] > betas[:-1]).all())  # increasing


@pytest.mark.parametrize("k", [0, 1, 499, 999])
def test_alpha_bar_is_the_cumulative_product(k):
    expected = 1.0
    for i in range(k + 1):  # up to and including k
        expected *= 1.0 - _beta(i, 1000)
    assert alpha_bar(k) == pytest.approx(expected, rel=1e-9)


def test_alpha_bar_known_values():
    # k = 0: 1 - beta_0 = 1 - 2.23384e-5
    assert alpha_bar(0) == pytest.approx(1 - 2.23384e-5, abs=1e-9)
    # k = 1 adds beta_1 = sigmoid(-6 + 12/999) * 0.00499 + 1e-5 ~= 2.2487e-5, so abar_1 ~= 1 - 4.4825e-5
    assert alpha_bar(1) == pytest.approx(1 - 4.4825e-5, abs=2e-9)
    assert alpha_bar(999) < alpha_bar(499) < alpha_bar(1) < alpha_bar(0) < 1


@pytest.mark.parametrize("k", [-1, 1000, 5000])
def test_alpha_bar_out_of_range(k):
    with pytest.raises(ValueError, match="noise step k"):
        alpha_bar(k)


def _gray(level: int, size: int = 64) -> Image.Image:
    return Image.new("RGB", (size, size), (level, level, level))


def test_noise_at_step_zero_barely_changes_the_image():
    image = _gray(128)
    noisy = add_diffusion_noise(image, k=0, generator=torch.Generator().manual_seed(0))
    assert noisy.size == image.size and noisy.mode == "RGB"
    diff = np.abs(np.asarray(noisy, dtype=float) - np.asarray(image, dtype=float))
    # noise std = sqrt(1 - abar_0) = sqrt(2.234e-5) = 0.00473 of the range = 1.2 grey levels
    assert diff.mean() < 2.0
    assert diff.max() < 10.0
    assert diff.max() > 0  # but noise was added


def _expected_clamped_mean(mu: float, sigma: float) -> float:
    """E[clamp(Z, 0, 1)] for Z ~ N(mu, sigma^2) = integral over t in (0, 1) of P(Z > t) (midpoint rule)."""
    n = 2000
    return sum(0.5 * (1 - math.erf(((i + 0.5) / n - mu) / (sigma * math.sqrt(2)))) for i in range(n)) / n


@pytest.mark.parametrize("k", [500, 999])
@pytest.mark.parametrize("level", [64, 191])
def test_noise_at_large_k_has_the_mean_of_the_clamped_forward_process(k, level):
    x = level / 255
    abar = alpha_bar(k)
    noisy = add_diffusion_noise(_gray(level), k=k, generator=torch.Generator().manual_seed(1))
    mean = np.asarray(noisy, dtype=float).mean() / 255
    # x_k = sqrt(abar) x + sqrt(1 - abar) eps, clamped to [0, 1]; 64*64*3 = 12288 pixels: the sample mean's
    # std is below 0.5 / sqrt(12288) = 0.0045, and rounding to 1/255 moves it by < 0.002
    expected = _expected_clamped_mean(math.sqrt(abar) * x, math.sqrt(1 - abar))
    assert mean == pytest.approx(expected, abs=0.02)
    # and it is far from the clean mean, which it would equal if no noise were added (k = 999: abar = 0.08)
    if k == 999:
        assert abs(mean - x) > 0.05


def test_noise_is_fresh_per_call_and_reproducible_with_a_seed():
    image = _gray(100)
    a, b = (np.asarray(add_diffusion_noise(image, k=500)) for _ in range(2))
    assert (a != b).mean() > 0.5
    c = np.asarray(add_diffusion_noise(image, k=500, generator=torch.Generator().manual_seed(7)))
    d = np.asarray(add_diffusion_noise(image, k=500, generator=torch.Generator().manual_seed(7)))
    e = np.asarray(add_diffusion_noise(image, k=500, generator=torch.Generator().manual_seed(8)))
    assert np.array_equal(c, d)
    assert not np.array_equal(c, e)


# ---------------------------------------------------------------- the POVID loss


def _softplus_neg(z: float) -> float:
    """-log sigmoid(z) = log(1 + e^-z)."""
    return math.log1p(math.exp(-z))


LOGPS = dict(
    chosen_logps=torch.tensor([-1.0, -2.0]), injected_logps=torch.tensor([-3.0, -1.5]),
    noisy_logps=torch.tensor([-2.5, -2.0]), ref_chosen_logps=torch.tensor([-1.5, -2.0]),
    ref_injected_logps=torch.tensor([-2.0, -2.0]), ref_noisy_logps=torch.tensor([-2.0, -1.0]))
# beta = 0.5. Row 0: chosen log-ratio = -1 + 1.5 = 0.5; injected = -3 + 2 = -1; noisy = -2.5 + 2 = -0.5
#   injected term: -log sigmoid(0.5 * (0.5 + 1)) = log(1 + e^-0.75); noisy: -log sigmoid(0.5 * 1) = log(1 + e^-0.5)
# Row 1: chosen log-ratio 0; injected = -1.5 + 2 = 0.5; noisy = -2 + 1 = -1
#   injected term: log(1 + e^0.25); noisy term: log(1 + e^-0.5)
HAND_INJECTED = [_softplus_neg(0.75), _softplus_neg(-0.25)]
HAND_NOISY = [_softplus_neg(0.5), _softplus_neg(0.5)]


@pytest.mark.parametrize("gamma", [0.5, 1.0, 0.0, 0.3])
def test_povid_loss_by_hand(gamma):
    losses, injected, noisy = povid_loss(**LOGPS, beta=0.5, gamma=gamma)
    for i in range(2):
        assert injected[i].item() == pytest.approx(HAND_INJECTED[i], rel=1e-6)
        assert noisy[i].item() == pytest.approx(HAND_NOISY[i], rel=1e-6)
        assert losses[i].item() == pytest.approx(gamma * HAND_INJECTED[i] + (1 - gamma) * HAND_NOISY[i], rel=1e-6)


def test_povid_loss_with_gamma_one_is_dpo_on_the_injected_pair():
    losses, _, _ = povid_loss(**LOGPS, beta=0.5, gamma=1.0)
    dpo, _, _ = dpo_loss(LOGPS["chosen_logps"], LOGPS["injected_logps"], LOGPS["ref_chosen_logps"],
                         LOGPS["ref_injected_logps"], beta=0.5)
    torch.testing.assert_close(losses, dpo)
    # gamma = 0 is DPO on the noisy answer, which differs from the injected one here (row 0: 0.5114 vs 0.4741)
    losses0, _, _ = povid_loss(**LOGPS, beta=0.5, gamma=0.0)
    dpo_noisy, _, _ = dpo_loss(LOGPS["chosen_logps"], LOGPS["noisy_logps"], LOGPS["ref_chosen_logps"],
                               LOGPS["ref_noisy_logps"], beta=0.5)
    torch.testing.assert_close(losses0, dpo_noisy)
    assert not torch.allclose(losses, losses0)


def test_povid_loss_gradient_reaches_all_three_policy_terms():
    inputs = {k: v.clone().requires_grad_(k in ("chosen_logps", "injected_logps", "noisy_logps"))
              for k, v in LOGPS.items()}
    losses, _, _ = povid_loss(**inputs, beta=0.5, gamma=0.5)
    losses.sum().backward()
    assert (inputs["chosen_logps"].grad < 0).all()  # raising the ground truth lowers the loss
    assert (inputs["injected_logps"].grad > 0).all() and (inputs["noisy_logps"].grad > 0).all()


# ---------------------------------------------------------------- the noisy answer's log-probs


def test_own_noisy_logps_by_hand():
    ln = math.log
    # 3 answer tokens (2 of example 0, 1 of example 1), one row of logits each, vocabulary of 3
    clean = torch.tensor([[ln(3), ln(2), ln(1)],   # probs 3/6 2/6 1/6
                          [ln(1), ln(2), ln(3)],   # probs 1/6 2/6 3/6
                          [ln(3), ln(1), ln(1)]])  # probs 3/5 1/5 1/5
    noisy = torch.tensor([[0.0, 0.0, 5.0],   # argmax 2 (clean argmax there is 0)
                          [4.0, 1.0, 0.0],   # argmax 0 (clean argmax is 2)
                          [0.0, 2.0, 1.0]])  # argmax 1
    slot = torch.tensor([0, 0, 1])
    out = povid.own_noisy_logps(clean.clone().requires_grad_(True), noisy, slot, 2)
    # example 0: log p_clean(2) at token 0 + log p_clean(0) at token 1 = log(1/6) + log(1/6) = log(1/36)
    # example 1: log p_clean(1) at its token = log(1/5)
    torch.testing.assert_close(out.detach(), torch.tensor([ln(1 / 36), ln(1 / 5)]))
    assert out.requires_grad  # the policy's clean pass carries the gradient
    # taking the argmax from the clean logits instead would give log(3/6) + log(3/6) and log(3/5)
    assert abs(out[0].item() - 2 * ln(0.5)) > 1.0

    # an example with no answer tokens scores 0
    out = povid.own_noisy_logps(clean[:2], noisy[:2], slot[:2], 2)
    torch.testing.assert_close(out, torch.tensor([ln(1 / 36), 0.0]))


# ---------------------------------------------------------------- stage-2 training end to end


@pytest.fixture(scope="module")
def pov_examples() -> list[PreferenceExample]:
    out = []
    for i in range(2):
        scene = sample_scene(i, "prompts")
        obj = scene.objects[0]
        out.append(PreferenceExample(
            id=f"pov-{i}", image=render(scene, 48), instruction="describe the image.",
            chosen=f"there is a {obj.color} {obj.shape}.",
            rejected=f"there is a {obj.color} {obj.shape} and a big star on the left."))
    return out


def _spy_reference(monkeypatch, original, probe) -> list[float]:
    """Wrap povid.reference_context: record how far the reference's logits on `probe` are from the
    starting model's, every time stage 2 asks for the reference."""
    real = povid.reference_context
    gaps: list[float] = []

    @contextlib.contextmanager
    def spy(model):
        with real(model) as r, torch.no_grad():
            got = r(**model_inputs(probe)).logits
            want = original(**model_inputs(probe)).logits
            gaps.append(float((got - want).abs().max()))
            yield r

    monkeypatch.setattr(povid, "reference_context", spy)
    return gaps


@pytest.mark.parametrize("lora", [None, LoraSettings()], ids=["full", "lora"])
def test_train_povid_stage2_two_steps(tiny_world_model_dir, pov_examples, monkeypatch, lora):
    model, processor = load(tiny_world_model_dir, dtype="float32", device="cpu")
    original = copy.deepcopy(model).eval()
    probe = encode(processor, [pov_examples[0].image], ["describe the image."], ["there is a red circle."])
    gaps = _spy_reference(monkeypatch, original, probe)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # 2 examples, batch 2, 2 epochs -> steps_for = round(2 * 2 / 2) = 2 optimizer steps, both logged
    config = TrainConfig(batch_size=2, epochs=2.0, lora=lora,
                         optim=OptimConfig(lr=1e-3, warmup_ratio=0.0, log_every=1))
    trained, history = fit(model, processor, pov_examples, config,
                                       POVIDNoise(NoiseConfig(gamma=0.5, step=500)))

    assert [h["step"] for h in history] == [1, 2]
    for h in history:
        assert {"loss", "noisy_loss", "injected_loss", "chosen_logp"} <= set(h)
        assert all(math.isfinite(h[k]) for k in ("loss", "noisy_loss", "injected_loss"))
    # step 1: the policy still is the reference, so every DPO logit is 0 and both terms are -log sigmoid(0) = ln 2
    assert history[0]["injected_loss"] == pytest.approx(LN2, abs=1e-4)
    assert history[0]["noisy_loss"] == pytest.approx(LN2, abs=1e-4)
    assert history[0]["loss"] == pytest.approx(LN2, abs=1e-4)
    # step 2 sees an updated policy: the terms move away from ln 2
    assert abs(history[1]["injected_loss"] - LN2) > 1e-5 or abs(history[1]["noisy_loss"] - LN2) > 1e-5

    # the reference (frozen copy, or the adapter-disabled policy) is the starting model at every step
    assert len(gaps) == 2 and max(gaps) < 1e-5
    with torch.no_grad():  # while the policy itself moved, so that check could tell them apart
        moved = (trained(**model_inputs(probe)).logits - original(**model_inputs(probe)).logits).abs().max()
    assert moved > 1e-4

    after = dict(trained.named_parameters())
    if lora is None:
        changed = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
        assert any("language_model" in n for n in changed)
        assert not any("vision_tower" in n for n in changed)  # the vision tower is frozen
    else:
        lora_b = [p for n, p in after.items() if "lora_B" in n]
        assert lora_b and any(p.detach().abs().max() > 0 for p in lora_b)  # B starts at 0
        base = {n.replace("base_model.model.", "").replace(".base_layer", ""): p for n, p in after.items()
                if "lora_" not in n}
        assert all(torch.equal(before[n], base[n].detach()) for n in before)  # base weights frozen


def test_noise_config_validates():
    with pytest.raises(ValueError, match="gamma"):
        NoiseConfig(gamma=1.5)
    with pytest.raises(ValueError, match="noise step"):
        NoiseConfig(step=1000, T=1000)


# ---------------------------------------------------------------- rule-based injection

TEXTS = [
    "there is a red circle and a blue square.",
    "a square is next to a circle.",
    "a star and a triangle.",
    "the heart is left of the cross.",
]
# co-occurrence: circle <-> square (2 texts), star <-> triangle (1), heart <-> cross (1); no diamond or moon


@pytest.fixture(scope="module")
def world_injector() -> RuleInjector:
    vocab = world_vocabulary()
    return RuleInjector(vocab, fit_cooccurrence(TEXTS, vocab), edits=2, seed=0)


def test_fit_cooccurrence_counts(world_injector):
    table = world_injector.cooccurrence
    assert table["circle"] == Counter({"square": 2})
    assert table["square"] == Counter({"circle": 2})
    assert table["heart"] == Counter({"cross": 1})
    assert "moon" not in table


@pytest.mark.parametrize("seed", range(4))
def test_add_object_adds_the_absent_partner(world_injector, seed):
    text = "there is a red circle on the left. it is big."
    out = world_injector.add_object(text, np.random.default_rng(seed))
    # the only object co-occurring with "circle" that is absent is "square"
    assert out.edits == ["object+: square"]
    assert "square" in out.text and "square" not in text
    # the original sentences are kept, and one sentence was inserted at a sentence break before the last
    sentences = ["there is a red circle on the left.", "it is big."]
    assert all(s in out.text for s in sentences) and out.text.endswith("it is big.")
    added = out.text
    for s in sentences:
        added = added.replace(s, "", 1)
    added = added.strip()
    assert "square" in added and any(c in added.split() for c in COLORS)


def test_add_object_without_a_known_partner_is_none(world_injector):
    assert world_injector.add_object("there is a moon.", np.random.default_rng(0)) is None
    assert world_injector.replace_object("there is a moon.", np.random.default_rng(0)) is None


def test_replace_object_keeps_number(world_injector):
    plural = world_injector.replace_object("there are two circles on the left.", np.random.default_rng(0))
    assert plural.text == "there are two squares on the left."
    assert plural.edits == ["object: circle -> square"]
    singular = world_injector.replace_object("a cross is at the top.", np.random.default_rng(0))
    assert singular.text == "a heart is at the top."
    # -es plurals: crosses <-> hearts
    plural = world_injector.replace_object("two hearts are at the top.", np.random.default_rng(0))
    assert plural.text == "two crosses are at the top."


@pytest.mark.parametrize("seed", range(6))
def test_change_attribute_swaps_one_attribute_word(world_injector, seed):
    vocab = world_injector.vocab
    text = "there are two small red circles on the left."
    out = world_injector.change_attribute(text, np.random.default_rng(seed))
    old, new = text.split(), out.text.split()
    assert len(old) == len(new)
    diff = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert len(diff) == 1
    a, b = diff[0]
    kind = out.edits[0].split(":")[0]
    options = {"attribute": vocab.colors, "size": vocab.sizes, "count": vocab.numbers}[kind]
    assert a in options and b in options and a != b
    assert out.edits == [f"{kind}: {a} -> {b}"]


def test_change_attribute_kinds(world_injector):
    rng = np.random.default_rng(0)
    assert world_injector.change_attribute("a big circle.", rng).text == "a small circle."
    count = world_injector.change_attribute("there are three circles.", rng)
    assert count.edits[0].startswith("count: three -> ")
    assert count.text.split()[2] in NUMBERS[1:] and count.text.split()[2] != "three"
    assert world_injector.change_attribute("a circle.", rng) is None


def test_flip_relation(world_injector):
    rng = np.random.default_rng(0)
    out = world_injector.flip_relation("the heart is left of the cross.", rng)
    assert out.text == "the heart is right of the cross." and out.edits == ["relation: left -> right"]
    assert world_injector.flip_relation("a star is above a moon.", rng).text == "a star is below a moon."
    assert world_injector.flip_relation("a star and a moon.", rng) is None


@pytest.mark.parametrize(("answer", "flipped"), [
    ("yes.", "no."),
    ("no.", "yes."),
    ("no, there is no red square.", "yes, there is a red square."),
    ("yes, there is an orange circle.", "no, there is no orange circle."),
    ("Yes, there is a dog on the sofa.", "No, there is no dog on the sofa."),
    ("no, there is no orange heart.", "yes, there is an orange heart."),
])
def test_a_yes_no_answer_is_flipped_as_the_one_edit(world_injector, answer, flipped):
    expected = Injection(flipped, [f"answer: {answer.split(',')[0].strip('.').lower()} -> "
                                   f"{flipped.split(',')[0].strip('.').lower()}"])
    assert world_injector.inject(answer, key="k") == expected
    assert world_injector.flip_answer("nothing is here.") is None
    assert world_injector.flip_answer("north of the moon.") is None


def test_inject_is_deterministic_per_key_and_starts_with_an_object_edit(world_injector):
    text = "there is a big red circle on the left. a small blue triangle is above it."
    outputs = set()
    for key in [f"record-{i}" for i in range(12)]:
        first = world_injector.inject(text, key=key)
        assert world_injector.inject(text, key=key) == first
        assert len(first.edits) == 2
        assert first.edits[0].startswith("object")  # "object+: ..." or "object: ... -> ..."
        assert first.text != text
        outputs.add(first.text)
    assert len(outputs) > 1  # the key seeds the choice
    other_seed = RuleInjector(world_injector.vocab, world_injector.cooccurrence, edits=2, seed=1)
    assert any(other_seed.inject(text, key=f"record-{i}").text != world_injector.inject(text, key=f"record-{i}").text
               for i in range(12))


def test_without_added_objects_every_object_edit_replaces_one(world_injector):
    text = "there is a big red circle on the left. a small blue triangle is above it."
    replacing = RuleInjector(world_injector.vocab, world_injector.cooccurrence, edits=2, seed=0, add_objects=False)
    kinds = {e.split(":")[0] for i in range(40) for e in replacing.inject(text, key=f"record-{i}").edits}
    assert "object" in kinds and "object+" not in kinds
    assert "object+" in {e.split(":")[0] for i in range(40) for e in world_injector.inject(text, key=f"record-{i}").edits}


def test_later_edits_never_undo_earlier_ones(world_injector):
    text = "there is a big red circle on the left. a small blue triangle is above it. there is a moon."
    for key in [f"record-{i}" for i in range(40)]:
        out = world_injector.inject(text, key=key)
        injected = {e.rsplit(" ", 1)[-1] for e in out.edits if e.startswith("object")}
        replaced = {e.split(": ", 1)[1].split(" -> ")[0] for e in out.edits if e.startswith("object:")}
        assert not injected & replaced, out.edits  # nothing injected is replaced, nothing present re-added
        assert not injected & {"circle", "triangle", "moon"}, out.edits


def test_inject_leaves_uneditable_text_alone(world_injector):
    out = world_injector.inject("nothing here.", key="x")
    assert out == Injection("nothing here.", [])


def test_english_vocabulary_on_an_english_sentence():
    vocab = english_vocabulary()
    assert vocab.canonical("man") == "person" and vocab.canonical("Puppy") == "dog"
    texts = ["a man with a dog.", "a dog and a cat.", "a person on a bicycle next to a car."]
    # person: dog 1, bicycle 1, car 1; bicycle: person 1, car 1
    injector = RuleInjector(vocab, fit_cooccurrence(texts, vocab), edits=2, seed=0)
    sentence = "A man rides a bicycle on the left."
    # present: person, bicycle -> absent candidates: dog (1, via person), car (1 + 1)
    for seed in range(5):
        added = injector.add_object(sentence, np.random.default_rng(seed))
        assert added.edits[0] in ("object+: dog", "object+: car")
        assert added.text.endswith(sentence)  # a lone sentence gets the new one before it, never after
        replaced = injector.replace_object(sentence, np.random.default_rng(seed))
        assert replaced.edits[0] in {"object: person -> dog", "object: person -> car",
                                     "object: bicycle -> dog", "object: bicycle -> car"}
        assert replaced.text != sentence
    flipped = injector.flip_relation(sentence, np.random.default_rng(0))
    assert flipped.text == "A man rides a bicycle on the right."
    assert injector.inject(sentence, key="k").edits[0].startswith("object")


# ---------------------------------------------------------------- injection through a chat judge


class ScriptedJudge:
    """Answers each request with the next scripted text (None: a failed request)."""

    name = "scripted"

    def __init__(self, texts):
        self.texts, self.requests = list(texts), []

    def complete(self, requests):
        self.requests.extend(requests)
        return [ChatReply(t) if t is not None else ChatReply(None, f"record {r.id}: failed")
                for r, t in zip(requests, self.texts, strict=True)]


def test_llm_injector():
    judge = ScriptedJudge([
        "Answer: there is a blue square.",   # prefix stripped
        None,                                 # the judge failed
        "there is a red circle.",             # unchanged answer
        '"there is a big moon."',             # quotes stripped
        "   ",                                # empty
    ])
    injector = LLMInjector(judge, edits=3)
    answers = ["there is a red circle."] * 5
    out = injector.inject_many(["describe the image."] * 5, answers, [f"k{i}" for i in range(5)])
    assert out == [Injection("there is a blue square.", ["llm"]), None, None,
                   Injection("there is a big moon.", ["llm"]), None]
    first = judge.requests[0]
    assert first.id == "k0"
    assert "Make 3 changes" in first.prompt
    assert "Question: describe the image." in first.prompt and "Answer: there is a red circle." in first.prompt
