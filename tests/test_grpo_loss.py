"""The group policy gradient against TRL's GRPOTrainer on identical per-token log-probs, variant by variant
(GRPO, BNPO / DAPO's token mean, Dr. GRPO, the sequence-level ratio, the KL term, separate clips), loss and
gradient; the advantages against TRL's formulas (GRPOTrainer's mean baseline and scales, RLOOTrainer's
leave-one-out baseline); and the loss over a batch split between processes as one process's.

TRL 1.16 computes the loss inside `GRPOTrainer._compute_loss`, after its own forward pass. The test builds a
bare trainer (object.__new__, only the attributes that method reads) whose forward returns the per-token
log-probs we give, padded to TRL's (answers, tokens) layout, so TRL's own code runs on our numbers.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from vlalign.feedback.groups import advantages
from vlalign.train.groups import aggregate, per_token_loss
from vlalign.train.settings import PolicyGradientConfig

trl_grpo = pytest.importorskip("trl.trainer.grpo_trainer")
trl_utils = pytest.importorskip("trl.trainer.utils")

MAX_TOKENS = 12
# (our settings, TRL's loss_type, TRL's importance_sampling_level)
VARIANTS = [
    (PolicyGradientConfig(), "grpo", "token"),
    (PolicyGradientConfig(aggregate="token"), "bnpo", "token"),
    (PolicyGradientConfig(aggregate="token", clip_low=0.2, clip_high=0.28), "dapo", "token"),
    (PolicyGradientConfig(aggregate="constant", scale="none"), "dr_grpo", "token"),
    (PolicyGradientConfig(ratio="sequence"), "grpo", "sequence"),
    (PolicyGradientConfig(kl=0.04), "grpo", "token"),
    (PolicyGradientConfig(aggregate="token", kl=0.1, clip_low=0.1, clip_high=0.3), "dapo", "token"),
    (PolicyGradientConfig(aggregate="constant", kl=0.02, ratio="sequence"), "dr_grpo", "sequence"),
]


def _answers(seed: int, n: int = 6):
    """Answers of random lengths: per-token log-probs (now, old, ref) flat, their lengths and advantages."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, MAX_TOKENS + 1, (n,), generator=g)
    total = int(lengths.sum())
    now = -torch.rand(total, generator=g, dtype=torch.float64) * 3
    old = now + torch.randn(total, generator=g, dtype=torch.float64) * 0.3  # a batch seen after some steps
    ref = now + torch.randn(total, generator=g, dtype=torch.float64) * 0.5
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    return now, old, ref, lengths, adv


