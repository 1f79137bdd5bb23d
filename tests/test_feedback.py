"""RLAIF-V feedback: claims from answers, labels from a yes/no model, and preference pairs from scores."""

from __future__ import annotations

import pytest

import vlalign.feedback.labeler as labeler_mod
from vlalign.feedback.claims import Claim, SentenceClaims, sentences
from vlalign.feedback.labeler import LabeledClaim, ResponseFeedback, label_responses
from vlalign.feedback.pairs import (
    PairRules,
    Scored,
    balance_lengths,
    balance_lengths_by,
    candidate_pairs,
    shortening,
)
from vlalign.world.claims import COUNT_KINDS, WorldClaims
from vlalign.world.render import render
from vlalign.world.scene import sample_scene

# --- claims ------------------------------------------------------------------------------------------


def test_world_claims_one_question_per_named_object():
    answer = ("there is a big red circle in the top left corner. two blue squares are on the right. "
              "there is no star. the red circle is left of the blue square.")
    claims = WorldClaims()(answer)
    # the circle and the squares (plural singularised); the star is claimed absent; the repeated
    # "red circle" / "blue square" in the last sentence ask the same questions and are dropped
    assert claims == [
        Claim("there is a big red circle.", "is there a red circle in the image?"),
        Claim("there is a blue square.", "is there a blue square in the image?"),
        Claim("there is no star.", "is there a star in the image?", holds_if_yes=False),
    ]


def test_world_claims_without_colour_and_negations():
    claims = WorldClaims()("I can see a Moon, a small heart and crosses. There is not a green diamond, "
                           "and without a triangle.")
    assert [c.question for c in claims] == [
        "is there a moon in the image?", "is there a heart in the image?", "is there a cross in the image?"]
    assert claims[1].text == "there is a small heart."
    # a negation only reaches the next couple of words: the circle here is still claimed present
    claims = WorldClaims()("there is no star and then a circle.")
    assert [(c.question, c.holds_if_yes) for c in claims] == [
        ("is there a star in the image?", False), ("is there a circle in the image?", True)]
    assert WorldClaims()("nothing here.") == []


def test_world_claims_of_short_answers_come_from_the_question():
    q = "is there a red circle in the image?"
    [[yes], [no], [spelled], [absent], other] = WorldClaims().split_many(
        ["yes.", "no.", "yes, there is a red circle.", "no, there is no red circle.", "yes."],
        [q, q, q, q, "what colour is the circle?"])
    assert (yes.question, yes.holds_if_yes) == (q, True) and (no.question, no.holds_if_yes) == (q, False)
    assert spelled == Claim("there is a red circle.", q) and absent.holds_if_yes is False
    assert other == []  # a "yes" to anything but an existence question claims nothing


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


def test_extremes_keeps_the_best_against_the_worst_first():
    # candidates (gap 1): (a,b) 1, (a,c) 3, (b,c) 2, (d,c) 2
    assert _ids(candidate_pairs([A, B, C, D], PairRules(max_per_prompt=1, pick="extremes"))) == [("a", "c")]
    # the next widest gaps tie at 2: the pair with the better chosen answer (b and d both score -1: list order)
    assert _ids(candidate_pairs([A, B, C, D], PairRules(max_per_prompt=2, pick="extremes"))) == [("a", "c"), ("b", "c")]
    # the draw keeps the seeded choice; both keep every pair when there is no cap to apply
    assert len(candidate_pairs([A, B, C, D], PairRules(max_per_prompt=2))) == 2
    with pytest.raises(ValueError, match="pick must be draw or extremes"):
        PairRules(pick="best")


