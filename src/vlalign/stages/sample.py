"""Sampling: n answers per prompt from one model with one decoding setup, each with its own recorded seed
(RLAIF-V's deconfounded sampling), in this process or on OpenAI-compatible servers of the policy.

The servers keep serving the first round's base; each later round's policy reaches them as the stacked LoRA
adapter the runner saved (`round<k>/adapter`, loaded through `/v1/load_lora_adapter` and named in the
requests), or through `sampler_restart`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vlalign import ranks
from vlalign.config import to_dict
from vlalign.data.records import PromptRecord, ResponseRecord, stable_id
from vlalign.data.store import RunStore, Stage, batch_result, run_stage
from vlalign.models.settings import Decoding
from vlalign.stages.round import Round
from vlalign.stages.settings import SampledConfig

if TYPE_CHECKING:
    from vlalign.feedback.judge import Judge
    from vlalign.feedback.server_backends import ServerSampler
    from vlalign.models.types import Model, Processor


def sampled(r: Round[SampledConfig], out: Stage) -> Stage:
    """The round's answers: `samples` per prompt from its starting policy, here or on the sampler's servers."""
    c = r.config
    prompts = r.prompt_stage()
    if c.sampler is None:
        return sample_stage(r.store, prompts, out, r.policy, r.processor, r.policy_name, c.samples, c.decoding,
                            c.seed + r.k, c.batch_size)
    with r.models.chat(c.sampler) as servers:
        return sample_stage(r.store, prompts, out, r.policy, r.processor, r.policy_name, c.samples, c.decoding,
                            c.seed + r.k, c.batch_size, server_sampler(r, servers))


def sample_stage(store: RunStore, prompts: Stage, out: Stage, model: Model, processor: Processor, model_name: str,
                 n: int, decoding: Decoding, seed: int, batch_size: int = 64,
                 sampler: ServerSampler | None = None) -> Stage:
    """n answers per prompt, same model and decoding, one recorded seed each (deconfounded sampling); with
    `sampler`, from an OpenAI-compatible server instead of `model` (see `served_samples`)."""
    from vlalign.models.generate import generate, sample_seed  # torch: kept out of the config check

    items = [(PromptRecord.from_row(r), k) for r in prompts.rows() for k in range(n)]

    def process(batch: list[tuple[PromptRecord, int]]) -> list[dict]:
        if sampler is not None:
            return served_samples(store, batch, sampler, model_name, decoding, seed)
        seeds = [sample_seed(seed, p.id, k) for p, k in batch]
        texts = generate(model, processor, [store.images.get(p.image) for p, _ in batch],
                         [p.instruction for p, _ in batch], decoding, seeds=seeds, batch_size=batch_size)
        return [ResponseRecord(id=f"{p.id}/s{k}", prompt_id=p.id, image=p.image, instruction=p.instruction,
                               response=t, model=model_name, seed=s,
                               meta={"decoding": to_dict(decoding), "source": p.source}).to_row()
                for (p, k), s, t in zip(batch, seeds, texts, strict=True)]

    config = {"samples": n, "decoding": to_dict(decoding), **({"sampler": sampler.spec} if sampler else {})}
    run_stage(out, items, process, id_of=lambda item: f"{item[0].id}/s{item[1]}", batch_size=batch_size,
              shard_size=512, description="sampling", manifest={"model": model_name, "seed": seed, "config": config})
    return out


def served_samples(store: RunStore, batch: list[tuple[PromptRecord, int]], sampler: ServerSampler, model_name: str,
                   decoding: Decoding, seed: int) -> list[dict]:
    """A batch's samples from a server: one request per run of consecutive samples of a prompt (n answers),
    sample k drawn with seed `sample_seed(seed, prompt, 0) + k`, which is what it records. A failed request
    fails its samples only (logged, asked again on resume)."""
    from vlalign.feedback.server_backends import consecutive, sample_request
    from vlalign.models.generate import sample_seed

    by_prompt: dict[str, tuple[PromptRecord, list[int]]] = {}
    for p, k in batch:
        by_prompt.setdefault(p.id, (p, []))[1].append(k)
    runs = [(p, run) for p, ks in by_prompt.values() for run in consecutive(p.id, ks)]
    base = {pid: sample_seed(seed, pid, 0) for pid in by_prompt}
    replies = sampler.judge.complete([sample_request(store.images.get(p.image), p.instruction, decoding, base[p.id],
                                                     run, sampler.model) for p, run in runs])
    position = {(p.id, k): i for i, (p, k) in enumerate(batch)}
    rows: list[dict] = []
    errors: dict[int, BaseException] = {}
    for (p, run), reply in zip(runs, replies, strict=True):
        if not reply.ok:
            errors.update({position[p.id, k]: RuntimeError(reply.error) for k in range(run.first, run.first + run.n)})
            continue
        for k, choice in enumerate(reply.answers(), start=run.first):
            rows.append(ResponseRecord(
                id=f"{p.id}/s{k}", prompt_id=p.id, image=p.image, instruction=p.instruction,
                response=choice.text.strip(), model=model_name, seed=base[p.id] + k,
                meta={"decoding": to_dict(decoding), "source": p.source, "served_as": sampler.served_as}).to_row())
    return batch_result(rows, errors)


def server_sampler(r: Round[SampledConfig], servers: Judge) -> ServerSampler:
    """The round's sampler on `servers`. From round 2 on the servers get the round's starting policy first:
    restarted with it, or its stacked LoRA adapter loaded and named (by the main process alone, under a
    launcher)."""
    from vlalign.feedback.server_backends import ServerSampler, load_adapter, restart

    c = r.config
    spec, before = servers.name, r.store.root / f"round{r.k - 1}"
    if r.k == 1:
        return ServerSampler(servers, spec)
    if c.sampler_restart:
        restart_command = c.sampler_restart
        ranks.on_main(lambda: restart(servers, restart_command, str((before / "policy").absolute())))
        return ServerSampler(servers, spec)
    adapter = (before / "adapter").absolute()
    if not adapter.exists():
        raise ValueError(f"round {r.k} samples on {spec}'s servers, which still serve the first round's policy, "
                         f"and round {r.k - 1} saved no LoRA adapter ({adapter}) to load there: train with LoRA "
                         f"(train.lora: {{r: 8}}), or set sampler_restart to a command that restarts the servers "
                         f"with a given policy")
    name = f"vlalign-{stable_id(str(adapter))[:8]}-round{r.k - 1}"
    ranks.on_main(lambda: load_adapter(servers, name, str(adapter)))  # once, not once per launched process
    return ServerSampler(servers, spec, name)