def _padded(flat: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(len(lengths), int(lengths.max()), dtype=flat.dtype)
    for i, chunk in enumerate(torch.split(flat, lengths.tolist())):
        out[i, :len(chunk)] = chunk
    return out


def _bare_trainer(loss_type: str, level: str, beta: float, low: float, high: float):
    trainer = object.__new__(trl_grpo.GRPOTrainer)
    identity = lambda t: t  # noqa: E731
    accelerator = SimpleNamespace(num_processes=1, gather=identity, gather_for_metrics=identity,
                                  reduce=lambda t, reduction="sum": t)
    trainer.__dict__.update(
        accelerator=accelerator, loss_type=loss_type, importance_sampling_level=level, beta=beta,
        epsilon_low=low, epsilon_high=high, top_entropy_quantile=1.0, off_policy_mask_threshold=None,
        use_vllm=False, vllm_importance_sampling_correction=False, aux_loss_enabled=False,
        _entropy_bonus_enabled=False, current_gradient_accumulation_steps=1, max_completion_length=MAX_TOKENS,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        args=SimpleNamespace(use_bias_correction_kl=False, delta=None, steps_per_generation=1),
        model=SimpleNamespace(training=True))
    return trainer


def trl_loss(now, old, ref, lengths, adv, loss_type: str, level: str, config: PolicyGradientConfig) -> torch.Tensor:
    """TRL's loss on these answers; `now` is the leaf whose gradient the caller reads."""
    trainer = _bare_trainer(loss_type, level, config.kl, config.clip_low, config.clip_high)
    mask = _padded(torch.ones_like(now), lengths)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (_padded(now, lengths), torch.zeros_like(mask), None)
    width = mask.shape[1]
    inputs = {"prompt_ids": torch.zeros(len(lengths), 1, dtype=torch.long), "prompt_mask": torch.ones(len(lengths), 1),
              "completion_ids": torch.zeros(len(lengths), width, dtype=torch.long), "completion_mask": mask,
              "advantages": adv, "old_per_token_logps": _padded(old, lengths),
              "ref_per_token_logps": _padded(ref, lengths), "num_items_in_batch": mask.sum()}
    return trainer._compute_loss(None, inputs)


def our_loss(now, old, ref, lengths, adv, config: PolicyGradientConfig) -> torch.Tensor:
    slot = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    tokens, _ = per_token_loss(now, slot, lengths.to(now.dtype), adv, old, ref, config)
    return aggregate(tokens, slot, lengths.to(now.dtype), 3, config, MAX_TOKENS)


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_and_gradient_equal_trl(variant, seed):
    config, loss_type, level = VARIANTS[variant]
    now, old, ref, lengths, adv = _answers(seed)
    mine, theirs = now.clone().requires_grad_(), now.clone().requires_grad_()
    ours = our_loss(mine, old, ref, lengths, adv, config)
    trl = trl_loss(theirs, old, ref, lengths, adv, loss_type, level, config)
    ours.backward()
    trl.backward()
    assert ours.item() == pytest.approx(trl.item(), rel=1e-9, abs=1e-12)
    assert torch.allclose(mine.grad, theirs.grad, rtol=1e-9, atol=1e-12)
    assert mine.grad.abs().sum() > 0, "the comparison must involve a gradient"


def test_on_policy_loss_is_the_policy_gradient():
    """Without `old` (one step per rollout) the ratio is 1 and the gradient is -A / length per token (GRPO)."""
    now, _, _, lengths, adv = _answers(5)
    x = now.clone().requires_grad_()
    slot = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    tokens, values = per_token_loss(x, slot, lengths.double(), adv, None, None, PolicyGradientConfig())
    aggregate(tokens, slot, lengths.double(), 1, PolicyGradientConfig(), MAX_TOKENS).backward()
    expected = -adv[slot] / lengths[slot] / len(lengths)
    assert torch.allclose(x.grad, expected) and not values["clipped"].any()


def trl_grpo_advantages(rewards: torch.Tensor, n: int, scale: str) -> torch.Tensor:
    """GRPOTrainer's advantages (sum_then_normalize), as its `_generate_and_score_completions` writes them."""
    mean = torch.nanmean(rewards.view(-1, n), dim=1).repeat_interleave(n, dim=0)
    if scale == "batch":
        std = trl_utils.nanstd(rewards).expand_as(rewards)
    else:
        std = trl_utils.nanstd(rewards.view(-1, n), dim=1).repeat_interleave(n, dim=0)
    out = rewards - mean
    return out / (std + 1e-4) if scale != "none" else out


def trl_rloo_advantages(rewards: torch.Tensor, n: int) -> torch.Tensor:
    """RLOOTrainer's leave-one-out advantages (without its optional batch normalisation)."""
    grouped = rewards.view(-1, n)
    baselines = (grouped.sum(1, keepdim=True) - grouped) / (n - 1)
    return rewards - baselines.view(-1)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_advantages_equal_trl_grpo(scale):
    g = torch.Generator().manual_seed(3)
    rewards = torch.randint(-4, 2, (5 * 8,), generator=g).double()
    rewards[8:16] = 1.0  # a group whose answers earned the same: advantage 0, not a division by 0
    ours = advantages(rewards.view(5, 8).tolist(), PolicyGradientConfig(scale=scale))
    assert torch.allclose(torch.tensor(ours, dtype=torch.float64).view(-1), trl_grpo_advantages(rewards, 8, scale))
    assert ours[1] == [0.0] * 8


def test_advantages_equal_trl_rloo():
    rewards = torch.randn(4 * 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    ours = advantages(rewards.view(4, 6).tolist(), PolicyGradientConfig(baseline="leave_one_out", scale="none"))
    assert torch.allclose(torch.tensor(ours, dtype=torch.float64).view(-1), trl_rloo_advantages(rewards, 6))


@pytest.mark.parametrize("config", [PolicyGradientConfig(), PolicyGradientConfig(aggregate="token", kl=0.1),
                                    PolicyGradientConfig(aggregate="constant", ratio="sequence")])
def test_a_batch_split_over_processes_trains_as_one_process(config, monkeypatch):
    """Two processes each holding a share of the batch's groups (weighted by the loop: share x processes /
    groups) and averaging their gradients (DDP) make the gradient of one process on the whole batch."""
    import vlalign.train.groups as groups_module

    now, old, ref, lengths, adv = _answers(7, n=12)
    group_of = torch.repeat_interleave(torch.arange(4), torch.tensor([3, 3, 3, 3]))  # 4 groups of 3 answers
    whole = now.clone().requires_grad_()
    one = _flat_loss(whole, old, ref, lengths, adv, torch.ones(12, dtype=torch.bool), 4, config)
    one.backward()
    totals = torch.tensor([4.0, 12.0, float(lengths.sum())], dtype=torch.float64)
    monkeypatch.setattr(groups_module, "_global", lambda counts: totals)  # what the all-reduce sums to
    shares = [group_of < 1, group_of >= 1]  # an uneven split: 1 group and 3 groups
    parts = now.clone().requires_grad_()
    for share in shares:
        n_groups = int(group_of[share].unique().numel())
        weight = n_groups * 2 / 4  # the loop's weight of a process's share
        (weight * _flat_loss(parts, old, ref, lengths, adv, share, n_groups, config) / 2).backward()
    assert torch.allclose(parts.grad, whole.grad, rtol=1e-9, atol=1e-12)


def _flat_loss(now, old, ref, lengths, adv, answers: torch.Tensor, groups: int, config) -> torch.Tensor:
    """The loss of the chosen answers only (a process's share), their tokens cut from the flat tensors."""
    keep = torch.repeat_interleave(answers, lengths)
    kept_lengths = lengths[answers]
    slot = torch.repeat_interleave(torch.arange(len(kept_lengths)), kept_lengths)
    tokens, _ = per_token_loss(now[keep], slot, kept_lengths.double(), adv[answers], old[keep], ref[keep], config)
    return aggregate(tokens, slot, kept_lengths.double(), groups, config, MAX_TOKENS)