def test_claim_balance_drops_pairs_whose_chosen_answer_claims_less():
    # x: 3 claims, none rejected; y: 1 claim, none rejected; z: 3 claims, 1 rejected; w: 4 claims, 2 rejected
    x, y = Scored("x", "x", 0.0, claims=3), Scored("y", "y", 0.0, claims=1)
    z, w = Scored("z", "z", -1.0, claims=3), Scored("w", "w", -2.0, claims=4)
    every = PairRules(max_per_prompt=None)
    assert _ids(candidate_pairs([x, y, z, w], every)) == [("x", "z"), ("x", "w"), ("y", "z"), ("y", "w"), ("z", "w")]
    balanced = PairRules(max_per_prompt=None, claim_balance=True)
    # y claims less than z and w; x claims less than w; z (3) less than w (4)
    assert _ids(candidate_pairs([x, y, z, w], balanced)) == [("x", "z")]
    # without claim counts (a judge's ratings) the rule has nothing to compare and keeps the pair
    assert _ids(candidate_pairs([Scored("a", "a", 1.0), Scored("b", "b", 0.0)], balanced)) == [("a", "b")]
    # it filters before the cap, so a capped prompt still gets its balanced pair
    assert _ids(candidate_pairs([x, y, z, w], PairRules(max_per_prompt=1, claim_balance=True))) == [("x", "z")]


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


def _text(n: int) -> str:
    return " ".join(["w"] * n)


def test_shortening_is_the_chosen_answers_deficit_relative_to_the_rejected():
    assert shortening(_text(6), _text(10)) == pytest.approx(0.4)  # (10 - 6) / 10
    assert shortening(_text(12), _text(10)) == pytest.approx(-0.2)  # chosen longer: negative
    assert shortening("", "") == 0.0


def test_length_balancing_picks_the_threshold_with_the_closest_mean_lengths():
    # (chosen, rejected) word counts and shortening (rej - ch) / rej:
    #   p0 (10, 10) 0.0;  p1 (8, 10) 0.2;  p2 (5, 10) 0.5;  p3 (12, 10) -0.2;  p4 (2, 10) 0.8
    pairs = [(_text(c), _text(r)) for c, r in ((10, 10), (8, 10), (5, 10), (12, 10), (2, 10))]
    kept, info = balance_lengths(pairs)
    # r in [0, 0.2): keep p0, p3 -> chosen mean 11, rejected 10 -> gap 0.1
    # r in [0.2, 0.5): keep p0, p1, p3 -> chosen mean 10, rejected 10 -> gap 0.0  <- the minimum, first at r=0.2
    # r in [0.5, 0.8): + p2 -> 35/4 = 8.75 -> gap 0.125;  r >= 0.8: + p4 -> 37/5 = 7.4 -> gap 0.26
    assert kept == [0, 1, 3]
    assert info.threshold == pytest.approx(0.2)
    assert (info.kept, info.dropped) == (3, 2)
    assert info.chosen_words_before == pytest.approx(37 / 5) and info.rejected_words_before == 10
    assert info.chosen_words == pytest.approx(10.0) and info.rejected_words == pytest.approx(10.0)


def test_length_balancing_keeps_everything_when_nothing_is_shorter_and_handles_no_pairs():
    pairs = [(_text(11), _text(10)), (_text(10), _text(10))]
    kept, info = balance_lengths(pairs)
    assert kept == [0, 1] and info.threshold == 0.0
    assert balance_lengths([]) == ([], balance_lengths([])[1]) and balance_lengths([])[1].kept == 0


def test_pair_rules_reject_impossible_settings():
    with pytest.raises(ValueError, match="min_gap"):
        PairRules(min_gap=-1)
    with pytest.raises(ValueError, match="max_per_prompt"):
        PairRules(max_per_prompt=0)


# --- labeler -----------------------------------------------------------------------------------------


