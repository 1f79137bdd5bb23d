"""RLAIF-V rounds: sample n answers per prompt from the policy, label their claims with a labeler
model, pair by claim score, train DPO from the current policy. Every stage reads and writes the run
store, so a round that is stopped resumes where it was.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vlalign.data.records import FeedbackRecord, PairRecord, PromptRecord, ResponseRecord, stable_id
from vlalign.data.store import RunStore, Stage, run_stage
from vlalign.feedback.claims import ClaimSplitter, WorldClaims
from vlalign.feedback.labeler import label_responses
from vlalign.feedback.pairs import PairRules, Scored, candidate_pairs
from vlalign.models.generate import Decoding, generate, sample_seed
from vlalign.train.dpo import DPOConfig, PreferenceExample, train_dpo
from vlalign.world.render import render
from vlalign.world.scene import SceneConfig, scenes
from vlalign.world.text import ANSWER_PREFIX, DESCRIBE_INSTRUCTIONS


@dataclass
class RoundConfig:
    prompts: int = 400
    samples: int = 8
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=96, temperature=0.7))
    rules: PairRules = field(default_factory=PairRules)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    batch_size: int = 64
    seed: int = 0
    answer_prefix: str = ANSWER_PREFIX  # teacher-forced before the labeler's yes/no token ("" for real VLMs)


def world_prompts(store: RunStore, stage: Stage, n: int, offset: int = 0, image_size: int = 48,
                  config: SceneConfig = SceneConfig()) -> Stage:
    """`n` describe-style prompts on fresh world scenes (the 'prompts' split, never the eval one)."""
    def process(batch):
        rows = []
        for scene in batch:
            instruction = DESCRIBE_INSTRUCTIONS[scene.seed % len(DESCRIBE_INSTRUCTIONS)]
            rows.append(PromptRecord(id=scene.id, image=store.images.put(render(scene, image_size)),
                                     instruction=instruction, reference=None, source="world",
                                     meta={"scene": scene.to_dict()}).to_row())
        return rows

    run_stage(stage, list(scenes("prompts", n, config, start=offset)), process, id_of=lambda s: s.id,
              batch_size=256, shard_size=1000, description="prompts",
              manifest={"config": {"n": n, "offset": offset, "image_size": image_size}})
    return stage


def sample_stage(store: RunStore, prompts: Stage, out: Stage, model, processor, model_name: str, n: int,
                 decoding: Decoding, seed: int, batch_size: int = 64) -> Stage:
    """n answers per prompt, same model and decoding, one recorded seed each (deconfounded sampling)."""
    items = [(PromptRecord.from_row(r), k) for r in prompts.rows() for k in range(n)]

    def process(batch):
        seeds = [sample_seed(seed, p.id, k) for p, k in batch]
        texts = generate(model, processor, [store.images.get(p.image) for p, _ in batch],
                         [p.instruction for p, _ in batch], decoding, seeds=seeds, batch_size=batch_size)
        return [ResponseRecord(id=f"{p.id}/s{k}", prompt_id=p.id, image=p.image, instruction=p.instruction,
                               response=t, model=model_name, seed=s, meta={"decoding": asdict(decoding)}).to_row()
                for (p, k), s, t in zip(batch, seeds, texts, strict=True)]

    run_stage(out, items, process, id_of=lambda item: f"{item[0].id}/s{item[1]}", batch_size=batch_size,
              shard_size=512, description="sampling",
              manifest={"model": model_name, "seed": seed, "config": {"samples": n, "decoding": asdict(decoding)}})
    return out


def label_stage(store: RunStore, responses: Stage, out: Stage, labeler, processor, labeler_name: str,
                split: ClaimSplitter, batch_size: int = 64, answer_prefix: str = "") -> Stage:
    """Claims of every response, each scored by the labeler's P(yes); score = -(rejected claims)."""
    items = [ResponseRecord.from_row(r) for r in responses.rows()]

    def process(batch):
        fb = label_responses(labeler, processor, [store.images.get(r.image) for r in batch],
                             [r.response for r in batch], split, batch_size=batch_size,
                             answer_prefix=answer_prefix)
        return [FeedbackRecord(id=r.id, response_id=r.id, prompt_id=r.prompt_id, score=f.score,
                               details=f.to_dict(), meta={"labeler": labeler_name}).to_row()
                for r, f in zip(batch, fb, strict=True)]

    run_stage(out, items, process, id_of=lambda r: r.id, batch_size=batch_size, shard_size=1024,
              description="labeling", manifest={"model": labeler_name,
                        "config": {"splitter": type(split).__name__, "answer_prefix": answer_prefix}})
    return out


