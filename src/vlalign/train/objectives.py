"""Objectives: what an arm of a round minimises, as one contract the training loop runs without a branch.

An objective says which answer columns each example's rows hold (and under which image), whether the
reference's log-probs of them are cached before the first step, whether its loss also reads a reference
model at every step (then a frozen copy of the starting policy, or the policy with its LoRA adapters
switched off), how a batch is collated, and its loss. DPO-family terms on pairs (`Preference`, mDPO's
corrupted-image column included), POVID's noisy-image term (`POVIDNoise`) and the group-relative policy
gradient on groups of scored answers (`GroupPolicyGradient`: GRPO, Dr. GRPO, RLOO, DAPO) are objectives.

Nothing here imports torch at module level, so methods name their objective in a config check's time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from vlalign.train.columns import REAL, Columns, ImageOf
from vlalign.train.settings import NoiseConfig, PolicyGradientConfig, TrainConfig

if TYPE_CHECKING:
    from PIL import Image

    from vlalign.models.types import Model, Processor
    from vlalign.train.examples import PreferenceExample
    from vlalign.train.loop import Collate, LossFn

class Objective(Protocol):
    """What training minimises over a list of examples (`vlalign.train.fit.fit` runs it)."""

    @property
    def name(self) -> str:
        """Names the objective in the history and in what a mid-training checkpoint belongs to."""
        ...

    @property
    def live_reference(self) -> bool:
        """The loss reads a reference model at every step (a frozen copy, or the adapters switched off)."""
        ...

    @property
    def unit(self) -> str:
        """What one example is, in plural, for the run's record and messages ("pairs", "groups")."""
        ...

    def columns(self, config: TrainConfig) -> Columns:
        """The answer columns every example's rows hold."""
        ...

    def cached_reference(self, config: TrainConfig) -> bool:
        """Whether the reference's log-probs of every column are computed once, before the first step."""
        ...

    def collate(self, processor: Processor, columns: Columns, shared: bool) -> Collate:
        """(items, batch number) -> the model's batch (`items` pair each example with its cached values)."""
        ...

    def loss(self, config: TrainConfig, columns: Columns, reference: Model | None) -> LossFn:
        """(model, batch) -> (loss, metrics); `reference` is given when `live_reference` is set."""
        ...


@dataclass(frozen=True)
class Preference:
    """The weighted DPO-family terms of `train.loss` (`vlalign.train.losses`) on preference pairs. `images`
    adds answer columns read under another image (mDPO's `chosen_corrupt`: the chosen answer under a
    corrupted image), named by `key` so the reference cache knows them."""

    images: dict[str, ImageOf] = field(default_factory=dict)
    key: str = ""
    name: str = "preference"
    live_reference: bool = False
    unit: str = "pairs"

    def columns(self, config: TrainConfig) -> Columns:
        from vlalign.train.losses import columns_of

        names = columns_of(config.loss)
        missing = [c for c in names if c not in REAL and c not in self.images]
        if missing:
            raise ValueError(f"the loss terms {sorted(config.loss)} need the column(s) {missing}, which only a method "
                             f"that corrupts images provides (mdpo); drop those terms or use that method")
        return Columns(names, tuple((c, self.images[c]) for c in names if c in self.images), self.key)

    def cached_reference(self, config: TrainConfig) -> bool:
        from vlalign.train.losses import NO_REFERENCE

        return not set(config.loss) <= NO_REFERENCE

    def collate(self, processor: Processor, columns: Columns, shared: bool) -> Collate:
        from vlalign.train.preference import pair_collate

        return pair_collate(processor, columns, shared)

    def loss(self, config: TrainConfig, columns: Columns, reference: Model | None) -> LossFn:
        from vlalign.train.preference import make_loss

        return make_loss(config, columns)


@dataclass(frozen=True)
class Corruption:
    """How mDPO's conditional term corrupts the image (once per pair, the same every epoch)."""

    kind: str = "crop"  # crop: keep a random window of less than max_area of the image (mDPO's); noise: POVID's diffusion noise
    max_area: float = 0.2  # crop: the largest share of the image a window keeps
    noise_step: int = 500  # noise: the forward-diffusion step (of 1000)
    seed: int = 0  # with the pair's id, seeds its corruption

    def __post_init__(self) -> None:
        if self.kind not in ("crop", "noise"):
            raise ValueError(f"corruption kind must be crop or noise, got {self.kind!r}")
        if not 0 < self.max_area < 1 or not 0 <= self.noise_step < 1000:
            raise ValueError(f"need 0 < max_area < 1 and 0 <= noise_step < 1000, got {self.max_area}, "
                             f"{self.noise_step}")

    def key(self) -> str:
        return f"{self.kind}:{self.max_area}:{self.noise_step}:{self.seed}"

    def image(self, example: PreferenceExample) -> Image.Image:
        """The corrupted image of one pair, a pure function of the pair's id (so a cached reference holds)."""
        import torch

        from vlalign.data.corrupt import add_diffusion_noise, random_crop

        digest = hashlib.sha256(f"{self.seed}:{example.id}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
        if self.kind == "crop":
            return random_crop(example.image, self.max_area, generator)
        return add_diffusion_noise(example.image, self.noise_step, generator=generator)

    def objective(self) -> Preference:
        """The preference terms with the chosen answer also read under this corruption (mDPO)."""
        return Preference({"chosen_corrupt": self.image}, self.key(), name="conditional preference")


@dataclass(frozen=True)
class POVIDNoise:
    """POVID's stage 2 (`vlalign.train.povid`): gamma * DPO(truth vs injected) + (1 - gamma) * DPO(truth vs the
    policy's own answer on a diffusion-noised image), the noisy answer made at every step, so its loss reads
    the reference model too. `train.loss` does not apply."""

    noise: NoiseConfig = field(default_factory=NoiseConfig)
    name: str = "povid"
    live_reference: bool = True
    unit: str = "pairs"

    def columns(self, config: TrainConfig) -> Columns:
        return Columns()

    def cached_reference(self, config: TrainConfig) -> bool:
        return True

    def collate(self, processor: Processor, columns: Columns, shared: bool) -> Collate:
        from vlalign.train.povid import povid_collate

        return povid_collate(processor, self.noise, shared)

    def loss(self, config: TrainConfig, columns: Columns, reference: Model | None) -> LossFn:
        from vlalign.train.povid import make_povid_loss

        return make_povid_loss(config, self.noise, reference)


@dataclass(frozen=True)
class GroupPolicyGradient:
    """The group-relative policy gradient (`vlalign.train.groups`) on groups of scored answers
    (`GroupExample`s, which carry their advantages and any log-probs the loss reads, from the round's
    stages). `train.loss` and `train.beta` do not apply."""

    config: PolicyGradientConfig = field(default_factory=PolicyGradientConfig)
    max_tokens: int = 512  # the answers' token limit: the `constant` aggregate divides by it
    temperature: float = 1.0  # the answers' sampling temperature: their log-probs are read under it
    name: str = "policy gradient"
    live_reference: bool = False
    unit: str = "groups"

    def columns(self, config: TrainConfig) -> Columns:
        return Columns()

    def cached_reference(self, config: TrainConfig) -> bool:
        return False

    def collate(self, processor: Processor, columns: Columns, shared: bool) -> Collate:
        from vlalign.train.groups import group_collate

        return group_collate(processor, shared)

    def loss(self, config: TrainConfig, columns: Columns, reference: Model | None) -> LossFn:
        from vlalign.train.groups import make_group_loss

        return make_group_loss(self.config, self.max_tokens, self.temperature)
