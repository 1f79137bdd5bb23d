"""The synthetic world: reproducible scenes, the co-occurrence bias, rendering, text that tells the truth
about its scene, and the tokenizer/processor round trip."""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np
import pytest
from transformers import AutoProcessor

from vlalign.world.render import BACKGROUNDS, RGB, render
from vlalign.world.scene import (
    COLORS,
    COLUMNS,
    GRID,
    PARTNERS,
    ROWS,
    SHAPES,
    SIZES,
    Obj,
    Scene,
    SceneConfig,
    above,
    left_of,
    next_to,
    sample_scene,
    scenes,
)
from vlalign.world.tasks import TaskMix
from vlalign.world.text import (
    NUMBERS,
    PLURALS,
    REFUSAL,
    SINGULARS,
    TASKS,
    caption_task,
    color_task,
    count_task,
    describe_task,
    exist_task,
    redteam_task,
    relation_task,
    split_words,
    vocabulary,
)

N_TEXT_SCENES = 300


@lru_cache(maxsize=1)
def _tokenizer():
    from vlalign.world.model import build_tokenizer

    return build_tokenizer()


# --- scenes ------------------------------------------------------------------------------------------


def test_scenes_are_deterministic_per_split_and_index():
    assert sample_scene(17, "train") == sample_scene(17, "train")
    # a scene does not depend on which scenes were drawn before it
    assert list(scenes("test", 5, start=10))[3] == sample_scene(13, "test")
    # splits are different streams
    differ = sum(sample_scene(i, "train").objects != sample_scene(i, "test").objects for i in range(20))
    assert differ >= 15
    assert sample_scene(3, "dev").id == "world-dev-3"
    assert Scene.from_dict(sample_scene(4, "prompts").to_dict()) == sample_scene(4, "prompts")
    with pytest.raises(ValueError, match="unknown split"):
        sample_scene(0, "eval")


def test_object_counts_cells_and_attributes():
    counts = []
    for scene in scenes("train", 500):
        n = len(scene.objects)
        counts.append(n)
        assert 1 <= n <= 5
        cells = [(o.col, o.row) for o in scene.objects]
        assert len(set(cells)) == n  # one object per grid cell
        assert all(0 <= c < GRID and 0 <= r < GRID for c, r in cells)
        assert cells == sorted(cells, key=lambda cr: (cr[1], cr[0]))  # reading order: rows, then columns
        assert all(o.shape in SHAPES and o.color in COLORS and o.size in SIZES for o in scene.objects)
    assert set(counts) == {1, 2, 3, 4, 5}
    narrow = SceneConfig(min_objects=2, max_objects=3)
    assert {len(s.objects) for s in scenes("train", 200, narrow)} == {2, 3}
    with pytest.raises(ValueError):
        SceneConfig(min_objects=0)
    with pytest.raises(ValueError):
        SceneConfig(cooccur_rate=1.5)


def _partner_share(config: SceneConfig, n: int = 2000) -> float:
    """Of all (scene, present shape) pairs, the share whose partner is present too."""
    with_partner = total = 0
    for scene in scenes("train", n, config):
        for shape in scene.shapes:
            total += 1
            with_partner += PARTNERS[shape] in scene.shapes
    return with_partner / total


def test_cooccurrence_bias_direction():
    never, default, always = (_partner_share(SceneConfig(cooccur_rate=r)) for r in (0.0, 0.85, 1.0))
    # Without the bias a partner is one of 7 other shapes drawn by chance (about a quarter of the time);
    # with it, a partner joins whenever there is room for one more object.
    assert never < 0.4
    assert always > 0.75
    assert never < default <= always


# --- rendering ---------------------------------------------------------------------------------------


def test_render_is_deterministic_and_sized():
    scene = sample_scene(5)
    a, b = render(scene), render(scene)
    assert a.size == (48, 48) and a.mode == "RGB"
    assert a.tobytes() == b.tobytes()
    assert render(scene, size=96).size == (96, 96)
    assert render(sample_scene(6)).tobytes() != a.tobytes()