def pair_stage(responses: Stage, feedback: Stage, out: Stage, rules: PairRules, method: str = "rlaif_v") -> Stage:
    """Preference pairs per prompt by claim score, under `rules`."""
    scores = {f.response_id: f.score for f in map(FeedbackRecord.from_row, feedback.rows())}
    by_prompt: dict[str, list[ResponseRecord]] = {}
    for r in map(ResponseRecord.from_row, responses.rows()):
        if scores.get(r.id) is not None:
            by_prompt.setdefault(r.prompt_id, []).append(r)

    def process(batch):
        rows = []
        for prompt_id in batch:
            rs = by_prompt[prompt_id]
            first = rs[0]
            texts = {r.id: r for r in rs}
            for chosen, rejected in candidate_pairs([Scored(r.id, r.response, scores[r.id]) for r in rs],
                                                    rules, key=prompt_id):
                rows.append(PairRecord(
                    id=stable_id(method, chosen.id, rejected.id), prompt_id=prompt_id, image=first.image,
                    instruction=first.instruction, chosen=chosen.text, rejected=rejected.text,
                    chosen_score=chosen.score, rejected_score=rejected.score, method=method,
                    meta={"chosen_id": chosen.id, "rejected_id": rejected.id,
                          "chosen_model": texts[chosen.id].model}).to_row())
        return rows

    run_stage(out, sorted(by_prompt), process, id_of=lambda pid: pid, batch_size=256, shard_size=4096,
              description="pairs", per_item_output=False,
              manifest={"config": {"rules": asdict(rules), "method": method}})
    return out


def preference_examples(store: RunStore, pairs: Stage) -> list[PreferenceExample]:
    return [PreferenceExample(p.id, store.images.get(p.image), p.instruction, p.chosen, p.rejected)
            for p in map(PairRecord.from_row, pairs.rows())]


def run_round(store: RunStore, name: str, policy, processor, policy_name: str, labeler, labeler_processor,
              labeler_name: str, config: RoundConfig, prompt_offset: int = 0,
              split: ClaimSplitter | None = None):
    """One RLAIF-V round under `store/<name>/...`; returns the trained policy and the round's stats."""
    split = split or WorldClaims()
    train_dir = Path(store.root) / name / "policy"
    if (train_dir / "round_stats.json").exists():  # a finished round: reuse its policy
        from vlalign.models.load import load

        device = str(next(policy.parameters()).device)
        model, _ = load(train_dir, dtype=next(policy.parameters()).dtype, device=device)
        return model, json.loads((train_dir / "round_stats.json").read_text())
    prompts = world_prompts(store, store.stage(f"{name}/prompts"), config.prompts, prompt_offset,
                            processor.image_processor.crop_size["height"])
    responses = sample_stage(store, prompts, store.stage(f"{name}/responses"), policy, processor, policy_name,
                             config.samples, config.decoding, config.seed, config.batch_size)
    feedback = label_stage(store, responses, store.stage(f"{name}/feedback"), labeler, labeler_processor,
                           labeler_name, split, config.batch_size, config.answer_prefix)
    pairs = pair_stage(responses, feedback, store.stage(f"{name}/pairs"), config.rules)
    examples = preference_examples(store, pairs)
    model, history = train_dpo(policy, processor, examples, config.dpo, out=train_dir)
    stats = {"pairs": len(examples), "responses": len(responses.rows()),
             "mean_score": _mean([f["score"] for f in feedback.rows()]),
             "final_loss": history[-1]["loss"] if history else None,
             "final_reward_accuracy": history[-1].get("reward_accuracy") if history else None}
    (train_dir / "round_stats.json").write_text(json.dumps(stats, indent=1))
    return model, stats


def _mean(xs) -> float:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else 0.0
