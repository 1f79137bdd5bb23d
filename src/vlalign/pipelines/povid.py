"""POVID end to end: ground-truth answers preferred, injected hallucinations and the policy's own
noisy-image answers dispreferred; stage 1 then stage 2 (see `vlalign.train.povid`).

No judge of responses is needed: in the world the ground truth is the scene's exact description (the one
place besides evaluation where the scene graph is used, as the dataset's reference answer); on user data
it is each record's reference answer.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlalign.data.prompts import user_prompt_stage, world_prompt_stage
from vlalign.data.records import PairRecord, PromptRecord, stable_id
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.evaluate.world import EVAL_SCENES, evaluate_world
from vlalign.feedback.injection import (
    LLMInjector,
    RuleInjector,
    english_vocabulary,
    fit_cooccurrence,
    world_vocabulary,
)
from vlalign.models.load import load, save
from vlalign.pipelines.stages import preference_examples
from vlalign.progress import log
from vlalign.train.dpo import DPOConfig, train_dpo
from vlalign.train.loop import OptimConfig
from vlalign.train.povid import NoiseConfig, train_povid_stage2
from vlalign.world.text import TaskMix

WORLD = "world"


def _dpo(lr: float) -> DPOConfig:
    return DPOConfig(beta=0.1, nll_weight=1.0, batch_size=16, epochs=1, optim=OptimConfig(lr=lr, warmup_ratio=0.1))


def _instruction_mix() -> dict[str, float]:
    """Mostly detailed descriptions, with the short tasks whose reference answers an injector can edit
    (POVID drew its prompts from LLaVA's instruction data: descriptions and questions). A few existence
    questions, half of their negatives adversarial, teach "no" where the bias says "yes"."""
    return {"describe": 0.75, "caption": 0.05, "exist": 0.05, "color": 0.1, "count": 0.05}


@dataclass
class POVIDConfig:
    """A POVID run, as data (`vlalign povid --config run.yaml`)."""

    policy: str = "world:base"
    prompts: str = WORLD  # "world", or a prompt file whose records carry a reference answer
    n_prompts: int = 500
    instruction_mix: dict[str, float] = field(default_factory=_instruction_mix)  # world prompts only
    injector: str = "rules"  # rules (co-occurrence statistics) | llm (through `judge`)
    judge: str | None = None
    edits: int = 2
    stage1: DPOConfig = field(default_factory=lambda: _dpo(5e-5))
    stage2: DPOConfig = field(default_factory=lambda: _dpo(5e-5))
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    stages: int = 2  # 1 stops after stage 1
    eval_scenes: int = 500
    cooccurrence_scenes: int = 5000  # world training scenes whose descriptions give the statistics
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stages not in (1, 2):
            raise ValueError(f"stages must be 1 or 2, got {self.stages}")


def _training_texts(config: POVIDConfig, prompts: Stage) -> list[str]:
    """The answers co-occurrence statistics are counted on: world training descriptions, or the references."""
    if config.prompts != WORLD:
        return [r["reference"] for r in prompts.rows() if r.get("reference")]
    import numpy as np

    from vlalign.world.scene import scenes
    from vlalign.world.text import describe

    return [describe(s, np.random.default_rng(s.seed)) for s in scenes("train", config.cooccurrence_scenes)]


def injection_stage(prompts: Stage, out: Stage, config: POVIDConfig) -> Stage:
    """(reference, injected) pairs; a record without a reference, or whose answer nothing could be changed
    in, is logged and skipped."""
    records = [PromptRecord.from_row(r) for r in prompts.rows()]
    if config.injector == "llm":
        from vlalign.feedback.judges import make_judge

        if not config.judge:
            raise ValueError("injector: llm needs a judge (e.g. api:gpt-4o or a model directory)")
        llm = LLMInjector(make_judge(config.judge), edits=config.edits)
    elif config.injector == "rules":
        vocab = world_vocabulary() if config.prompts == WORLD else english_vocabulary()
        rules = RuleInjector(vocab, fit_cooccurrence(_training_texts(config, prompts), vocab), config.edits, config.seed)
    else:
        raise ValueError(f"unknown injector {config.injector!r}; choose rules or llm")

    def process(batch: list[PromptRecord]):
        for p in batch:
            if not p.reference:
                raise ValueError(f"prompt {p.id} has no reference answer; POVID prefers the ground truth, so "
                                 f"give every record a 'reference' (or 'answer') field")
        if config.injector == "llm":
            injections = llm.inject_many([p.instruction for p in batch], [p.reference for p in batch],
                                         [p.id for p in batch])
        else:
            injections = [rules.inject(p.reference, p.id) for p in batch]
        rows = []
        for p, inj in zip(batch, injections, strict=True):
            if inj is None or inj.text.strip() == p.reference.strip():
                raise ValueError(f"prompt {p.id}: no hallucination could be injected into its reference")
            rows.append(PairRecord(id=stable_id("povid", p.id), prompt_id=p.id, image=p.image,
                                   instruction=p.instruction, chosen=p.reference, rejected=inj.text,
                                   method="povid", meta={"edits": inj.edits}).to_row())
        return rows

    run_stage(out, records, process, id_of=lambda p: stable_id("povid", p.id), batch_size=64,
              description="injection", manifest={"config": {"injector": config.injector, "edits": config.edits,
                                                            "judge": config.judge, "seed": config.seed}})
    return out


def _trained(path: Path, like) -> object | None:
    if (path / "done.json").exists():
        p = next(like.parameters())
        return load(path, dtype=p.dtype, device=str(p.device))[0]
    return None


def run_povid(out: str | Path, config: POVIDConfig) -> dict:
    """Prompts -> injected pairs -> stage 1 -> (stage 2); world metrics after each stage."""
    start = time.time()
    store = RunStore(out)
    policy, processor = load(config.policy, dtype="float32")
    image_size = processor.image_processor.crop_size["height"] if config.prompts == WORLD else 0
    prompts = (world_prompt_stage(store, store.stage("prompts"), config.n_prompts, EVAL_SCENES,
                                  image_size=image_size, mix=TaskMix(config.instruction_mix, adversarial=0.5))
               if config.prompts == WORLD
               else user_prompt_stage(store, store.stage("prompts"), config.prompts, limit=config.n_prompts))
    pairs = injection_stage(prompts, store.stage("pairs"), config)
    examples = preference_examples(pairs)
    summary: dict = {"pairs": len(examples)}
    stages = [("stage1", lambda m: train_dpo(m, processor, examples, config.stage1, out=store.root / "stage1"))]
    if config.stages == 2:
        stages.append(("stage2", lambda m: train_povid_stage2(m, processor, examples, config.stage2, config.noise,
                                                              out=store.root / "stage2")))
    for name, fit in stages:
        path = store.root / name
        model = _trained(path, policy)
        if model is None:
            log(f"POVID {name}")
            model, _ = fit(policy)
            if hasattr(model, "merge_and_unload"):
                model = model.merge_and_unload()
                save(model, processor, path)
            metrics = (evaluate_world(model, processor, n_scenes=config.eval_scenes)
                       if config.eval_scenes and config.prompts == WORLD else {})
            (path / "done.json").write_text(json.dumps({"metrics": metrics}, indent=1))
        summary[name] = json.loads((path / "done.json").read_text())["metrics"]
        policy = model
    summary.update(config=json.loads(json.dumps(asdict(config), default=str)), seconds=round(time.time() - start, 1))
    (store.root / "summary.json").write_text(json.dumps(summary, indent=1))
    return {"policy": policy, **summary}
