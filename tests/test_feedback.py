"""RLAIF-V feedback: claims from answers, labels from a yes/no model, and preference pairs from scores."""

from __future__ import annotations

import pytest

import vlalign.feedback.labeler as labeler_mod
from vlalign.feedback.claims import Claim, SentenceClaims, WorldClaims, sentences
from vlalign.feedback.labeler import LabeledClaim, ResponseFeedback, label_responses
from vlalign.feedback.pairs import PairRules, Scored, candidate_pairs
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

# --- claims ------------------------------------------------------------------------------------------


def test_world_claims_one_question_per_named_object():
    answer = ("there is a big red circle in the top left corner. two blue squares are on the right. "
              "there is no star. the red circle is left of the blue square.")
    claims = WorldClaims()(answer)
    # the circle and the squares (plural singularised); the negated star is no claim; the repeated
    # "red circle" / "blue square" in the last sentence ask the same questions and are dropped
    assert claims == [
        Claim("there is a big red circle.", "is there a red circle in the image?"),
        Claim("there is a blue square.", "is there a blue square in the image?"),
    ]


def test_world_claims_without_colour_and_negations():
    claims = WorldClaims()("I can see a Moon, a small heart and crosses. There is not a green diamond, "
                           "and without a triangle.")
    assert [c.question for c in claims] == [
        "is there a moon in the image?", "is there a heart in the image?", "is there a cross in the image?"]
    assert claims[1].text == "there is a small heart."
    # a negation only reaches the next couple of words: the circle here is still claimed
    assert [c.question for c in WorldClaims()("there is no star and then a circle.")] == [
        "is there a circle in the image?"]
    assert WorldClaims()("nothing here.") == []


def test_sentence_claims_plain_english_fallback():
    claims = SentenceClaims()("A dog sits on the sofa.  It looks happy! Is it asleep?")
    assert [c.text for c in claims] == ["A dog sits on the sofa.", "It looks happy!", "Is it asleep?"]
    assert claims[0].question == ("Is the following statement about the image correct? A dog sits on the sofa. "
                                  "Answer yes or no.")
    assert sentences("  ") == [] and SentenceClaims()("") == []


# --- pairs -------------------------------------------------------------------------------------------

A = Scored("a", "a red circle.", 0.0)
B = Scored("b", "a red circle and a star.", -1.0)
C = Scored("c", "a star, a moon and a heart.", -3.0)
D = Scored("d", " a red circle. ", -1.0)  # same text as A once stripped, one claim worse


def _ids(pairs):
    return [(hi.id, lo.id) for hi, lo in pairs]


def test_pairs_min_gap_and_identical_answers():
    rules = PairRules(max_per_prompt=None)
    # (a,b) gap 1; (a,c) gap 3; (a,d) identical text: dropped; (b,c) gap 2; (b,d) tie: dropped; (d,c) gap 2
    assert _ids(candidate_pairs([A, B, C, D], rules)) == [("a", "b"), ("a", "c"), ("b", "c"), ("d", "c")]
    keep_identical = PairRules(max_per_prompt=None, drop_identical=False)
    assert ("a", "d") in _ids(candidate_pairs([A, B, C, D], keep_identical))
    # min gap 2 keeps (a,c), (b,c), (d,c)
    assert _ids(candidate_pairs([A, B, C, D], PairRules(min_gap=2, max_per_prompt=None))) == [
        ("a", "c"), ("b", "c"), ("d", "c")]
    # ties never make a pair, even with no gap required
    assert candidate_pairs([B, Scored("e", "other", -1.0)], PairRules(min_gap=0)) == []
    # fractional gaps: 0.5 passes min_gap 0.5, 0.25 does not
    half = [Scored("x", "x", 1.0), Scored("y", "y", 0.5), Scored("z", "z", 0.75)]
    assert _ids(candidate_pairs(half, PairRules(min_gap=0.5, max_per_prompt=None))) == [("x", "y")]


def test_pairs_chosen_is_the_higher_score_whatever_the_order():
    assert _ids(candidate_pairs([C, A], PairRules())) == [("a", "c")]


