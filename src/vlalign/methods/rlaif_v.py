"""RLAIF-V (arXiv 2405.17220): each round the policy samples n answers per fresh prompt with identical
decoding (deconfounded), a labeler scores every answer's atomic claims by P(yes), and pairs are built by
claim score under RLAIF-V's rules. The runner then trains the policy on them with itself (at the round's
start) as the reference, and the next round samples from the result. The labeler is a separate model
or, for self-alignment, the policy itself (`labeler: self`).

Sampling and labeling can run on OpenAI-compatible servers (`sampler` / `labeler: api:MODEL@URL`, see
`vlalign.feedback.server_backends`). The servers keep serving the first round's base; each later round's
policy reaches them as the stacked LoRA adapter the runner saved (`round<k>/adapter`, loaded through
`/v1/load_lora_adapter` and named in the requests), or through `sampler_restart`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vlalign.feedback.pairs import PairRules
from vlalign.methods.base import SELF, Arm, Method, Prompts, Round, RunConfig
from vlalign.models.settings import Decoding, Runtime
from vlalign.plugins import METHODS, SPLITTERS
from vlalign.train.settings import OptimConfig, TrainConfig


@dataclass(frozen=True)
class RLAIFVConfig(RunConfig):
    """RLAIF-V: deconfounded sampling, claim-level feedback from a labeler, iterative DPO."""

    prompts: Prompts = field(default_factory=lambda: Prompts(per_round=4000))  # fresh prompts each round
    rounds: int = 4  # online rounds, as in the paper
    labeler: str | None = None  # the model that answers the claim questions (a directory, world:<name>), self, or api:MODEL@URL (P(yes) from top_logprobs of a one-token answer)
    labeler_runtime: Runtime | None = None  # how the labeler loads (null: as the policy)
    samples: int = 10  # answers per prompt, same model and decoding, one seed each
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=512, temperature=0.7))  # sampling of the answers
    sampler: str | None = None  # null: sample with the policy in this process; api:MODEL@URL[,URL...]: on OpenAI-compatible servers of the policy (vLLM, SGLang, vlalign serve), n answers and one seed per request, spread over the URLs
    sampler_restart: str | None = None  # with an api sampler: a shell command that restarts its servers with each round's policy ({policy}: its directory); null: each round's LoRA adapter goes through /v1/load_lora_adapter (train with train.lora)
    splitter: str = "llm"  # how answers become claims: llm (asks `judge`), sentences, or a plugin's (world)
    judge: str | None = None  # the chat model the llm splitter asks: a model directory or api:MODEL[@URL]
    judge_runtime: Runtime | None = None  # how a local judge loads (null: as the policy)
    rules: PairRules = field(default_factory=PairRules)  # which scored answers make pairs
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # DPO each round
        loss={"sigmoid": 1.0}, beta=0.1, batch_size=8, epochs=1, optim=OptimConfig(lr=5e-7)))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ValueError(f"samples must be at least 2 (pairs compare answers), got {self.samples}")
        if self.splitter not in SPLITTERS:
            raise ValueError(f"unknown splitter {self.splitter!r}; known: {', '.join(SPLITTERS.names())}")
        if self.sampler is not None and not self.sampler.startswith("api:"):
            raise ValueError(f"sampler must be null (the policy in this process) or api:MODEL@URL[,URL...], "
                             f"got {self.sampler!r}")
        if self.sampler_restart is not None and self.sampler is None:
            raise ValueError("sampler_restart restarts the sampler's servers: set sampler: api:MODEL@URL too")

    def problems(self) -> list[str]:
        out = super().problems()
        if self.labeler is None and self.pairs_from is None:
            out.append("labeler: not set; name the labeler model, or self for self-alignment")
        if self.splitter == "llm" and not self.judge and self.pairs_from is None:
            out.append("judge: the llm splitter asks a chat model; set judge (api:gpt-4o, a model directory) or "
                       "choose another splitter")
        return out

    def backends(self) -> list[str]:
        labeler = [self.labeler] if self.labeler not in (None, SELF) else []
        sampler = [self.sampler] if self.sampler and self.pairs_from is None else []
        return [*super().backends(), *sampler, *labeler,
                *([self.judge] if self.judge and self.splitter == "llm" else [])]


def label_stage(store, responses, out, labeler, processor, labeler_name: str, split, batch_size: int = 64):
    """Claims of every response, each scored by the labeler's P(yes); score = -(rejected claims). A response
    the splitter gives no claims for fails alone (logged, and asked again on resume)."""
    from vlalign.data.records import FeedbackRecord, ResponseRecord
    from vlalign.data.store import batch_result, run_stage
    from vlalign.feedback.labeler import label_each, labeling_usage
    from vlalign.stages import UsageMeter

    items = [ResponseRecord.from_row(r) for r in responses.rows()]

    def process(batch):
        fb = label_each(labeler, processor, [store.images.get(r.image) for r in batch],
                        [r.response for r in batch], split, batch_size=batch_size,
                        instructions=[r.instruction for r in batch], keys=[r.id for r in batch])
        errors = {i: f for i, f in enumerate(fb) if isinstance(f, Exception)}
        return batch_result([FeedbackRecord(id=r.id, response_id=r.id, prompt_id=r.prompt_id, score=f.score,
                                            details=f.to_dict(), meta={"labeler": labeler_name}).to_row()
                             for r, f in zip(batch, fb, strict=True) if not isinstance(f, Exception)], errors)

    run_stage(out, items, process, id_of=lambda r: r.id, batch_size=batch_size, shard_size=1024,
              description="labeling", manifest={"model": labeler_name, "config": {"splitter": type(split).__name__}},
              meters=[UsageMeter(out, backend, key) for key, backend in labeling_usage(labeler, split).items()])
    return out


def labeled_pairs(r: Round):
    """Sample, label and pair one round: RLAIF-V's pairs stage (mDPO and MPO train on the same pairs)."""
    from vlalign.stages import pair_stage, sample_stage

    c: RLAIFVConfig = r.config
    if r.given_pairs:
        return r.given_pairs, {}
    responses = sample_stage(r.store, r.prompts, r.stage("responses"), r.policy, r.processor, r.policy_name,
                             c.samples, c.decoding, c.seed + r.k, c.batch_size, server_sampler(r, c))
    labeler, processor, name = labeler_of(r, c)
    feedback = label_stage(r.store, responses, r.stage("feedback"), labeler, processor, name, splitter(r, c),
                           c.batch_size)
    pairs = pair_stage(responses, feedback, r.stage("pairs"), c.rules, method="rlaif_v")
    scores = [f["score"] for f in feedback.rows() if f["score"] is not None]
    stats = {"responses": responses.counts()["rows"], "mean_score": sum(scores) / len(scores) if scores else None,
             "selection": pairs.manifest.get("selection")}
    return pairs, stats


