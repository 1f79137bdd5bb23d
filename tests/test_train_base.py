"""The world-model recipe: reproducible from its seed, and a labeler that continues from another model."""

from __future__ import annotations

from dataclasses import replace

import torch
from conftest import TINY
from safetensors.torch import load_file

from vlalign.world.model import TinyVLMConfig
from vlalign.world.scene import Obj, Scene
from vlalign.world.train_base import RECIPES, cell_labels, train_world_model


def _tiny(recipe_name: str = "base"):
    recipe = RECIPES[recipe_name]
    return replace(recipe, model=TinyVLMConfig(**TINY), batch_size=4, vision_steps=2,
                   phases=tuple(replace(p, steps=2) for p in recipe.phases))


def test_training_is_reproducible_from_the_seed(tmp_path):
    a = load_file(train_world_model(_tiny(), tmp_path / "a") / "model.safetensors")
    b = load_file(train_world_model(_tiny(), tmp_path / "b") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = load_file(train_world_model(replace(_tiny(), seed=5), tmp_path / "c") / "model.safetensors")
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_a_recipe_can_continue_from_another_model(tmp_path):
    base = train_world_model(_tiny(), tmp_path / "base")
    labeler = train_world_model(_tiny("labeler"), tmp_path / "labeler", init_from=str(base))
    a, b = load_file(base / "model.safetensors"), load_file(labeler / "model.safetensors")
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)


def test_cell_labels_put_each_object_in_its_patch():
    scene = Scene((Obj("circle", "red", "big", col=2, row=0), Obj("star", "blue", "small", col=0, row=2)), 0)
    shape, color = cell_labels([scene], patches_per_side=3)
    # row-major patches: (row 0, col 2) -> 2, (row 2, col 0) -> 6; classes are 1 + index, 0 = empty
    assert shape[0].tolist() == [0, 0, 1, 0, 0, 0, 4, 0, 0]
    assert color[0].tolist() == [0, 0, 1, 0, 0, 0, 3, 0, 0]
    # on a 6x6 patch grid each cell covers 2x2 patches and the object sits in the one holding its centre
    shape6, _ = cell_labels([scene], patches_per_side=6)
    assert shape6[0].nonzero().flatten().tolist() == [1 * 6 + 5, 5 * 6 + 1]