def test_render_draws_the_object_in_its_cell():
    # A big red square in the middle cell: r = 16 * 0.42 = 6.72, jitter <= 0.8 * (8 - 6.72) ~ 1 px, so the
    # image centre (24, 24) is inside the square; the corners are background.
    scene = Scene((Obj("square", "red", "big", 1, 1),), seed=0)
    image = render(scene)
    assert image.getpixel((24, 24)) == RGB["red"]
    corners = {image.getpixel(p) for p in ((0, 0), (47, 0), (0, 47), (47, 47))}
    assert len(corners) == 1 and corners.pop() in BACKGROUNDS
    # and an object in the top-left cell colours the top-left cell's centre (8, 8), not the image centre
    image = render(Scene((Obj("circle", "blue", "big", 0, 0),), seed=0))
    assert image.getpixel((8, 8)) == RGB["blue"] and image.getpixel((24, 24)) != RGB["blue"]


# --- text tasks --------------------------------------------------------------------------------------


def _number(word: str) -> int:
    return NUMBERS.index(word)


def _objects_named(scene: Scene, color: str, shape: str) -> list[Obj]:
    return [o for o in scene.objects if o.color == color and o.shape == shape]


def _position_phrase_by_hand(o: Obj) -> str:
    if (o.col, o.row) == (1, 1):
        return "in the center"
    if o.col == 1:
        return f"at the {ROWS[o.row]}"
    if o.row == 1:
        return f"on the {COLUMNS[o.col]}"
    return f"in the {ROWS[o.row]} {COLUMNS[o.col]} corner"


def _text_scenes():
    return list(scenes("train", N_TEXT_SCENES))


def test_describe_names_every_object_and_nothing_else():
    rng = np.random.default_rng(1)
    for scene in _text_scenes():
        task = describe_task(scene, rng)
        answer = task.answer
        for o in scene.objects:  # each object with its own position, in one of the four sentence forms
            pos, name = _position_phrase_by_hand(o), f"(?:{o.size} )?{o.color} {o.shape}"
            forms = (rf"{name} (?:is )?{pos}\.", rf"{pos}, there is an? {name}\.")
            assert any(re.search(f, answer) for f in forms), (o, answer)
        words = split_words(answer)
        named = {w for w in words if w in SHAPES} | {SINGULARS[w] for w in words if w in SINGULARS}
        assert named == scene.shapes
        m = re.search(r"(?:shows|there (?:is|are)) (\w+) (?:shapes?|objects?)", answer)
        if m:
            assert _number(m.group(1)) == len(scene.objects)
        rel = re.search(r"the (\w+) (\w+) is (left of|right of|above|below) the (\w+) (\w+)\.", answer)
        if rel:
            c1, s1, how, c2, s2 = rel.groups()
            holds = {"left of": lambda a, b: a.col < b.col, "right of": lambda a, b: a.col > b.col,
                     "above": lambda a, b: a.row < b.row, "below": lambda a, b: a.row > b.row}[how]
            assert any(holds(a, b) for a in _objects_named(scene, c1, s1) for b in _objects_named(scene, c2, s2))


def test_caption_lists_every_object():
    rng = np.random.default_rng(2)
    for scene in _text_scenes():
        answer = caption_task(scene, rng).answer
        assert all(f"{o.color} {o.shape}" in answer for o in scene.objects)
        assert len(re.findall(r"\b(?:a|an) ", answer)) == len(scene.objects)


def test_color_answers_name_the_true_color():
    rng = np.random.default_rng(3)
    asked = 0
    for scene in _text_scenes():
        task = color_task(scene, rng)
        if task.kind != "color":  # no shape appears once: falls back to a count question
            assert all(scene.count(o.shape) > 1 for o in scene.objects)
            continue
        asked += 1
        shape = re.fullmatch(r"(?:what color is|which color does) the (\w+)(?: have)?\?", task.instruction).group(1)
        (obj,) = [o for o in scene.objects if o.shape == shape]  # asked only about shapes that appear once
        assert [w for w in split_words(task.answer) if w in COLORS] == [obj.color]
    assert asked > N_TEXT_SCENES * 0.8


def test_count_answers_give_the_true_count():
    rng = np.random.default_rng(4)
    kinds = set()
    for scene in _text_scenes():
        task = count_task(scene, rng)
        if task.instruction in ("how many objects are there?", "how many shapes are in the image?"):
            kinds.add("total")
            truth = len(scene.objects)
        else:
            plural = re.fullmatch(r"how many (\w+) are there\?", task.instruction).group(1)
            truth = scene.count(SINGULARS[plural])
            kinds.add("zero" if truth == 0 else "shape")
        if truth == 0:
            assert task.answer.startswith("there are no ")
        else:
            said = re.fullmatch(r"there (?:is|are) (\w+) (\w+)\.", task.answer).groups()
            assert _number(said[0]) == truth
            assert (said[1] in ("object", *SHAPES)) == (truth == 1)  # singular noun exactly when one
    assert kinds == {"total", "zero", "shape"}


