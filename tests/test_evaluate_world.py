"""World metrics on hand-made scenes and answers; every expected number is worked out in a comment."""

from __future__ import annotations

import pytest

from vlalign.evaluate.pope import parse_yes_no, pope_metrics
from vlalign.world.metrics import (
    POPE_SPLITS,
    attribute_correct,
    attribute_items,
    chair_metrics,
    mentioned_objects,
    mentioned_shapes,
    pope_items,
)
from vlalign.world.scene import COLORS, PARTNERS, SHAPES, Obj, Scene, scenes, shape_frequencies
from vlalign.world.text import NUMBERS


def scene(*specs: tuple[str, str], seed: int = 0) -> Scene:
    """A scene from (shape, color) pairs, one per grid cell in reading order."""
    return Scene(tuple(Obj(s, c, "big", i % 3, i // 3) for i, (s, c) in enumerate(specs)), seed, "test")


S1 = scene(("circle", "red"), ("square", "blue"))
S2 = scene(("triangle", "green"))
S3 = scene(("heart", "red"), ("cross", "blue"), ("moon", "yellow"))


def test_mentioned_shapes_singularises_and_skips_negations():
    assert mentioned_shapes("two circles and a star.") == ["circle", "star"]
    assert mentioned_shapes("there is no big red star, but a moon.") == ["moon"]
    assert mentioned_shapes("a square without crosses.") == ["square"]


def test_chair_metrics_by_hand():
    answers = [
        "there is a red circle and a blue square. i can see a star.",  # circle, square, star*  (14 words)
        "there are two triangles. there is no heart.",  # triangle; heart negated              (8 words)
        "a heart, a star and a star.",  # heart, star*, star*                                  (7 words)
    ]
    m = chair_metrics([S1, S2, S3], answers)
    # answers 1 and 3 hallucinate: CHAIR_s = 2/3
    assert m["chair_s"] == pytest.approx(2 / 3)
    # mentions 3 + 1 + 3 = 7, hallucinated 1 + 0 + 2 = 3
    assert m["chair_i"] == pytest.approx(3 / 7)
    # distinct per answer: 3 + 1 + 2 = 6, distinct hallucinated: 1 + 0 + 1 = 2
    assert m["chair_i_unique"] == pytest.approx(2 / 6)
    # present shapes 2 + 1 + 3 = 6, mentioned among them 2 + 1 + 1 = 4
    assert m["object_recall"] == pytest.approx(4 / 6)
    assert m["mean_words"] == pytest.approx((14 + 8 + 7) / 3)
    # named with a colour of a present object of that shape: red circle, blue square (answer 1); the others
    # come without a colour
    assert m["grounded_recall"] == pytest.approx(2 / 6)
    # circle and square are partners (S1), heart and cross too (S3): 4 partnered shapes, 3 named (circle,
    # square, heart); triangle (S2) and moon (S3) are alone, triangle named
    assert (m["partner_recall"], m["lone_recall"]) == pytest.approx((3 / 4, 1 / 2))


def test_grounded_recall_needs_the_right_colour():
    m = chair_metrics([S1], ["there is a blue circle and a blue square."])
    assert m["object_recall"] == 1.0  # both shapes are named...
    assert m["grounded_recall"] == pytest.approx(1 / 2)  # ...but the circle in the scene is red
    assert mentioned_objects("a big red star, no green moon, a heart.") == [("red", "star"), (None, "heart")]


def test_chair_metrics_edges():
    m = chair_metrics([S2], ["nothing to see."])  # no mentions at all
    assert m == {"chair_s": 0.0, "chair_i": 0.0, "chair_i_unique": 0.0, "object_recall": 0.0,
                 "grounded_recall": 0.0, "partner_recall": 0.0, "lone_recall": 0.0, "mean_words": 3.0}
    with pytest.raises(ValueError):
        chair_metrics([S1, S2], ["a circle."])


def test_pope_metrics_by_hand():
    predicted = [True, True, False, False, True]
    labels = [True, False, True, False, True]
    # tp = 2 (items 0, 4), fp = 1 (item 1), fn = 1 (item 2), tn = 1 (item 3)
    m = pope_metrics(predicted, labels)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(3 / 5)
    # always "no": nothing predicted positive, precision and F1 fall back to 0, accuracy = share of negatives
    m = pope_metrics([False] * 4, [True, False, False, False])
    assert (m["precision"], m["recall"], m["f1"], m["accuracy"], m["yes_ratio"]) == (0.0, 0.0, 0.0, 0.75, 0.0)
    with pytest.raises(ValueError):
        pope_metrics([True], [True, False])
    with pytest.raises(ValueError):
        pope_metrics([], [])


@pytest.mark.parametrize("answer, yes", [
    ("Yes, there is a star.", True),
    ("yes.", True),
    ("No.", False),
    ("no, there is no moon.", False),
    ("There is not a star in the image.", False),
    ("Yes. But it is not red.", True),  # only the first sentence counts
    ("Nothing suggests otherwise", True),  # "nothing" is not the word "no"
    ("there is a star,no doubt", False),  # commas become spaces
])
def test_parse_yes_no(answer, yes):
    assert parse_yes_no(answer) is yes


def test_pope_items_on_a_hand_made_scene():
    s = scene(("circle", "red"), ("triangle", "blue"))  # present: circle, triangle; k = min(3, 2, 6) = 2
    for split in POPE_SPLITS:
        items = pope_items([s], split, seed=1)
        pos = [i.shape for i in items if i.label]
        neg = [i.shape for i in items if not i.label]
        assert sorted(pos) == ["circle", "triangle"] and len(neg) == 2
        assert not set(neg) & s.shapes
        assert all(i.question == f"is there a {i.shape} in the image?" and i.scene is s for i in items)
    # adversarial: the partners of the present shapes (circle -> square, triangle -> star)
    assert {i.shape for i in pope_items([s], "adversarial") if not i.label} == {"square", "star"}
    # popular: the two most frequent absent shapes in training scenes
    freq = shape_frequencies(5000)
    expected = sorted((x for x in SHAPES if x not in s.shapes), key=lambda x: -freq[x])[:2]
    assert [i.shape for i in pope_items([s], "popular") if not i.label] == expected
    with pytest.raises(ValueError, match="unknown POPE split"):
        pope_items([s], "hard")


def test_pope_items_balance_and_determinism():
    many = scene(*[(x, "red") for x in SHAPES[:5]])  # five present, three absent: k = 3, all absent asked
    items = pope_items([many], "random", per_scene=3)
    assert sorted(i.shape for i in items if not i.label) == sorted(SHAPES[5:])
    held_out = list(scenes("test", 60))
    a, b = pope_items(held_out, "random", seed=3), pope_items(held_out, "random", seed=3)
    assert [(i.scene.seed, i.shape, i.label) for i in a] == [(i.scene.seed, i.shape, i.label) for i in b]
    assert sum(i.label for i in a) * 2 == len(a)  # as many negatives as positives
    c = pope_items(held_out, "random", seed=4)
    assert [i.shape for i in a] != [i.shape for i in c]


def test_adversarial_negatives_prefer_partners():
    """In every scene where some present shape's partner is absent, the adversarial negatives take those
    partners first (as many as fit); random negatives do so far less often."""
    held_out = list(scenes("test", 200))

    def share_taking_partners(split: str) -> float:
        negatives: dict[int, set[str]] = {}
        for i in pope_items(held_out, split):
            if not i.label:
                negatives.setdefault(i.scene.seed, set()).add(i.shape)
        hits = total = 0
        for s in held_out:
            absent_partners = {PARTNERS[p] for p in s.shapes} - s.shapes
            neg = negatives.get(s.seed, set())
            if absent_partners and neg:
                total += 1
                hits += len(neg & absent_partners) == min(len(neg), len(absent_partners))
        assert total > 50
        return hits / total

    assert share_taking_partners("adversarial") == 1.0
    assert share_taking_partners("random") < 0.7


def test_attribute_items_by_hand():
    twins = scene(("circle", "red"), ("circle", "blue"))
    mixed = scene(("circle", "red"), ("circle", "blue"), ("square", "green"))
    color, count = attribute_items([twins, mixed])
    # twins: no shape appears once -> no colour question; mixed: the square is the unique one
    assert [(s, q, t) for s, q, t in color] == [(mixed, "what color is the square?", "green")]
    assert [t for _, _, t in count] == ["two", "three"]


@pytest.mark.parametrize("answer, truth, vocab, ok", [
    ("the circle is red.", "red", COLORS, True),
    ("Red.", "red", COLORS, True),
    ("it is red or blue.", "red", COLORS, False),  # names another colour too
    ("blue.", "red", COLORS, False),
    ("i do not know.", "red", COLORS, False),  # names none
    ("there are three objects.", "three", NUMBERS, True),
    ("three or four.", "three", NUMBERS, False),
])
def test_attribute_correct(answer, truth, vocab, ok):
    assert attribute_correct(answer, truth, vocab) is ok


def test_evaluate_world_smoke(tiny_world_model_dir):
    """End to end on the random tiny model: every metric is present and in range, and the CHAIR numbers
    are those of the answers it returns."""
    from vlalign.models.load import load
    from vlalign.world.metrics import evaluate_world

    model, processor = load(tiny_world_model_dir, dtype="float32", device="cpu")
    m = evaluate_world(model, processor, n_scenes=3, batch_size=4, with_answers=True)
    assert m["n_scenes"] == 3 and len(m["answers"]) == 3
    for key in ("chair_s", "chair_i", "object_recall", "pope_accuracy", "pope_adversarial_f1", "color_accuracy",
                "count_accuracy"):
        assert 0.0 <= m[key] <= 1.0, key
    redo = chair_metrics([Scene.from_dict(a["scene"]) for a in m["answers"]], [a["answer"] for a in m["answers"]])
    assert all(m[k] == pytest.approx(v) for k, v in redo.items())


def test_test_and_dev_scenes_are_their_own_streams():
    from vlalign.world.metrics import held_out_scenes

    test, dev = held_out_scenes("test", 1000), held_out_scenes("dev", 1000)
    assert len({s.id for s in test}) == 1000 and not {s.id for s in test} & {s.id for s in dev}
    assert sum(a.objects != b.objects for a, b in zip(test, dev, strict=True)) > 900  # other draws, not renamed
    for split in ("prompts", "train", "labeler"):
        with pytest.raises(ValueError, match="report on test, tune on dev"):
            held_out_scenes(split, 1)


def test_world_prompts_never_draw_evaluation_scenes(tmp_path):
    from vlalign.data.records import PromptRecord
    from vlalign.data.store import RunStore
    from vlalign.world.prompts import world_prompt_stage
    from vlalign.world.tasks import TaskMix

    store = RunStore(tmp_path)
    stage = world_prompt_stage(store, store.stage("prompts"), 300, mix=TaskMix({"describe": 0.5, "exist": 0.5}))
    rows = list(stage.rows())
    assert len(rows) == 300
    assert {r["id"].rsplit("-", 1)[0] for r in rows} == {"world-prompts"}
    assert {PromptRecord.from_row(r).meta["scene"]["split"] for r in rows} == {"prompts"}


def test_eval_entries_name_a_split_the_benchmark_has():
    from vlalign.stages.settings import EvalSpec

    assert EvalSpec("world", limit=10, split="dev").split == "dev"
    with pytest.raises(ValueError, match="no split 'train'.*test, dev"):
        EvalSpec("world", split="train")
    with pytest.raises(ValueError, match="benchmark 'pope' has no split 'test'"):
        EvalSpec("pope", split="test")