def labeler_of(r: Round, c: RLAIFVConfig) -> tuple:
    """(labeler, its processor, the name records carry): the policy, a server (no processor), or a model."""
    if c.labeler == SELF:
        return r.policy, r.processor, r.policy_name
    if c.labeler.startswith("api:"):
        from vlalign.feedback.server_backends import ApiLabeler

        judge = r.judge(c.labeler)
        return ApiLabeler(judge, judge.name), None, judge.name
    return (*r.load(c.labeler, c.labeler_runtime), c.labeler)


def server_sampler(r: Round, c: RLAIFVConfig):
    """The round's sampler on servers (None: the policy in this process). From round 2 on the servers get the
    round's starting policy first: restarted with it, or its stacked LoRA adapter loaded and named (by the
    main process alone, under a launcher)."""
    if c.sampler is None:
        return None
    from vlalign import ranks
    from vlalign.data.records import stable_id
    from vlalign.feedback.server_backends import ServerSampler, load_adapter, restart

    judge = r.judge(c.sampler)
    spec, before = judge.name, r.store.root / f"round{r.k - 1}"
    if r.k == 1:
        return ServerSampler(judge, spec)
    if c.sampler_restart:
        ranks.on_main(lambda: restart(judge, c.sampler_restart, str((before / "policy").absolute())))
        return ServerSampler(judge, spec)
    adapter = (before / "adapter").absolute()
    if not adapter.exists():
        raise ValueError(f"round {r.k} samples on {spec}'s servers, which still serve the first round's policy, "
                         f"and round {r.k - 1} saved no LoRA adapter ({adapter}) to load there: train with LoRA "
                         f"(train.lora: {{r: 8}}), or set sampler_restart to a command that restarts the servers "
                         f"with a given policy")
    name = f"vlalign-{stable_id(str(adapter))[:8]}-round{r.k - 1}"
    ranks.on_main(lambda: load_adapter(judge, name, str(adapter)))  # once, not once per launched process
    return ServerSampler(judge, spec, name)


def splitter(r: Round, c: RLAIFVConfig):
    """The claim splitter the config names, with its judge when it asks one."""
    from vlalign.feedback.splitters import make_splitter, needs_judge

    return make_splitter(c.splitter, r.judge(c.judge, c.judge_runtime) if needs_judge(c.splitter) else None)


def pairs(r: Round) -> list[Arm]:
    stage, stats = labeled_pairs(r)
    return [Arm("policy", stage, r.config.train, stats=stats)]


METHOD = METHODS.register("rlaif-v", Method(
    "rlaif-v", "deconfounded sampling, claim-level labeler feedback, iterative DPO (arXiv 2405.17220)",
    RLAIFVConfig, pairs))
