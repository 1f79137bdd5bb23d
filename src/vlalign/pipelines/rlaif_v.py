"""RLAIF-V (arXiv 2405.17220), iterative: each round the current policy samples n answers per fresh prompt
with identical decoding (deconfounded), a labeler scores every answer's atomic claims by P(yes), pairs are
built by claim score under RLAIF-V's rules, and DPO trains the policy with itself (at the round's start)
as the reference. The labeler is a separate model or, for self-alignment, the policy itself.

Every stage reads and writes the run store (`<out>/round<k>/<stage>`), and a finished round leaves its
policy and metrics behind, so a stopped run resumes at the stage where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlalign.data.prompts import user_prompt_stage, world_prompt_stage
from vlalign.data.records import FeedbackRecord, ResponseRecord
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.evaluate.world import EVAL_SCENES, evaluate_world
from vlalign.feedback.claims import ClaimSplitter, make_splitter
from vlalign.feedback.labeler import label_responses
from vlalign.feedback.pairs import PairRules
from vlalign.models.generate import Decoding
from vlalign.models.load import load, save
from vlalign.pipelines.stages import pair_stage, preference_examples, sample_stage
from vlalign.progress import log
from vlalign.train.dpo import DPOConfig, train_dpo
from vlalign.world.text import TaskMix

SELF = "self"
WORLD = "world"


def _instruction_mix() -> dict[str, float]:
    """Mostly detailed descriptions, and yes/no existence questions (RLAIF-V's prompts mix descriptions
    with VQA): their claims are checked too, so the policy's short answers learn from the labeler as well."""
    return {"describe": 0.9, "exist": 0.1}


@dataclass
class RLAIFVConfig:
    """A whole RLAIF-V run, as data (`vlalign rlaif-v --config run.yaml` reads one)."""

    policy: str = "world:base"
    labeler: str = "world:labeler"  # a model, or "self": the policy labels its own answers
    prompts: str = WORLD  # "world", or a prompt file (JSON lines or a datasets directory)
    instruction_mix: dict[str, float] = field(default_factory=_instruction_mix)  # world prompts only
    rounds: int = 4
    prompts_per_round: int = 500
    samples: int = 10
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=96, temperature=0.7))
    splitter: str = WORLD  # world | sentences | llm (the LLM splitter asks `judge`)
    judge: str | None = None
    rules: PairRules = field(default_factory=PairRules)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    eval_scenes: int = 500  # world metrics after every round; 0 skips them
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.prompts_per_round < 1 or self.samples < 2:
            raise ValueError(f"need rounds >= 1, prompts_per_round >= 1 and samples >= 2 (pairs compare answers); "
                             f"got {self.rounds}, {self.prompts_per_round}, {self.samples}")


def label_stage(store: RunStore, responses: Stage, out: Stage, labeler, processor, labeler_name: str,
                split: ClaimSplitter, batch_size: int = 64) -> Stage:
    """Claims of every response, each scored by the labeler's P(yes); score = -(rejected claims)."""
    items = [ResponseRecord.from_row(r) for r in responses.rows()]

    def process(batch):
        fb = label_responses(labeler, processor, [store.images.get(r.image) for r in batch],
                             [r.response for r in batch], split, batch_size=batch_size,
                             instructions=[r.instruction for r in batch], keys=[r.id for r in batch])
        return [FeedbackRecord(id=r.id, response_id=r.id, prompt_id=r.prompt_id, score=f.score,
                               details=f.to_dict(), meta={"labeler": labeler_name}).to_row()
                for r, f in zip(batch, fb, strict=True)]

    run_stage(out, items, process, id_of=lambda r: r.id, batch_size=batch_size, shard_size=1024,
              description="labeling", manifest={"model": labeler_name, "config": {"splitter": type(split).__name__}})
    return out


