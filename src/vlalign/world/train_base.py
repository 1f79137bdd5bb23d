"""Supervised training of world VLMs from a recipe (configs as data), reproducible from its seed.

Training follows the usual VLM recipe in miniature: first the vision tower is pretrained on its own
(here: name the shape and colour in each grid cell, as a supervised ViT would be), then the whole LLaVA
is instruction-tuned on the world's tasks. Starting the decoder on a vision tower that already tells
shapes apart is what lets a 2 M-parameter model learn to look at the image in a few minutes on a CPU.

`base` is the policy every method starts from: competent, and hallucinating through the co-occurrence
bias of its scenes and of its descriptions' annotators. `labeler` is a stronger yes/no answerer (trained
on less biased scenes with hard negatives and exact descriptions), the "open-source labeler" of RLAIF-V
in this world.
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
from vlalign.train.loop import train
from vlalign.train.settings import OptimConfig
from vlalign.world.model import TinyVLMConfig, build_model, build_processor
from vlalign.world.render import render
from vlalign.world.scene import COLORS, GRID, SHAPES, SceneConfig, sample_scene
from vlalign.world.tasks import TaskMix


@dataclass
class Phase:
    """One supervised phase: a task mix on a scene distribution, with its own learning-rate schedule."""

    steps: int
    mix: TaskMix = field(default_factory=TaskMix)
    scenes: SceneConfig = field(default_factory=SceneConfig)
    lr: float = 3e-4

    def to_dict(self) -> dict:
        return {"steps": self.steps, "lr": self.lr, "scenes": asdict(self.scenes),
                "mix": {"weights": self.mix.weights, "adversarial": self.mix.adversarial,
                        "hallucination": self.mix.hallucination}}


# Grounding first: yes/no questions on less biased scenes teach the decoder to look an object up in the
# image (content-addressed attention), which a mix dominated by descriptions learns only very slowly.
GROUNDING = Phase(400, TaskMix({"exist": 0.7, "color": 0.1, "count": 0.1, "caption": 0.1}, adversarial=0.3),
                  SceneConfig(cooccur_rate=0.5))
INSTRUCT_MIX = {"describe": 0.36, "caption": 0.06, "exist": 0.30, "color": 0.10, "count": 0.08,
                "relation": 0.06, "harmful": 0.02, "benign": 0.02}


@dataclass
class BaseRecipe:
    """How a world model is made: vision pretraining (from scratch only), then supervised phases.

    Learning rates stay at 3e-4 or below: at 1e-3 and above these decoders learn to read the image by
    position (enough to describe it) but never learn to look an object up by content, so yes/no answers
    stay at chance however long they train.
    """

    name: str
    phases: tuple[Phase, ...]
    model: TinyVLMConfig = field(default_factory=TinyVLMConfig)
    batch_size: int = 32
    vision_steps: int = 300
    vision_lr: float = 2e-3
    init_from: str | None = None  # start from this model (world:<name> or a directory) instead of scratch
    seed: int = 0
    scene_offset: int = 0  # which slice of the training stream this recipe sees

    @property
    def steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def to_dict(self) -> dict:
        return {"name": self.name, "phases": [p.to_dict() for p in self.phases], "model": asdict(self.model),
                "batch_size": self.batch_size, "vision_steps": self.vision_steps, "vision_lr": self.vision_lr,
                "init_from": self.init_from, "seed": self.seed, "scene_offset": self.scene_offset}


RECIPES: dict[str, BaseRecipe] = {
    # The policy every method starts from. It learns to see first, as real VLMs do from clean data: grounding,
    # then the world's tasks with exact descriptions. Then it is instruction-tuned on scenes where partners
    # co-occur 85% of the time, with descriptions whose annotators name every missing partner (LLaVA's
    # GPT-written captions, in miniature), and last on less biased scenes, mostly yes/no, which keeps the
    # descriptions' habit but lets it check a claim when asked (so it can be its own labeler). It can see what
    # it describes, and hallucinates from the language prior it picked up: what alignment should remove
    # without removing what it sees.
    "base": BaseRecipe("base", phases=(
        GROUNDING,
        Phase(400, TaskMix(INSTRUCT_MIX, adversarial=0.5), SceneConfig(cooccur_rate=0.5)),
        Phase(700, TaskMix(INSTRUCT_MIX, adversarial=0.5, hallucination=1.0), SceneConfig(cooccur_rate=0.85)),
        Phase(700, TaskMix({"exist": 0.6, "describe": 0.3, "color": 0.05, "count": 0.05}, adversarial=1.0,
                           hallucination=0.8), SceneConfig(cooccur_rate=0.3)),
    ), vision_steps=1000),
    # The labeler continues from the base on less biased scenes with exact descriptions, mostly yes/no
    # questions with hard (co-occurring) negatives: a stronger judge of existence claims than the policy.
    "labeler": BaseRecipe("labeler", phases=(
        Phase(1500, TaskMix({"exist": 0.6, "describe": 0.2, "color": 0.1, "count": 0.1}, adversarial=0.5),
              SceneConfig(cooccur_rate=0.3)),
    ), init_from="world:base", seed=1, scene_offset=5_000_000),
    # VLFeedback's AI judge in this world: the labeler, taught to rate answers on helpfulness, visual
    # faithfulness and ethics with rationales (see world/judging.py).
    "judge": BaseRecipe("judge", phases=(
        Phase(1200, TaskMix({"judge": 0.85, "exist": 0.15}, adversarial=0.5), SceneConfig(cooccur_rate=0.5)),
    ), init_from="world:labeler", seed=3, scene_offset=9_000_000),
    # The response pool's other members: a smaller, shorter-trained model, and a careful one that
    # declines harmful requests (the base never does).
    "small": BaseRecipe("small", model=TinyVLMConfig(text_hidden=128, text_layers=3, text_intermediate=384),
                        phases=(replace(GROUNDING, steps=200),
                                Phase(600, TaskMix(INSTRUCT_MIX, adversarial=0.3, hallucination=0.8))),
                        seed=4, scene_offset=11_000_000),
    "careful": BaseRecipe("careful", phases=(
        Phase(300, TaskMix({**INSTRUCT_MIX, "harmful": 0.12}, adversarial=0.5, hallucination=0.5, refusal=1.0)),
    ), init_from="world:base", seed=5, scene_offset=13_000_000),
}

LONG_TASKS = {"describe"}


class WorldStream(IterableDataset):
    """Endless encoded SFT batches of one phase; batch i depends only on (seed, offset, i).

    Descriptions are several times longer than the other answers, so they get batches of their own (in
    their share of the mix): a mixed batch would pad every short answer to the longest description.
    """

    def __init__(self, phase: Phase, processor, image_size: int, batch_size: int, seed: int, offset: int):
        self.phase, self.processor, self.image_size = phase, processor, image_size
        self.batch_size, self.seed, self.offset = batch_size, seed, offset

    def __iter__(self):
        mix = self.phase.mix
        long, short, p_long = mix.restrict(LONG_TASKS), mix.restrict(LONG_TASKS, keep=False), mix.share(LONG_TASKS)
        i = 0
        while True:
            rng = np.random.default_rng([self.seed, self.offset, i])
            first = self.offset + i * self.batch_size
            scenes = [sample_scene(first + j, "train", self.phase.scenes) for j in range(self.batch_size)]
            group = long if rng.random() < p_long else short
            tasks = [group.sample(s, rng) for s in scenes]
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
    scene_config = recipe.phases[0].scenes
    heads = torch.nn.ModuleDict({"shape": torch.nn.Linear(hidden, len(SHAPES) + 1),
                                 "color": torch.nn.Linear(hidden, len(COLORS) + 1)})
    params = [*tower.parameters(), *heads.parameters()]
    optimizer = torch.optim.AdamW(params, lr=recipe.vision_lr)
    history = []
    with progress(f"pretrain {recipe.name} vision", total=recipe.vision_steps) as bar:
        for step in range(recipe.vision_steps):
            first = recipe.scene_offset + step * recipe.batch_size
            batch_scenes = [sample_scene(first + j, "train", scene_config) for j in range(recipe.batch_size)]
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


def train_world_model(recipe: BaseRecipe, out: Path, init_from: str | None = None) -> Path:
    """Train `recipe` (from scratch, or from `init_from`) and save model + processor (safetensors, bf16
    weights) to `out`."""
    torch.manual_seed(recipe.seed)
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
    history = []
    for k, phase in enumerate(recipe.phases):
        stream = WorldStream(phase, processor, recipe.model.image_size, recipe.batch_size, recipe.seed,
                             recipe.scene_offset + k * 10_000_000)
        optim = OptimConfig(steps=phase.steps, lr=phase.lr, warmup_ratio=0.03, weight_decay=0.01, log_every=50)
        steps = train(model, stream, lambda batch, _: batch, sft_loss, optim, phase.steps,
                      description=f"train {recipe.name} phase {k + 1}")
        history += [{"phase": k, **h} for h in steps]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out)
    processor.save_pretrained(out)
    (out / "vlalign_recipe.json").write_text(json.dumps(
        {"recipe": recipe.to_dict(), "seconds": round(time.time() - start, 1),
         "vision_history": vision_history, "history": history},
        indent=1))
    return out