def test_pairs_max_per_prompt_is_seeded_and_keyed():
    responses = [A, B, C, D]
    every = _ids(candidate_pairs(responses, PairRules(max_per_prompt=None)))
    picks = {}
    for key in ("p0", "p1", "p2", "p3", "p4", "p5"):
        got = _ids(candidate_pairs(responses, PairRules(max_per_prompt=2), key=key))
        assert len(got) == 2 and len(set(got)) == 2
        assert got == [p for p in every if p in got]  # a subset, in the original order
        assert got == _ids(candidate_pairs(responses, PairRules(max_per_prompt=2), key=key))  # deterministic
        picks[key] = tuple(got)
    assert len(set(picks.values())) > 1  # the prompt key changes the subsample
    other_seed = {k: tuple(_ids(candidate_pairs(responses, PairRules(max_per_prompt=2, seed=9), key=k)))
                  for k in picks}
    assert other_seed != picks
    # under the cap nothing is dropped
    assert _ids(candidate_pairs([A, C], PairRules(max_per_prompt=2), key="p0")) == [("a", "c")]


# --- labeler -----------------------------------------------------------------------------------------


def test_rejection_rule_and_score():
    # rejected exactly when P(yes) < 0.5: 0.2 and 0.49 are rejected, 0.5 and 0.9 are not -> score -2
    fb = ResponseFeedback([LabeledClaim("c", "q?", p) for p in (0.9, 0.2, 0.5, 0.49)])
    assert [c.rejected for c in fb.claims] == [False, True, False, True]
    assert fb.score == -2.0
    d = fb.to_dict()
    assert d["score"] == -2.0 and [c["rejected"] for c in d["claims"]] == [False, True, False, True]
    assert ResponseFeedback([]).score == 0.0


def test_label_responses_routes_claims_images_and_scores(monkeypatch):
    images = ["img0", "img1", "img2"]  # stand-ins: the planted scorer only records what it is given
    responses = ["a red circle and a blue star.", "nothing to see.", "a moon, a heart and a green cross."]
    seen = {}

    def planted(model, processor, imgs, questions, batch_size, answer_prefix):
        seen.update(images=list(imgs), questions=list(questions), batch_size=batch_size, prefix=answer_prefix)
        return [0.9, 0.2, 0.5, 0.49, 0.7]

    monkeypatch.setattr(labeler_mod, "yes_probability", planted)
    out = label_responses(None, None, images, responses, WorldClaims(), batch_size=7)
    # 2 claims for response 0, none for 1, 3 for 2: each question goes with its own response's image
    assert seen["images"] == ["img0", "img0", "img2", "img2", "img2"]
    assert seen["questions"] == ["is there a red circle in the image?", "is there a blue star in the image?",
                                 "is there a moon in the image?", "is there a heart in the image?",
                                 "is there a green cross in the image?"]
    assert seen["batch_size"] == 7
    assert [[c.p_yes for c in fb.claims] for fb in out] == [[0.9, 0.2], [], [0.5, 0.49, 0.7]]
    # scores: one rejected (0.2); none; one rejected (0.49)
    assert [fb.score for fb in out] == [-1.0, 0.0, -1.0]


def test_label_responses_with_the_tiny_world_model(tiny_world_model_dir):
    from vlalign.models.load import load
    from vlalign.models.scoring import yes_probability

    model, processor = load(tiny_world_model_dir, dtype="float32", device="cpu")
    images = [render(sample_scene(i, "prompts")) for i in range(3)]
    responses = ["there is a red circle. i can see a star.", "there is a blue moon.", "two hearts and a square."]
    out = label_responses(model, processor, images, responses, WorldClaims(), batch_size=2)
    assert [len(fb.claims) for fb in out] == [2, 1, 2]
    for image, fb in zip(images, out, strict=True):
        for c in fb.claims:
            assert 0.0 <= c.p_yes <= 1.0
            # the same number as asking that one question about that one image on its own
            alone = yes_probability(model, processor, [image], [c.question])[0]
            assert c.p_yes == pytest.approx(alone, abs=1e-5)
        assert fb.score == -sum(c.p_yes < 0.5 for c in fb.claims)
