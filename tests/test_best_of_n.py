"""Best-of-N with the DPO implicit reward, on the tiny random world model (policy) against a second tiny
random model (reference)."""

from __future__ import annotations

import pytest
from conftest import TINY

from vlalign.models.best_of_n import best_of_n, implicit_rewards
from vlalign.models.generate import Decoding
from vlalign.models.load import load
from vlalign.models.scoring import score_responses
from vlalign.world.model import TinyVLMConfig, build_model
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

SAMPLING = Decoding(max_new_tokens=6, temperature=1.0)


@pytest.fixture(scope="module")
def models(tiny_world_model_dir):
    policy, processor = load(tiny_world_model_dir, dtype="float32", device="cpu")
    reference = build_model(processor, TinyVLMConfig(**TINY), seed=1).eval()
    return policy, reference, processor


@pytest.fixture(scope="module")
def prompts():
    images = [render(sample_scene(i, "test"), 48) for i in range(2)]
    return images, ["describe the image.", "what is in the image?"]


def test_implicit_rewards_by_hand(models, prompts):
    policy, reference, processor = models
    images, _ = prompts
    rows_images = [images[0], images[0], images[1]]
    instructions = ["describe the image."] * 2 + ["what is in the image?"]
    answers = ["there is a red circle.", "there is a big blue square on the left.", "a star."]
    got = implicit_rewards(policy, reference, processor, rows_images, instructions, answers, beta=0.5, batch_size=2)
    mine = score_responses(policy, processor, rows_images, instructions, answers)
    theirs = score_responses(reference, processor, rows_images, instructions, answers)
    # r = beta * (sum log pi - sum log pi_ref) / answer tokens; tokens are words and punctuation, plus EOS:
    # "there is a red circle ." 6 + 1 = 7; "there is a big blue square on the left ." 10 + 1 = 11; "a star ." 3 + 1 = 4
    assert [m.n_tokens for m in mine] == [7, 11, 4]
    expected = [0.5 * (m.sum_logp - t.sum_logp) / m.n_tokens for m, t in zip(mine, theirs, strict=True)]
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert len({round(r, 6) for r in got}) == 3 and any(abs(r) > 1e-3 for r in got)  # not all 0: two models
    # the policy as its own reference (not a peft model: nothing is switched off) gives reward 0
    assert implicit_rewards(policy, policy, processor, rows_images, instructions, answers) == pytest.approx([0.0] * 3,
                                                                                                        abs=1e-6)


def test_best_of_n_picks_the_highest_reward(models, prompts):
    policy, reference, processor = models
    images, instructions = prompts
    ranked = best_of_n(policy, reference, processor, images, instructions, n=3, decoding=SAMPLING, beta=0.1,
                       seed=0, batch_size=4)
    assert len(ranked) == 2
    for r, image, instruction in zip(ranked, images, instructions, strict=True):
        assert len(r.candidates) == 3
        texts = [t for t, _ in r.candidates]
        # the rewards are the implicit rewards of the candidates, recomputed here
        rewards = implicit_rewards(policy, reference, processor, [image] * 3, [instruction] * 3, texts, beta=0.1)
        assert [w for _, w in r.candidates] == pytest.approx(rewards, rel=1e-4, abs=1e-6)
        best = max(range(3), key=lambda k: rewards[k])
        assert r.text == texts[best] and r.reward == pytest.approx(rewards[best], rel=1e-4, abs=1e-6)
        assert r.reward == max(w for _, w in r.candidates)
    # sampling at temperature 1 from a random model: the three samples of a prompt are not all the same
    assert any(len({t for t, _ in r.candidates}) > 1 for r in ranked)


def test_best_of_n_is_reproducible_per_seed(models, prompts):
    policy, reference, processor = models
    images, instructions = prompts

    def run(seed):
        return best_of_n(policy, reference, processor, images, instructions, n=2, decoding=SAMPLING, seed=seed)

    first, again, other = run(0), run(0), run(1)
    assert [r.candidates for r in first] == [r.candidates for r in again]
    assert [r.candidates for r in first] != [r.candidates for r in other]


def test_best_of_n_needs_one_sample(models, prompts):
    policy, reference, processor = models
    images, instructions = prompts
    with pytest.raises(ValueError, match="n >= 1"):
        best_of_n(policy, reference, processor, images, instructions, n=0)
    one = best_of_n(policy, reference, processor, images[:1], instructions[:1], n=1, decoding=SAMPLING)
    assert len(one) == 1 and len(one[0].candidates) == 1 and one[0].text == one[0].candidates[0][0]
