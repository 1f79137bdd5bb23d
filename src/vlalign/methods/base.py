"""What a method is: its config (the keys every run shares, plus its own) and the stages that make its
preference pairs each round. The runner (`vlalign.runner`) owns everything else: loading, prompts,
rounds, training, saving, evaluation and the summary.

Nothing here imports torch, so a config is checked in full before any model library loads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from vlalign.config import ConfigError, from_dict
from vlalign.data.sources import source_named
from vlalign.models.settings import Runtime
from vlalign.plugins import BENCHMARKS
from vlalign.train.settings import TrainConfig

if TYPE_CHECKING:
    from vlalign.data.store import RunStore, Stage

SELF = "self"


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
                       "--config configs/<method>_world.yaml)")
        if self.prompts.source is None and self.pairs_from is None:
            out.append("prompts.source: not set; name a prompt source (world) or a prompt file")
        return out

    def backends(self) -> list[str]:
        """The models and API backends the run calls besides the policy, checked before its first stage."""
        return [e.judge for e in self.eval if e.judge]


@dataclass
class Arm:
    """One training of a round: its pairs and how to train on them. A round's first arm is the policy the
    next round starts from; other arms (a baseline) train from the same start and are evaluated beside it."""

    name: str
    pairs: Stage | str  # a stage of this run, or a run / stage directory (pairs_from)
    train: TrainConfig
    fit: Callable | None = None  # a trainer of its own (POVID's stage 2), else the weighted objective
    images: dict[str, Callable] | None = None  # images of extra answer columns (mDPO's corrupted image)
    images_key: str = ""  # names those images, so the reference cache knows them
    stats: dict = field(default_factory=dict)  # what the method reports about the round (scores, selection)


@dataclass
class Round:
    """What a method's `pairs` sees of one round."""

    k: int
    config: Any
    store: RunStore
    prompts: Stage | None  # None with pairs_from
    policy: Any
    processor: Any
    load: Callable[..., tuple]  # load(spec, runtime=None) -> (model, processor), cached per run
    drop: Callable[[str], None]  # free a model `load` keeps
    judge: Callable[..., Any]  # judge(spec, runtime=None) -> a Judge: api:MODEL[@URL], or a local model

    def stage(self, name: str) -> Stage:
        return self.store.stage(f"round{self.k}/{name}")

    @property
    def given_pairs(self) -> str | None:
        """The pairs `pairs_from` names (a run or stage directory), when the method makes none itself."""
        return self.config.pairs_from

    @property
    def policy_name(self) -> str:
        return f"policy@round{self.k}"


@dataclass(frozen=True)
class Method:
    """A method as data: its config, and what makes its pairs each round."""

    name: str
    summary: str
    config: type
    pairs: Callable[[Round], Sequence[Arm]]
    same_prompts: bool = False  # every round trains on the first round's prompts (POVID's two stages)
