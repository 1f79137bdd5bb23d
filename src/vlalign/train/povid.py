"""POVID training (arXiv 2402.11411): ground truth preferred over two kinds of dispreferred answers.

Stage 1 is plain DPO on (ground truth, injected hallucination). Stage 2 adds the policy's own
dispreferred answer, made online: the image is noised by the DDPM forward process (fresh noise every
batch), the policy reads the ground-truth answer teacher-forced on that noisy image, and its argmax token
at every answer position is the "noisy answer". That answer is scored under the *clean* image (with
gradient for the policy), and the reference does the same with its own argmax. The loss is
gamma * DPO(gt, injected) + (1 - gamma) * DPO(gt, noisy), as in the reference code.

The objective is `vlalign.train.objectives.POVIDNoise`; its reference is the adapter-disabled policy with
LoRA, or a frozen copy of the starting policy.
"""

from __future__ import annotations

import torch

from vlalign.data.corrupt import add_diffusion_noise
from vlalign.models import prefix
from vlalign.models.batching import pad_id
from vlalign.models.generate import sample_seed
from vlalign.models.lora import reference_context
from vlalign.train.columns import Columns
from vlalign.train.losses import povid_loss
from vlalign.train.preference import pair_collate
from vlalign.train.settings import NoiseConfig, TrainConfig


def povid_collate(processor, noise: NoiseConfig, shared: bool = True):
    """Pair rows (the prompt once, chosen and rejected continuing it) plus the ground truth under the clean
    image and under a freshly noised one, each its own prefix. The noise of an example in batch `number` is
    seeded by both, so a resumed run draws it again, and so does each process of a launched job, whatever
    share of the batch it holds."""
    pairs = pair_collate(processor, Columns(), shared)
    pad = pad_id(processor)

    def collate(items: list, number: int) -> dict:
        examples = [e for e, _ in items]
        noisy_images = [add_diffusion_noise(e.image, noise.step, noise.T,
                                            torch.Generator().manual_seed(sample_seed(noise.seed, e.id, number)))
                        for e in examples]

        def truth(images) -> dict:
            return prefix.collate([prefix.answers_group(processor, im, e.instruction, [e.chosen], [i])
                                   for i, (e, im) in enumerate(zip(examples, images, strict=True))], pad, shared)

        return {**pairs(items, number), "clean": truth([e.image for e in examples]), "noisy": truth(noisy_images)}

    return collate


def own_noisy_logps(clean_logits: torch.Tensor, noisy_logits: torch.Tensor, slot: torch.Tensor, n: int) -> torch.Tensor:
    """Per example: the sum over its answer tokens of log p_clean(argmax of the noisy-image logits). Both
    logits are (tokens, vocabulary), one row per answer token (`vlalign.models.prefix.token_logits`), and
    `slot` names each token's example; only answer positions are normalised."""
    picked = noisy_logits.argmax(-1)
    logps = prefix.token_logps(clean_logits, picked)
    return logps.new_zeros(n).index_add(0, slot, logps)


def _chosen_tokens(batch: dict, n: int) -> torch.Tensor:
    """Which tokens of a pair batch are chosen answers (slots 0..n-1, in example order)."""
    return batch["packing"]["slot"] < n


def make_povid_loss(config: TrainConfig, noise: NoiseConfig, reference):
    """Stage 2's loss for the shared loop; `reference` is the frozen copy, or the policy itself (LoRA),
    whose adapters are switched off for the reference passes."""

    def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        ref, clean, noisy = batch.pop("ref"), batch.pop("clean"), batch.pop("noisy")
        n = len(ref["chosen"])
        logits = prefix.token_logits(model, batch)
        sums = prefix.slot_sums(prefix.token_logps(logits, batch["packing"]["target"]), batch)
        chosen = _chosen_tokens(batch, n)
        slot = noisy["packing"]["slot"]
        if not torch.equal(batch["packing"]["slot"][chosen], slot):
            raise ValueError("the noisy rows' answers do not line up with the chosen answers")
        with torch.no_grad():
            policy_noisy = prefix.token_logits(model, noisy)
        own = own_noisy_logps(logits[chosen], policy_noisy, slot, n)
        with torch.no_grad(), reference_context(reference) as r:
            ref_own = own_noisy_logps(prefix.token_logits(r, clean), prefix.token_logits(r, noisy), slot, n)
        losses, injected_term, noisy_term = povid_loss(sums[:n], sums[n:], own, ref["chosen"], ref["rejected"],
                                                       ref_own, config.beta, noise.gamma)
        return losses.mean(), {"injected_loss": float(injected_term.mean()), "noisy_loss": float(noisy_term.mean()),
                               "chosen_logp": float(sums[:n].detach().mean())}

    return loss_fn
