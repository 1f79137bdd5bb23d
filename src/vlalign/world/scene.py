"""Scenes of the synthetic world: a few shapes on a 3x3 grid, with a known scene graph.

The training distribution carries a co-occurrence bias: each shape has a "partner" that usually appears
with it. A model that learns this language prior names the partner when it is absent, which is the
mechanism behind object hallucination in real VLMs, and here the ground truth is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "moon")
# Each shape's partner: the object that usually appears with it in training scenes.
PARTNERS: dict[str, str] = {
    "circle": "square", "square": "circle",
    "triangle": "star", "star": "triangle",
    "heart": "cross", "cross": "heart",
    "diamond": "moon", "moon": "diamond",
}
# Shapes are not equally common, so POPE's "popular" split differs from its "random" one.
SHAPE_WEIGHTS: tuple[float, ...] = (0.18, 0.16, 0.14, 0.12, 0.12, 0.10, 0.10, 0.08)
COLORS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SIZES: tuple[str, ...] = ("small", "big")
GRID = 3
COLUMNS: tuple[str, ...] = ("left", "middle", "right")
ROWS: tuple[str, ...] = ("top", "center", "bottom")
# `dev` scenes choose recipes (every world recipe up to now was tuned on them: they were the evaluation
# scenes); `test` scenes, a stream nothing was tuned on, give the numbers the README and the demo report.
# Prompt stages draw from `prompts`, the base and labeler trained on `train` and `labeler`.
SPLITS: dict[str, int] = {"train": 0, "dev": 1, "prompts": 2, "labeler": 3, "test": 5}
EVAL_SPLITS: tuple[str, ...] = ("test", "dev")


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    col: int
    row: int

    @property
    def phrase(self) -> str:
        return f"{self.size} {self.color} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    seed: int
    split: str = "train"

    @property
    def id(self) -> str:
        return f"world-{self.split}-{self.seed}"

    @property
    def shapes(self) -> set[str]:
        return {o.shape for o in self.objects}

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        return sum(
            1 for o in self.objects
            if (shape is None or o.shape == shape) and (color is None or o.color == color)
        )

    def to_dict(self) -> dict:
        return {"seed": self.seed, "split": self.split, "objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(tuple(Obj(**o) for o in d["objects"]), int(d["seed"]), d.get("split", "train"))


def left_of(a: Obj, b: Obj) -> bool:
    return a.col < b.col


def above(a: Obj, b: Obj) -> bool:
    return a.row < b.row


def next_to(a: Obj, b: Obj) -> bool:
    return abs(a.col - b.col) + abs(a.row - b.row) == 1


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn. `cooccur_rate` is the chance that an object's partner is added with it."""

    min_objects: int = 1
    max_objects: int = 5
    cooccur_rate: float = 0.85
    duplicate_rate: float = 0.15
    shape_weights: tuple[float, ...] = field(default=SHAPE_WEIGHTS)

    def __post_init__(self) -> None:
        if not 1 <= self.min_objects <= self.max_objects <= GRID * GRID:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= {GRID * GRID}, got "
                             f"{self.min_objects}..{self.max_objects}")
        if not 0.0 <= self.cooccur_rate <= 1.0:
            raise ValueError(f"cooccur_rate must be in [0, 1], got {self.cooccur_rate}")
        if len(self.shape_weights) != len(SHAPES):
            raise ValueError(f"shape_weights needs {len(SHAPES)} entries, one per shape in {SHAPES}")


def rng_for(split: str, index: int, salt: str = "") -> np.random.Generator:
    """A generator that depends only on (split, index, salt): scenes are reproducible one by one."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    digest = hashlib.sha256(f"{salt}".encode()).digest()[:4]
    return np.random.default_rng([SPLITS[split], index, int.from_bytes(digest, "little")])


def sample_scene(index: int, split: str = "train", config: SceneConfig = SceneConfig()) -> Scene:
    rng = rng_for(split, index)
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    weights = np.asarray(config.shape_weights, dtype=float)
    weights = weights / weights.sum()
    shapes: list[str] = []
    while len(shapes) < n:
        if shapes and rng.random() < config.duplicate_rate:
            shape = shapes[int(rng.integers(len(shapes)))]
        else:
            shape = SHAPES[int(rng.choice(len(SHAPES), p=weights))]
        shapes.append(shape)
        partner = PARTNERS[shape]
        if len(shapes) < n and partner not in shapes and rng.random() < config.cooccur_rate:
            shapes.append(partner)
    cells = rng.permutation(GRID * GRID)[:n]
    objects = tuple(
        Obj(
            shape=shape,
            color=COLORS[int(rng.integers(len(COLORS)))],
            size=SIZES[int(rng.integers(len(SIZES)))],
            col=int(cell % GRID),
            row=int(cell // GRID),
        )
        for shape, cell in zip(shapes, cells, strict=True)
    )
    return Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))), index, split)


def scenes(split: str, n: int, config: SceneConfig = SceneConfig(), start: int = 0) -> Iterator[Scene]:
    for i in range(start, start + n):
        yield sample_scene(i, split, config)


def shape_frequencies(n: int = 5000, config: SceneConfig = SceneConfig()) -> dict[str, float]:
    """Share of training scenes that contain each shape (POPE's 'popular' negatives come from this)."""
    counts = dict.fromkeys(SHAPES, 0)
    for scene in scenes("train", n, config):
        for s in scene.shapes:
            counts[s] += 1
    return {s: c / n for s, c in counts.items()}