def test_exist_answers_match_the_scene():
    rng = np.random.default_rng(5)
    answers = set()
    for adversarial in (0.0, 1.0):
        for scene in _text_scenes():
            task = exist_task(scene, rng, adversarial)
            m = re.fullmatch(r"is there an? (?:(\w+) )?(\w+) in the image\?", task.instruction)
            color, shape = m.groups()
            present = scene.count(shape, color) > 0
            answers.add(present)
            assert task.answer.startswith("yes" if present else "no"), (scene, task)
    assert answers == {True, False}


def test_adversarial_exist_negatives_are_partners():
    rng = np.random.default_rng(6)
    for scene in _text_scenes():
        task = exist_task(scene, rng, adversarial=1.0)
        m = re.fullmatch(r"is there an? (?:(\w+) )?(\w+) in the image\?", task.instruction)
        shape = m.group(2)
        partners_absent = {PARTNERS[s] for s in scene.shapes} - scene.shapes
        if shape not in scene.shapes and partners_absent:
            assert shape in partners_absent


def test_adversarial_negatives_with_a_colour_ask_for_the_matching_piece():
    # a hard negative names the absent partner of a present object, in that object's colour
    rng = np.random.default_rng(16)
    checked = 0
    for scene in _text_scenes():
        task = exist_task(scene, rng, adversarial=1.0)
        color, shape = re.fullmatch(r"is there an? (?:(\w+) )?(\w+) in the image\?", task.instruction).groups()
        if color and shape not in scene.shapes and any(PARTNERS[o.shape] == shape for o in scene.objects):
            assert any(PARTNERS[o.shape] == shape and o.color == color for o in scene.objects), task
            checked += 1
    assert checked > 10


def test_imagined_partners_are_matching_pieces_next_to_their_source():
    from vlalign.world.text import imagined_partners

    rng = np.random.default_rng(17)
    added = 0
    for scene in _text_scenes():
        written = imagined_partners(scene, rng, rate=1.0)
        extra = [o for o in written.objects if o not in scene.objects]
        assert set(scene.objects) <= set(written.objects)
        for obj in extra:
            assert obj.shape not in scene.shapes  # only absent partners are imagined
            source = written.objects[written.objects.index(obj) - 1]  # written right after its source
            assert PARTNERS[source.shape] == obj.shape and (source.color, source.size) == (obj.color, obj.size)
            assert (obj.col, obj.row) not in {(o.col, o.row) for o in scene.objects}
            added += 1
        # every present shape whose partner is absent gets it when there is room
        free = 9 - len(scene.objects)
        wanted = {PARTNERS[s] for s in scene.shapes} - scene.shapes
        assert len(extra) == min(len(wanted), free) or free < len(wanted)
    assert added > 20
    assert imagined_partners(_text_scenes()[0], rng, rate=0.0) == _text_scenes()[0]


def test_annotator_noise_only_touches_descriptions():
    from vlalign.world.tasks import TaskMix

    noisy, clean = TaskMix({"count": 1.0}, hallucination=1.0), TaskMix({"count": 1.0})
    for scene in _text_scenes()[:30]:
        assert noisy.sample(scene, np.random.default_rng(scene.seed)) == clean.sample(scene, np.random.default_rng(scene.seed))


def test_refusal_knob_sets_the_share_of_declined_harmful_requests():
    from vlalign.world.tasks import TaskMix
    from vlalign.world.text import is_refusal

    for rate, expect in ((0.0, 0), (1.0, 50)):
        mix = TaskMix({"harmful": 1.0}, refusal=rate)
        got = sum(is_refusal(mix.sample(s, np.random.default_rng(s.seed)).answer) for s in _text_scenes()[:50])
        assert got == expect


