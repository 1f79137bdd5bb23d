"""The world as a prompt source: fresh scenes, each with an instruction drawn from a task mix.

Scenes come from the `prompts` split (never the evaluation scenes); the exact answer is the reference
(POVID prefers it; other methods ignore it) and the task kind is the record's source (`world/describe`).
"""

from __future__ import annotations

import numpy as np

from vlalign.data.records import PromptRecord
from vlalign.data.sources import PromptRequest
from vlalign.data.store import Stage, run_stage
from vlalign.world.metrics import EVAL_SCENES
from vlalign.world.render import render
from vlalign.world.scene import SceneConfig, scenes
from vlalign.world.tasks import TaskMix, WorldPrompts


def world_prompt_stage(store, stage: Stage, n: int, config: SceneConfig = EVAL_SCENES, offset: int = 0,
                       image_size: int = 48, mix: TaskMix | None = None, split: str = "prompts") -> Stage:
    """`n` prompts on fresh world scenes of `split` (never the eval split). With `mix`, each scene gets a
    task of a kind drawn from it; without, a describe instruction."""
    mix = mix or TaskMix({"describe": 1.0})

    def process(batch):
        rows = []
        for scene in batch:
            task = mix.sample(scene, np.random.default_rng([scene.seed, 17]))
            rows.append(PromptRecord(id=scene.id, image=store.images.put(render(scene, image_size)),
                                     instruction=task.instruction, reference=task.answer,
                                     source=f"world/{task.kind}", meta={"scene": scene.to_dict()}).to_row())
        return rows

    run_stage(stage, list(scenes(split, n, config, start=offset)), process, id_of=lambda s: s.id,
              batch_size=256, shard_size=1000, description="prompts",
              manifest={"config": {"n": n, "offset": offset, "image_size": image_size, "split": split,
                                   "scenes": config.__dict__, "mix": mix.weights}})
    return stage


def image_size_of(processor) -> int:
    """The side of the images a world model reads (its processor's crop size)."""
    crop = getattr(getattr(processor, "image_processor", None), "crop_size", None)
    if not crop:
        raise ValueError("world prompts are drawn for a world model (world:base or one trained from it); this "
                         "policy's processor has no fixed image size")
    return crop["height"]


def write(request: PromptRequest) -> Stage:
    """The world prompt source's entry point (see `vlalign.data.sources`)."""
    options: WorldPrompts = request.options
    return world_prompt_stage(request.store, request.stage, request.n, EVAL_SCENES, offset=request.offset,
                              image_size=image_size_of(request.processor),
                              mix=TaskMix(dict(options.mix), adversarial=options.adversarial))
