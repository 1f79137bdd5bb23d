"""mDPO (arXiv 2406.11839): DPO on preference pairs, plus a conditional term (the chosen answer with the real
image is preferred to the same answer with a corrupted image, so the image has to matter) and a reward
anchor (the chosen answer's own reward stays positive). The pairs are RLAIF-V's (or any run's, with
`pairs_from`); what this method adds is its corrupted image and its loss terms.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from vlalign.methods.base import Arm, Method, Round
from vlalign.methods.rlaif_v import RLAIFVConfig, labeled_pairs
from vlalign.plugins import METHODS
from vlalign.train.settings import OptimConfig, TrainConfig


@dataclass(frozen=True)
class Corruption:
    """How the conditional term's corrupted image is made (once per pair, the same every epoch)."""

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

    def image(self, example):
        """The corrupted image of one pair, a pure function of the pair's id (so a cached reference holds)."""
        import torch

        from vlalign.data.corrupt import add_diffusion_noise, random_crop

        digest = hashlib.sha256(f"{self.seed}:{example.id}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:7], "little"))
        if self.kind == "crop":
            return random_crop(example.image, self.max_area, generator)
        return add_diffusion_noise(example.image, self.noise_step, generator=generator)


@dataclass(frozen=True)
class MDPOConfig(RLAIFVConfig):
    """mDPO on RLAIF-V's pairs: DPO, the image-conditional term and the reward anchor."""

    rounds: int = 1  # the paper trains once on fixed pairs; more rounds sample anew, as RLAIF-V does
    corruption: Corruption = field(default_factory=Corruption)  # the conditional term's corrupted image
    train: TrainConfig = field(default_factory=lambda: TrainConfig(  # the paper's three terms, equally weighted
        loss={"sigmoid": 1.0, "conditional": 1.0, "anchor": 1.0}, beta=0.1, batch_size=8, epochs=1,
        optim=OptimConfig(lr=5e-7)))


def pairs(r: Round) -> list[Arm]:
    stage, stats = labeled_pairs(r)
    c: MDPOConfig = r.config
    return [Arm("policy", stage, c.train, images={"chosen_corrupt": c.corruption.image},
                images_key=c.corruption.key(), stats=stats)]


METHOD = METHODS.register("mdpo", Method(
    "mdpo", "DPO plus an image-conditional term and a reward anchor, on RLAIF-V's pairs (arXiv 2406.11839)",
    MDPOConfig, pairs))
