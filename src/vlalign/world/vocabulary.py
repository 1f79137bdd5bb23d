"""The world's words for POVID's rule-based injector, and the training descriptions its co-occurrence
statistics are counted on."""

from __future__ import annotations

import numpy as np

from vlalign.feedback.injection import Vocabulary
from vlalign.world.scene import COLORS, COLUMNS, ROWS, SHAPES, SIZES, scenes
from vlalign.world.text import NUMBERS, PLURALS, describe


def world_vocabulary() -> Vocabulary:
    objects = {s: s for s in SHAPES} | {p: s for s, p in PLURALS.items()}
    positions = ("in the center", *(f"on the {c}" for c in COLUMNS if c != "middle"),
                 *(f"at the {r}" for r in ROWS if r != "center"),
                 *(f"in the {r} {c} corner" for r in ("top", "bottom") for c in ("left", "right")))
    templates = ("there is {a} {color} {object} {position}.", "{a} {color} {object} is {position}.",
                 "{position}, there is {a} {color} {object}.", "i can see {a} {color} {object} {position}.")
    return Vocabulary(objects, COLORS, SIZES, NUMBERS[1:], positions=positions, sentences=templates)


def training_descriptions(n: int) -> list[str]:
    """Exact descriptions of `n` training scenes (with their co-occurrence bias)."""
    return [describe(s, np.random.default_rng(s.seed)) for s in scenes("train", n)]
