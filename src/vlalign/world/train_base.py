"""Supervised training of world VLMs from a recipe (configs as data), reproducible from its seed.

Training follows the usual VLM recipe in miniature: first the vision tower is pretrained on its own
(here: name the shape and colour in each grid cell, as a supervised ViT would be), then the whole LLaVA
is instruction-tuned on the world's tasks. Starting the decoder on a vision tower that already tells
shapes apart is what lets a 2 M-parameter model learn to look at the image in a few minutes on a CPU.

Yes/no answers open with a fixed prefix ("the answer is yes."): measured on these models, the decision
token right after the prompt stays at chance for thousands of steps (P(yes) does not even change with the
image), while a decision a few answer tokens later is learned.

`base` is the policy every method starts from: competent, and hallucinating through the co-occurrence
bias. `labeler` is a stronger yes/no answerer (trained on less biased scenes with hard negatives), the
"open-source labeler" of RLAIF-V in this world.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import IterableDataset

from vlalign.models.batching import encode
from vlalign.models.scoring import token_logps
from vlalign.progress import progress
from vlalign.train.loop import OptimConfig, train
from vlalign.world.model import TinyVLMConfig, build_model, build_processor
from vlalign.world.render import render
from vlalign.world.scene import COLORS, GRID, SHAPES, SceneConfig, sample_scene
from vlalign.world.text import TaskMix

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass
class BaseRecipe:
    name: str
    model: TinyVLMConfig = field(default_factory=TinyVLMConfig)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    mix: TaskMix = field(default_factory=TaskMix)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=635, lr=2e-3, warmup_ratio=0.03,
                                                                   weight_decay=0.01, log_every=50))
    batch_size: int = 32
    vision_steps: int = 300
    vision_lr: float = 2e-3
    init_from: str | None = None  # start from this model (world:<name> or a directory) instead of scratch
    seed: int = 0
    scene_offset: int = 0  # which slice of the training stream this recipe sees

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mix"] = {"weights": self.mix.weights, "adversarial": self.mix.adversarial}
        return d


RECIPES: dict[str, BaseRecipe] = {
    "base": BaseRecipe("base"),
    # The labeler continues from the base on less biased scenes, mostly yes/no questions with hard
    # (co-occurring) negatives: a stronger judge of existence claims than the policy it grades.
    "labeler": BaseRecipe(
        "labeler",
        scenes=SceneConfig(cooccur_rate=0.3),
        mix=TaskMix(weights={"exist": 0.8, "describe": 0.2}, adversarial=0.5),
        optim=OptimConfig(steps=1200, lr=1e-3, warmup_ratio=0.03, weight_decay=0.01, log_every=50),
        init_from="world:base", seed=1, scene_offset=5_000_000,
    ),
}


class WorldStream(IterableDataset):
    """Endless encoded SFT batches drawn from the world; batch i depends only on (seed, i)."""

    def __init__(self, recipe: BaseRecipe, processor, image_size: int):
        self.recipe, self.processor, self.image_size = recipe, processor, image_size

    def __iter__(self):
        r, i = self.recipe, 0
        while True:
            rng = np.random.default_rng([r.seed, i])
            first = r.scene_offset + i * r.batch_size
            scenes = [sample_scene(first + j, "train", r.scenes) for j in range(r.batch_size)]
            tasks = [r.mix.sample(s, rng) for s in scenes]
            yield encode(self.processor, [render(s, self.image_size) for s in scenes],
                         [t.instruction for t in tasks], [t.answer for t in tasks])
            i += 1


def cell_labels(scene_list: list, patches_per_side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: 1 + index of the shape / colour whose grid cell centre falls in it, 0 where empty."""
    shape = torch.zeros(len(scene_list), patches_per_side ** 2, dtype=torch.long)
    color = torch.zeros_like(shape)
    for i, scene in enumerate(scene_list):
        for o in scene.objects:
            r, c = (int((k + 0.5) * patches_per_side / GRID) for k in (o.row, o.col))
            shape[i, r * patches_per_side + c] = SHAPES.index(o.shape) + 1
            color[i, r * patches_per_side + c] = COLORS.index(o.color) + 1
    return shape, color


def pretrain_vision(model, processor, recipe: BaseRecipe) -> list[dict[str, float]]:
    """Supervised pretraining of the vision tower: linear heads on its patch tokens name each cell's
    shape and colour. The heads are thrown away; only the tower keeps what it learned."""
    tower = model.model.vision_tower
    hidden, side = tower.config.hidden_size, recipe.model.image_size // recipe.model.patch_size
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(hidden, len(SHAPES) + 1),
                                 "color": torch.nn.Linear(hidden, len(COLORS) + 1)})
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.vision_lr)
    history = []
    with progress(f"pretrain {recipe.name} vision", total=recipe.vision_steps) as bar:
        for step in range(recipe.vision_steps):
            first = recipe.scene_offset + step * recipe.batch_size
            batch_scenes = [sample_scene(first + j, "train", recipe.scenes) for j in range(recipe.batch_size)]
            pixels = processor.image_processor(
                [render(s, recipe.model.image_size) for s in batch_scenes], return_tensors="pt")["pixel_values"]
            tokens = tower(pixels).last_hidden_state[:, 1:]
            shape, color = cell_labels(batch_scenes, side)
            loss = (F.cross_entropy(heads["shape"](tokens).flatten(0, 1), shape.flatten())
                    + F.cross_entropy(heads["color"](tokens).flatten(0, 1), color.flatten()))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            bar.advance(1)
            if (step + 1) % 50 == 0:
                history.append({"step": step + 1, "vision_loss": float(loss.detach())})
    return history


def sft_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood of the response tokens."""
    logps, mask = token_logps(model, batch)
    loss = -logps.sum() / mask.sum().clamp(min=1)
    return loss, {}


def train_world_model(recipe: BaseRecipe, out: Path, steps: int | None = None,
                      init_from: str | None = None) -> Path:
    """Train `recipe` (from scratch, or from `init_from`) and save model + processor (safetensors, bf16
    weights) to `out`."""
    torch.manual_seed(recipe.seed)
    if steps is not None:
        recipe = replace(recipe, optim=replace(recipe.optim, steps=steps))
    if init_from is not None:
        recipe = replace(recipe, init_from=init_from)
    start = time.time()
    if recipe.init_from:
        from vlalign.models.load import load

        model, processor = load(recipe.init_from, dtype="float32", device="cpu")
        vision_history = []
    else:
        processor = build_processor(recipe.model)
        model = build_model(processor, recipe.model, seed=recipe.seed)
        vision_history = pretrain_vision(model, processor, recipe)
    history = train(model, WorldStream(recipe, processor, recipe.model.image_size), sft_loss, recipe.optim,
                    description=f"train {recipe.name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vlalign_recipe.json").write_text(json.dumps(
        {"recipe": recipe.to_dict(), "seconds": round(time.time() - start, 1),
         "vision_history": vision_history, "history": history},
        indent=1))
    return out


def shipped_path(name: str = "base") -> Path:
    """Directory of a world model that ships inside the package (model + processor, `from_pretrained`)."""
    path = CHECKPOINTS / name
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"the shipped world model {name!r} is missing at {path}; rebuild it with "
            f"`vlalign world train-base --recipe {name} --out {path}`")
    return path
