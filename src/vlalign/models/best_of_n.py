"""Best-of-N with the DPO implicit reward (RLAIF-V's inference-time self-feedback).

A DPO-trained policy defines a reward without a reward model: r(x, y) = beta * (log pi_theta(y|x) -
log pi_ref(y|x)). RLAIF-V normalises it by the answer's length so long answers are not favoured, samples
N answers, and keeps the one with the highest reward. The reference is the model the policy was trained
from (a separate model, or the same peft model with its adapters switched off).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from vlalign.models.generate import generate, sample_seed
from vlalign.models.lora import reference_context
from vlalign.models.scoring import score_responses
from vlalign.models.settings import Decoding

# Sampling temperature of best-of-N: low, since a sample has to be about as good as the greedy answer before
# picking the best of a few can help (the demo's row shows what best-of-8 gains on the world).
TEMPERATURE = 0.3


@dataclass
class Ranked:
    text: str
    reward: float
    candidates: list[tuple[str, float]]  # every sample with its reward, in sampling order


def implicit_rewards(policy, reference, processor, images: Sequence[Image.Image], instructions: Sequence[str],
                     answers: Sequence[str], beta: float = 0.1, batch_size: int = 16) -> list[float]:
    """beta * (sum log pi_theta - sum log pi_ref) / answer tokens, per answer."""
    mine = score_responses(policy, processor, images, instructions, answers, batch_size)
    with reference_context(reference) as ref:
        theirs = score_responses(ref, processor, images, instructions, answers, batch_size)
    return [beta * (a.sum_logp - b.sum_logp) / max(a.n_tokens, 1) for a, b in zip(mine, theirs, strict=True)]


def best_of_n(policy, reference, processor, images: Sequence[Image.Image], instructions: Sequence[str], n: int = 8,
              decoding: Decoding = Decoding(max_new_tokens=96, temperature=TEMPERATURE), beta: float = 0.1, seed: int = 0,
              batch_size: int = 64, first: int = 0) -> list[Ranked]:
    """For every (image, instruction): n seeded samples, ranked by implicit reward; the best first.
    `reference` may be the policy itself when it is a peft model (its adapters are switched off). A sample's
    seed follows its prompt's place in the whole list; `first` is the place of this list's first prompt when
    it is one share of a longer list."""
    if n < 1:
        raise ValueError(f"best-of-N needs n >= 1, got {n}")
    rows = [(i, k) for i in range(len(instructions)) for k in range(n)]
    seeds = [sample_seed(seed, f"{first + i}:{instructions[i]}", k) for i, k in rows]
    row_images = [images[i] for i, _ in rows]
    row_instructions = [instructions[i] for i, _ in rows]
    texts = generate(policy, processor, row_images, row_instructions, decoding, seeds=seeds, batch_size=batch_size,
                     description=f"best-of-{n} samples")
    rewards = implicit_rewards(policy, reference, processor, row_images, row_instructions, texts, beta)
    out = []
    for i in range(len(instructions)):
        candidates = [(texts[j], rewards[j]) for j, (row, _) in enumerate(rows) if row == i]
        text, reward = max(candidates, key=lambda c: c[1])
        out.append(Ranked(text, reward, candidates))
    return out