def round_prompts(store: RunStore, config: RLAIFVConfig, k: int, image_size: int) -> Stage:
    """The fresh prompts of round `k` (1-based): new world scenes, or the next slice of the user's file."""
    stage = store.stage(f"round{k}/prompts")
    n, offset = config.prompts_per_round, (k - 1) * config.prompts_per_round
    if config.prompts == WORLD:
        return world_prompt_stage(store, stage, n, EVAL_SCENES, offset=offset, image_size=image_size,
                                  mix=TaskMix(config.instruction_mix, adversarial=0.5))
    pool = user_prompt_stage(store, store.stage("prompts"), config.prompts)
    rows = pool.rows()
    if not rows:
        raise ValueError(f"no usable prompts in {config.prompts}; see {pool.dir / 'errors.jsonl'}")
    chosen = [rows[(offset + i) % len(rows)] for i in range(min(n, len(rows)))]
    run_stage(stage, chosen, lambda batch: batch, id_of=lambda r: r["id"], batch_size=1024, quiet=True,
              manifest={"config": {"from": str(config.prompts), "offset": offset, "n": n}})
    return stage


def run_round(store: RunStore, k: int, policy, processor, labeler, labeler_processor, config: RLAIFVConfig,
              split: ClaimSplitter):
    """Round `k`: sample, label, pair, train. Returns the new policy and the round's statistics."""
    name = f"round{k}"
    image_size = processor.image_processor.crop_size["height"] if config.prompts == WORLD else 0
    prompts = round_prompts(store, config, k, image_size)
    responses = sample_stage(store, prompts, store.stage(f"{name}/responses"), policy, processor,
                             f"policy@round{k}", config.samples, config.decoding, config.seed + k, config.batch_size)
    labeler_name = f"policy@round{k}" if config.labeler == SELF else config.labeler
    feedback = label_stage(store, responses, store.stage(f"{name}/feedback"), labeler, labeler_processor,
                           labeler_name, split, config.batch_size)
    pairs = pair_stage(responses, feedback, store.stage(f"{name}/pairs"), config.rules, method="rlaif_v")
    examples = preference_examples(pairs)
    model, history = train_dpo(policy, processor, examples, config.dpo, out=store.root / name / "training",
                               save_model=False)
    if hasattr(model, "merge_and_unload"):  # the next round starts from (and refers to) the merged policy
        model = model.merge_and_unload()
    scores = [f["score"] for f in feedback.rows() if f["score"] is not None]
    stats = {"round": k, "pairs": len(examples), "responses": responses.counts()["rows"],
             "mean_score": sum(scores) / len(scores) if scores else None,
             "selection": pairs.manifest.get("selection"),
             "final_loss": history[-1]["loss"], "final_reward_accuracy": history[-1].get("reward_accuracy")}
    return model, stats


def run_rlaif_v(out: str | Path, config: RLAIFVConfig, policy=None, processor=None) -> dict:
    """All rounds under `out`; returns (and writes to `out/summary.json`) the per-round statistics and metrics."""
    start = time.time()
    store = RunStore(out)
    split = make_splitter(config.splitter, config.judge)
    if policy is None:
        policy, processor = load(config.policy, dtype="float32")
    labeler = labeler_processor = None
    if config.labeler != SELF:
        labeler, labeler_processor = load(config.labeler, dtype=next(policy.parameters()).dtype,
                                          device=str(next(policy.parameters()).device))
    rounds = []
    for k in range(1, config.rounds + 1):
        done = store.root / f"round{k}" / "policy"
        if (done / "round.json").exists():
            policy, _ = load(done, dtype=next(policy.parameters()).dtype, device=str(next(policy.parameters()).device))
            rounds.append(json.loads((done / "round.json").read_text()))
            continue
        log(f"RLAIF-V round {k}/{config.rounds}")
        judge_model, judge_processor = (policy, processor) if config.labeler == SELF else (labeler, labeler_processor)
        policy, stats = run_round(store, k, policy, processor, judge_model, judge_processor, config, split)
        if config.eval_scenes and config.prompts == WORLD:
            stats["metrics"] = evaluate_world(policy, processor, n_scenes=config.eval_scenes)
        save(policy, processor, done)
        (done / "round.json").write_text(json.dumps(stats, indent=1))
        rounds.append(stats)
    summary = {"config": _jsonable(config), "rounds": rounds, "seconds": round(time.time() - start, 1)}
    (store.root / "summary.json").write_text(json.dumps(summary, indent=1))
    return {"policy": policy, **summary}


def _jsonable(config: RLAIFVConfig) -> dict:
    return json.loads(json.dumps(asdict(config), default=str))
