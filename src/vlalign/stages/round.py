"""What a method's stages see of one round: the run store, the round's prompts and starting policy, its
typed config, and `Models`, through which every other model is used for one stage only.

A model other than the policy (a labeler, a judge, a pool member) lives as long as the `with` block that
uses it: `with r.models.using(spec) as (model, processor): ...` loads it (or shares it with an enclosing block
that holds the same model) and frees it at the end, so a 34B labeler is gone before the 7B policy trains.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from vlalign.models.settings import Runtime
from vlalign.stages.settings import RunConfig

if TYPE_CHECKING:
    from vlalign.data.store import RunStore, Stage
    from vlalign.feedback.judge import Judge
    from vlalign.models.types import Model, Processor

C = TypeVar("C", bound=RunConfig, covariant=True)


class Models(Protocol):
    """The models a run uses besides the policy, each held for one stage."""

    def using(self, spec: str, runtime: Runtime | None = None, park: bool = False
              ) -> AbstractContextManager[tuple[Model, Processor]]:
        """(model, processor) of a model directory or world:<name>, loaded under `runtime` (default: the
        policy's) and freed when the block ends; with `park`, kept in host memory instead (off the
        accelerator) for the next block that asks for it, as an online run's reference every rollout."""
        ...

    def chat(self, spec: str, runtime: Runtime | None = None) -> AbstractContextManager[Judge]:
        """A chat backend: `api:MODEL[@URL]` (kept for the run: it holds no weights) or a local model answering
        chat requests (freed when the block ends)."""
        ...


@dataclass
class Round(Generic[C]):
    """Round k of a run, as a method's `pairs` sees it."""

    k: int
    config: C
    store: RunStore
    prompts: Stage | None  # None with pairs_from
    policy: Model  # the round's starting policy, which its first arm trains
    processor: Processor
    models: Models

    def stage(self, name: str) -> Stage:
        return self.store.stage(f"round{self.k}/{name}")

    @property
    def given_pairs(self) -> str | None:
        """The pairs `pairs_from` names (a run or stage directory), when the method makes none itself."""
        return self.config.pairs_from

    @property
    def policy_name(self) -> str:
        return f"policy@round{self.k}"

    def prompt_stage(self) -> Stage:
        """The round's prompts (a method that makes its own pairs always has them)."""
        if self.prompts is None:
            raise ValueError(f"round {self.k} has no prompts: it trains on the pairs of pairs_from")
        return self.prompts
