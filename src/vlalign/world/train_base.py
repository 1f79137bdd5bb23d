"""Supervised training of world VLMs from a recipe (configs as data), reproducible from its seed.

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
from torch.utils.data import IterableDataset

from vlalign.models.batching import encode
from vlalign.models.scoring import token_logps
from vlalign.train.loop import OptimConfig, train
from vlalign.world.model import TinyVLMConfig, build_model, build_processor
from vlalign.world.render import render
from vlalign.world.scene import SceneConfig, sample_scene
from vlalign.world.text import TaskMix

CHECKPOINTS = Path(__file__).parent / "checkpoints"


@dataclass
class BaseRecipe:
    name: str
    model: TinyVLMConfig = field(default_factory=TinyVLMConfig)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    mix: TaskMix = field(default_factory=TaskMix)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1000, lr=2e-3, warmup_ratio=0.03,
                                                                   weight_decay=0.01, log_every=50))
    batch_size: int = 32
    seed: int = 0
    scene_offset: int = 0  # which slice of the training stream this recipe sees

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mix"] = {"weights": self.mix.weights, "adversarial": self.mix.adversarial}
        return d


RECIPES: dict[str, BaseRecipe] = {
    "base": BaseRecipe("base"),
    "labeler": BaseRecipe(
        "labeler",
        scenes=SceneConfig(cooccur_rate=0.3),
        mix=TaskMix(weights={"exist": 0.7, "describe": 0.1, "color": 0.1, "count": 0.1}, adversarial=0.5),
        seed=1, scene_offset=5_000_000,
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


def sft_loss(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Mean negative log-likelihood of the response tokens."""
    logps, mask = token_logps(model, batch)
    loss = -logps.sum() / mask.sum().clamp(min=1)
    return loss, {}


def train_world_model(recipe: BaseRecipe, out: Path, steps: int | None = None) -> Path:
    """Train `recipe` from scratch and save model + processor (safetensors, bf16 weights) to `out`."""
    torch.manual_seed(recipe.seed)
    if steps is not None:
        recipe = replace(recipe, optim=replace(recipe.optim, steps=steps))
    processor = build_processor(recipe.model)
    model = build_model(processor, recipe.model, seed=recipe.seed)
    start = time.time()
    history = train(model, WorldStream(recipe, processor, recipe.model.image_size), sft_loss, recipe.optim,
                    description=f"train {recipe.name}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vlalign_recipe.json").write_text(json.dumps(
        {"recipe": recipe.to_dict(), "seconds": round(time.time() - start, 1), "history": history},
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
