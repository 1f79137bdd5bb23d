"""The settings the shared stages read: the keys every run has (`RunConfig`), and the keys of sampled and of
labeled answers, which several methods compose (RLAIF-V, mDPO and MPO label; online RL samples).

A method's config is one of these with its own keys added. Nothing here imports torch or `datasets`, so a
config is checked in full before any model library loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from vlalign.config import Alias, ConfigError, from_dict, prefixed
from vlalign.data.hub import HubSettings
from vlalign.data.sources import source_named
from vlalign.feedback.pairs import PairRules
from vlalign.models.settings import ChatDecoding, Decoding, Runtime
from vlalign.plugins import BENCHMARKS, SPLITTERS
from vlalign.train.settings import TRAIN_ALIASES, TrainConfig

SELF = "self"  # a labeler spec: the policy labels its own answers


@dataclass(frozen=True)
class Prompts:
    """Where a run's prompts come from."""

    source: str | None = None  # a prompt source (world) or a prompt file: JSON lines or a datasets directory
    per_round: int = 4000  # prompts per round, fresh each round (a file starts over when it runs out, with a warning)
    options: dict[str, Any] = field(default_factory=dict)  # the source's own settings (world: mix, adversarial; a file: images, allow_outside)

    def __post_init__(self) -> None:
        if self.per_round < 1:
            raise ValueError(f"prompts.per_round must be at least 1, got {self.per_round}")
        if self.source is not None:
            self.parsed_options()

    def parsed_options(self) -> Any:
        """`options` as the source's own settings dataclass (checked: unknown keys and bad values are errors)."""
        source = source_named(self.source)
        try:
            return from_dict(source.options, self.options, where="prompts.options")
        except ConfigError as e:
            raise ValueError("; ".join(e.problems)) from None