def test_rejection_rule_and_score():
    # rejected exactly when P(yes) < 0.5: 0.2 and 0.49 are rejected, 0.5 and 0.9 are not -> score -2
    fb = ResponseFeedback([LabeledClaim("c", "q?", p) for p in (0.9, 0.2, 0.5, 0.49)])
    assert [c.rejected for c in fb.claims] == [False, True, False, True]
    assert fb.score == -2.0
    d = fb.to_dict()
    assert d["score"] == -2.0 and [c["rejected"] for c in d["claims"]] == [False, True, False, True]
    assert ResponseFeedback([]).score == 0.0
    # a claim of absence is rejected when "yes" wins
    absent = ResponseFeedback([LabeledClaim("no c", "q?", p, holds_if_yes=False) for p in (0.9, 0.2, 0.5)])
    assert [c.rejected for c in absent.claims] == [True, False, False] and absent.score == -1.0


def test_label_responses_routes_claims_images_and_scores(monkeypatch):
    images = ["img0", "img1", "img2"]  # stand-ins: the planted scorer only records what it is given
    responses = ["a red circle and a blue star.", "nothing to see.", "a moon, a heart and a green cross."]
    seen = {}

    def planted(model, processor, imgs, questions, batch_size):
        seen.update(images=list(imgs), questions=list(questions), batch_size=batch_size)
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


# --- the LLM-prompted splitter -------------------------------------------------------------------------


class ScriptedJudge:
    """A judge that answers each request with the first scripted reply whose key occurs in its prompt."""

    name = "scripted"

    def __init__(self, script: dict[str, str | None]):
        self.script, self.prompts = script, []

    def complete(self, requests):
        from vlalign.feedback.judge import ChatReply

        out = []
        for r in requests:
            self.prompts.append(r.prompt)
            reply = next((v for k, v in self.script.items() if k in r.prompt), "none")
            out.append(ChatReply(reply) if reply is not None else ChatReply(None, f"record {r.id}: HTTP 503"))
        return out


def test_parse_list_reads_numbered_bulleted_json_and_none():
    from vlalign.feedback.llm_claims import parse_list

    assert parse_list("1. There is a dog.\n2) The dog is brown.\n\n3 - It sits.") == [
        "There is a dog.", "The dog is brown.", "It sits."]
    assert parse_list("- a cat\n* a mat\n\u2022 a hat") == ["a cat", "a mat", "a hat"]
    assert parse_list('```json\n["There is a dog.", "The sky is blue."]\n```') == ["There is a dog.", "The sky is blue."]
    assert parse_list("Here are the facts:\n1. There is a dog.") == ["There is a dog."]
    assert parse_list("None.") == [] and parse_list("  ") == []
    assert parse_list("There is a dog.\nThe dog is brown.") == ["There is a dog.", "The dog is brown."]


def test_llm_claims_split_then_ask_keeping_negations():
    from vlalign.feedback.llm_claims import LLMClaims

    judge = ScriptedJudge({
        "Answer: A brown dog sleeps. There is no cat.": "1. There is a dog.\n2. The dog is brown.\n3. There is no cat.",
        "1. There is a dog.\n2. The dog is brown.\n3. There is no cat.":
            "1. Is there a dog in the image?\n2. Is the dog brown?\n3. Is there no cat in the image",
        "Answer: Hello!": "none",
    })
    claims = LLMClaims(judge).split_many(["A brown dog sleeps. There is no cat.", "Hello!"],
                                         ["Describe the image.", "Hi"], ["r1", "r2"])
    assert claims[0] == [Claim("There is a dog.", "Is there a dog in the image?"),
                         Claim("The dog is brown.", "Is the dog brown?"),
                         Claim("There is no cat.", "Is there no cat in the image?")]
    assert claims[1] == []
    assert "Question: Describe the image." in judge.prompts[0]
    assert len(judge.prompts) == 3  # two split requests, one question request (nothing to ask for "Hello!")


def test_llm_claims_reask_one_by_one_when_questions_do_not_line_up():
    from vlalign.feedback.llm_claims import LLMClaims

    judge = ScriptedJudge({
        "Answer: two cats": "1. There are two cats.\n2. The cats are white.",
        "1. There are two cats.\n2. The cats are white.": "1. Are there two cats?",  # one short
        "Statement: There are two cats.": "Question: Are there two cats in the image?",
        "Statement: The cats are white.": "Are the cats white",
    })
    claims = LLMClaims(judge)("two cats")
    assert [c.question for c in claims] == ["Are there two cats in the image?", "Are the cats white?"]