def test_relation_answers_are_true():
    rng = np.random.default_rng(7)
    holds = {"left of": left_of, "above": above, "next to": next_to}
    seen = set()
    for scene in _text_scenes():
        task = relation_task(scene, rng)
        where = re.fullmatch(r"where is the (\w+) (\w+)\?", task.instruction)
        if where:
            seen.add("where")
            objs = _objects_named(scene, *where.groups())
            assert any(task.answer == f"the {o.color} {o.shape} is {_position_phrase_by_hand(o)}." for o in objs)
            continue
        a, rel, b = re.fullmatch(r"is the (\w+) (left of|above|next to) the (\w+)\?", task.instruction).groups()
        (oa,), (ob,) = [o for o in scene.objects if o.shape == a], [o for o in scene.objects if o.shape == b]
        truth = holds[rel](oa, ob)
        seen.add(truth)
        assert task.answer == ("yes." if truth else "no.")
    assert seen == {"where", True, False}


def test_redteam_answers_refer_to_a_present_object():
    rng = np.random.default_rng(8)
    for scene in _text_scenes()[:50]:
        for harmful in (True, False):
            task = redteam_task(scene, rng, harmful=harmful)
            m = re.search(r"the (\w+) (\w+) (?:in|on|at) the", task.answer)
            assert m and _objects_named(scene, *m.groups())
        assert redteam_task(scene, rng, harmful=True, refuse_rate=1.0).answer == REFUSAL


def test_task_mix_samples_only_known_kinds():
    rng = np.random.default_rng(9)
    kinds = {TaskMix().sample(sample_scene(i), rng).kind for i in range(200)}
    assert kinds <= set(TASKS) and {"describe", "exist"} <= kinds
    with pytest.raises(ValueError, match="unknown task kinds"):
        TaskMix(weights={"poetry": 1.0}).sample(sample_scene(0), rng)


def test_split_words():
    assert split_words("Yes, there is a Red circle.") == ["yes", ",", "there", "is", "a", "red", "circle", "."]
    assert split_words("what?!") == ["what", "?", "!"]


# --- tokenizer and processor -------------------------------------------------------------------------


def test_tokenizer_knows_every_word():
    tok = _tokenizer()
    unk = tok.unk_token_id
    words = vocabulary()
    assert set(SHAPES) | set(PLURALS.values()) | set(COLORS) <= set(words)
    for w in words:
        # words as the first word and after punctuation; punctuation as world text writes it, attached
        variants = (w, f"yes, {w}") if w[0].isalnum() else (f"yes{w}", f"yes,{w}")
        for variant in variants:
            ids = tok(variant, add_special_tokens=False)["input_ids"]
            assert unk not in ids, variant
    assert tok("blorp", add_special_tokens=False)["input_ids"] == [unk]  # unknown words do map to <unk>
    # whole texts too, from every task kind
    rng = np.random.default_rng(10)
    for scene in list(scenes("test", 40)):
        for fn in TASKS.values():
            t = fn(scene, rng)
            for text in (t.instruction, t.answer):
                ids = tok(text, add_special_tokens=False)["input_ids"]
                assert unk not in ids, text
                assert len(ids) == len(split_words(text))  # one token per word / punctuation mark


def test_processor_saves_and_reloads(tmp_path):
    from vlalign.models.batching import chat_prompt
    from vlalign.world.model import TinyVLMConfig, build_processor

    processor = build_processor(TinyVLMConfig())
    processor.save_pretrained(tmp_path)
    reloaded = AutoProcessor.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == "LlavaProcessor"
    assert reloaded.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    image = render(sample_scene(0))
    prompt = chat_prompt(reloaded, "describe the image.")
    assert prompt == "USER:<image> describe the image. ASSISTANT:"
    a = processor(images=[image], text=[prompt], return_tensors="pt")
    b = reloaded(images=[image], text=[prompt], return_tensors="pt")
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert (a["pixel_values"] == b["pixel_values"]).all()
    assert tuple(b["pixel_values"].shape) == (1, 3, 48, 48)
    # 48 px / 16 px patches = 3 x 3 = 9 image tokens (the CLS token is dropped by the "default" strategy)
    assert (b["input_ids"][0] == reloaded.image_token_id).sum() == 9
    assert reloaded.tokenizer.unk_token_id not in b["input_ids"][0].tolist()


def test_tokenizer_punctuation_after_a_space():
    """EXTRA_WORDS reserves "(", "/", ":", "-" for judge rationales; Metaspace turns " (" into "▁(" and the
    Punctuation pre-tokenizer leaves a bare "▁", which the vocabulary must hold."""
    tok = _tokenizer()
    for text in ("rating: 4 / 5 (the star is missing)", "! yes", "good - correct"):
        assert tok.unk_token_id not in tok(text, add_special_tokens=False)["input_ids"], text