@dataclass(frozen=True)
class EvalSpec:
    """One benchmark a run evaluates the policy on: before the first round, after every round."""

    SHORTHAND: ClassVar[str] = "name"

    name: str  # a benchmark: world, pope, chair, amber, mme, mmhal, ... (`vlalign score --help` lists them)
    data: str | None = None  # its question file (POPE's question files, MME's folder, MMHal's template, ...)
    images: str | None = None  # the folder of its images
    annotations: list[str] = field(default_factory=list)  # ground truth it is scored against (COCO annotations, AMBER's data folder)
    limit: int | None = None  # only the first N questions (world: N held-out scenes, 1,000 by default)
    split: str | None = None  # the benchmark's split, where it has several (world: test, the default, or dev)
    judge: str | None = None  # the judge of judged benchmarks (mmhal): a model directory or api:MODEL[@URL]
    batch_size: int = 16  # questions per generation batch

    def __post_init__(self) -> None:
        if self.name not in BENCHMARKS:
            raise ValueError(f"unknown benchmark {self.name!r}; known: {', '.join(BENCHMARKS.names())}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"eval limit must be at least 1, got {self.limit}")
        BENCHMARKS.get(self.name).check_split(self.split)


@dataclass(frozen=True)
class ApiSettings:
    """How the run talks to OpenAI-compatible endpoints (api:MODEL[@URL] judges, labelers, pool members)."""

    concurrency: int = 8  # requests in flight at once, per backend
    timeout: float = 120.0  # seconds a request may take before it is retried
    max_retries: int = 5  # retries of a 429, a 5xx, a timeout or a broken reply (with backoff)

    def __post_init__(self) -> None:
        if self.concurrency < 1 or self.timeout <= 0 or self.max_retries < 0:
            raise ValueError(f"need concurrency >= 1, timeout > 0 and max_retries >= 0; got {self.concurrency}, "
                             f"{self.timeout}, {self.max_retries}")


@dataclass(frozen=True)
class RunConfig:
    """The keys every method shares."""

    # other tools' names (TRL's flat keys) for the run's settings: docs/configs.md lists them
    ALIASES: ClassVar[dict[str, Alias]] = {
        "model_name_or_path": Alias("policy"), **prefixed(TRAIN_ALIASES, "train"),
        **prefixed(Runtime.ALIASES, "runtime"),
        **{k: Alias(f"runtime.{k}") for k in ("max_length", "max_prompt_length", "max_completion_length",
                                               "gradient_checkpointing")},
        "push_to_hub": Alias("hub.push"), "hub_model_id": Alias("hub.repo"), "hub_private_repo": Alias("hub.private")}

    policy: str | None = None  # the model to align: a local model directory, or world:<name>
    runtime: Runtime = field(default_factory=Runtime)  # how the policy loads and runs (the other models inherit it)
    prompts: Prompts = field(default_factory=Prompts)  # where the prompts come from
    rounds: int = 1  # online rounds: each samples with the policy of the round before
    train: TrainConfig = field(default_factory=TrainConfig)  # the preference objective and its optimizer
    eval: list[EvalSpec] = field(default_factory=list)  # benchmarks run on the base, after every round and at the end
    eval_base: bool = True  # evaluate the starting policy too, before the first round
    pairs_from: str | None = None  # train on the pairs under this run or stage directory instead of making them (one round)
    batch_size: int = 16  # items per batch in the sampling and labeling stages
    api: ApiSettings = field(default_factory=ApiSettings)  # settings of every API backend the run calls
    seed: int = 0  # every sample's seed derives from it and the record id
    report: bool = True  # write the HTML report (RUN/report) at the end; `vlalign report RUN` writes it any time
    hub: HubSettings = field(default_factory=HubSettings)  # push the final model (and the run's data) to a Hub at the end

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be at least 1, got {self.rounds}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.pairs_from is not None and self.rounds != 1:
            raise ValueError("pairs_from trains on fixed pairs, which is one round: set rounds: 1")

    def problems(self) -> list[str]:
        """What is missing before the run can start (checked after the config parses)."""
        out = []
        if self.policy is None:
            out.append("policy: not set; name the model to align (a model directory, or world:base with "
                       "--config <method>_world)")
        if self.prompts.source is None and self.pairs_from is None:
            out.append("prompts.source: not set; name a prompt source (world) or a prompt file")
        return out

    def backends(self) -> list[str]:
        """The models and API backends the run calls besides the policy, checked before its first stage."""
        return [e.judge for e in self.eval if e.judge]


@dataclass(frozen=True)
class SampledConfig(RunConfig):
    """A run whose policy answers every prompt several times with one decoding setup (deconfounded)."""

    prompts: Prompts = field(default_factory=lambda: Prompts(per_round=4000))  # fresh prompts each round
    samples: int = 10  # answers per prompt, same model and decoding, one seed each
    decoding: Decoding = field(default_factory=lambda: Decoding(max_new_tokens=512, temperature=0.7))  # sampling of the answers
    sampler: str | None = None  # null: sample with the policy in this process; api:MODEL@URL[,URL...]: on OpenAI-compatible servers of the policy (vLLM, SGLang, vlalign serve), n answers and one seed per request, spread over the URLs
    sampler_restart: str | None = None  # with an api sampler: a shell command that restarts its servers with each round's policy ({policy}: its directory); null: each round's LoRA adapter goes through /v1/load_lora_adapter (train with train.lora)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.samples < 2:
            raise ValueError(f"samples must be at least 2 (pairs and groups compare answers), got {self.samples}")
        if self.sampler is not None and not self.sampler.startswith("api:"):
            raise ValueError(f"sampler must be null (the policy in this process) or api:MODEL@URL[,URL...], "
                             f"got {self.sampler!r}")
        if self.sampler_restart is not None and self.sampler is None:
            raise ValueError("sampler_restart restarts the sampler's servers: set sampler: api:MODEL@URL too")

    def backends(self) -> list[str]:
        sampler = [self.sampler] if self.sampler and self.pairs_from is None else []
        return [*super().backends(), *sampler]


@dataclass(frozen=True)
class LabeledConfig(SampledConfig):
    """Sampled answers whose claims a labeler checks, paired by the number it rejects (RLAIF-V's feedback)."""

    labeler: str | None = None  # the model that answers the claim questions (a directory, world:<name>), self, or api:MODEL@URL (P(yes) from top_logprobs of a one-token answer)
    labeler_runtime: Runtime | None = None  # how the labeler loads (null: as the policy)
    splitter: str = "llm"  # how answers become claims: llm (asks `judge`), sentences, or a plugin's (world)
    judge: str | None = None  # the chat model the llm splitter asks: a model directory or api:MODEL[@URL]
    judge_runtime: Runtime | None = None  # how a local judge loads (null: as the policy)
    judge_decoding: ChatDecoding = field(default_factory=ChatDecoding)  # the judge's reply length and temperature
    rules: PairRules = field(default_factory=PairRules)  # which scored answers make pairs

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.splitter not in SPLITTERS:
            raise ValueError(f"unknown splitter {self.splitter!r}; known: {', '.join(SPLITTERS.names())}")

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
        return [*super().backends(), *labeler, *([self.judge] if self.judge and self.splitter == "llm" else [])]