def test_llm_claims_failed_request_names_the_record():
    from vlalign.feedback.judge import JudgeError
    from vlalign.feedback.llm_claims import LLMClaims

    with pytest.raises(JudgeError, match="record r7"):
        LLMClaims(ScriptedJudge({"Answer:": None})).split_many(["a dog."], keys=["r7"])


def test_make_splitter_llm_needs_a_judge():
    from vlalign.feedback.splitters import make_splitter

    with pytest.raises(ValueError, match="needs a judge"):
        make_splitter("llm")
    with pytest.raises(ValueError, match="unknown claim splitter"):
        make_splitter("regex")
    assert type(make_splitter("world")).__name__ == "WorldClaims"  # the world plugin's, found by name


def test_length_balancing_by_source_sets_each_sources_threshold_alone():
    # descriptions as in the test above (threshold 0.2); yes/no pairs of their own, where the long wrong
    # answer and the short right one ("no." vs "no, there is no star.") differ by 80% and the
    # closest means come from keeping every pair
    described = [(_text(c), _text(r)) for c, r in ((10, 10), (8, 10), (5, 10), (12, 10), (2, 10))]
    short = [("no, there is no red star.", "yes, there is a red star."), ("yes.", "no."),
             ("no.", "yes, there is a star."), ("yes, there is a red star in it.", "no.")]
    kept, info = balance_lengths_by(described + short, ["world/describe"] * 5 + ["world/exist"] * 4)
    alone, _ = balance_lengths(short)
    assert kept == [0, 1, 3] + [5 + i for i in alone]
    assert info["kept"] == len(kept) and info["dropped"] == 9 - len(kept)
    assert info["by_source"]["world/describe"]["threshold"] == pytest.approx(0.2)
    assert info["by_source"]["world/exist"] == balance_lengths(short)[1].to_dict()
    assert kept != balance_lengths(described + short)[0]  # pooled, one threshold would decide for both
    one_kept, one = balance_lengths_by(described, ["world/describe"] * 5)
    assert one_kept == [0, 1, 3] and one["threshold"] == pytest.approx(0.2)


# --- count claims --------------------------------------------------------------------------------------

DESCRIBE_Q = "describe the image in detail."


def test_world_counts_are_claims_checked_by_the_count_question():
    from vlalign.feedback.splitters import make_splitter
    from vlalign.world.claims import TOTAL_QUESTION

    assert make_splitter("world-counts").count_kinds == COUNT_KINDS and not make_splitter("world").count_kinds
    assert [c.text for c in WorldClaims()("the image shows seven shapes.", DESCRIBE_Q)] == []  # off by default

    stated = WorldClaims(counts=COUNT_KINDS)("the image shows seven shapes. there is a red circle.", DESCRIBE_Q)
    counts = [c for c in stated if c.answers]
    # the stated total, and the one object the description brings in: two count claims
    assert [c.text for c in counts] == ["there are seven objects.", "there is one object."]
    assert all(c.question == TOTAL_QUESTION for c in counts)
    # the claimed answer first, every other number after it, each as the world's count answer reads
    assert counts[0].answers[0] == "there are seven objects." and len(counts[0].answers) == 9
    assert "there is one object." in counts[0].answers and "there are nine objects." in counts[0].answers


def test_a_repeated_object_is_one_claim_and_pays_in_the_count():
    answer = ("there are two objects in this picture. there is a red circle on the left. i can see a red circle "
              "at the top. the red circle is above a blue star.")
    claims = WorldClaims(counts=COUNT_KINDS)(answer, DESCRIBE_Q)
    # the red circle is one existence claim however often it is named...
    assert [c.question for c in claims if not c.answers] == ["is there a red circle in the image?",
                                                            "is there a blue star in the image?"]
    # ...but bringing it in twice lists three objects where the answer says two
    assert [c.text for c in claims if c.answers] == ["there are two objects.", "there are three objects."]
    # agreeing totals are one claim; plural mentions bring in as many objects as they say
    agreed = WorldClaims(counts=COUNT_KINDS)("the image shows three shapes. two hearts and a square.", DESCRIBE_Q)
    assert [c.text for c in agreed if c.answers] == ["there are three objects."]


def test_only_descriptions_imply_a_total():
    # an answer to another question names some objects, not all: it claims no total
    short = WorldClaims(counts=COUNT_KINDS)("yes, there is a red circle.", "is there a red circle in the image?")
    assert [c.answers for c in short] == [()]
    assert [c.text for c in WorldClaims(counts=COUNT_KINDS)("a red circle and a blue star.") if c.answers] == []
    assert [c.text for c in WorldClaims(counts=COUNT_KINDS)("there are two objects.", "how many objects are there?")
            if c.answers] == ["there are two objects."]


def test_count_claim_kinds_choose_which_totals_are_claims():
    from vlalign.feedback.splitters import make_splitter

    description = "the image shows seven shapes. there is a red circle on the left. a red circle is at the top."
    answer = "there are three objects."
    totals = {name: ([c.text for c in make_splitter(name)(description, DESCRIBE_Q) if c.answers],
                     [c.text for c in make_splitter(name)(answer, "how many objects are there?") if c.answers])
              for name in ("world", "world-answers", "world-implied", "world-counts")}
    assert totals == {
        "world": ([], []),
        "world-answers": ([], ["there are three objects."]),  # a count answer's total only
        "world-implied": (["there are two objects."], ["there are three objects."]),  # the red circle brought in twice
        "world-counts": (["there are seven objects.", "there are two objects."], ["there are three objects."])}
    with pytest.raises(ValueError, match="unknown count claim kinds"):
        WorldClaims(counts=frozenset({"shapes"}))


def test_count_claims_are_scored_by_the_labelers_answers(tiny_world_model_dir):
    import math

    from vlalign.models.load import load
    from vlalign.models.scoring import score_responses

    model, processor = load(tiny_world_model_dir, dtype="float32", device="cpu")
    images = [render(sample_scene(i, "prompts")) for i in range(2)]
    responses = ["the image shows two shapes. there is a red circle.", "there is a blue moon and a star."]
    out = label_responses(model, processor, images, responses, WorldClaims(counts=COUNT_KINDS), batch_size=3,
                          instructions=[DESCRIBE_Q, DESCRIBE_Q])
    counted = [(image, c) for image, fb in zip(images, out, strict=True) for c in fb.claims if c.answers]
    assert len(counted) == 3  # two for the first answer (said two, listed one), one for the second
    for image, c in counted:
        logps = [s.sum_logp for s in score_responses(model, processor, [image] * len(c.answers),
                                                     [c.question] * len(c.answers), list(c.answers))]
        assert c.p_yes == pytest.approx(1 / (1 + math.exp(max(logps[1:]) - logps[0])), abs=1e-5)
        assert c.rejected == (max(logps[1:]) > logps[0])
    assert out[0].to_dict()["claims"][-1]["answers"][0] == "there is one object."


def test_an_api_labeler_leaves_count_claims_out_and_says_so(monkeypatch, capsys):
    from vlalign.feedback.server_backends import ApiLabeler

    api = ApiLabeler(judge=None, name="api:labeler")
    monkeypatch.setattr(api, "yes_probability", lambda images, questions, keys: [0.9] * len(questions))
    [fb] = label_responses(api, None, ["img"], ["the image shows two shapes. there is a red circle."],
                           WorldClaims(counts=COUNT_KINDS), instructions=[DESCRIBE_Q])
    assert [c.question for c in fb.claims] == ["is there a red circle in the image?"] and fb.score == 0.0
    assert "2 claims with answers" in capsys.readouterr().err.replace("\n", " ")
