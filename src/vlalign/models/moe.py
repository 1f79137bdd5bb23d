"""Mixture-of-Experts routers: their load-balancing loss, and its weight in a training objective.

A MoE decoder (Qwen3-VL-30B-A3B, ...) sends each token to the top-k of its experts; the Switch Transformer's
auxiliary loss keeps the routers from sending every token to the same few. TRL adds it to the preference loss
as `router_aux_loss_coef * aux_loss`, where `aux_loss` is transformers' `load_balancing_loss_func` over the
padded rows (one per prompt and answer) and the coefficient is the checkpoint's own unless set. Shared-prefix
rows hold each prompt once, so here every token is weighted by the number of plain rows that hold it, which
gives TRL's value from the same forward (`vlalign.models.prefix.continuation_logps_and_router`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from transformers.utils.output_capturing import OutputRecorder


def is_moe(model) -> bool:
    """Whether the decoder routes tokens to experts and can return its routers' logits (TRL's test)."""
    return hasattr(model.config.get_text_config(), "output_router_logits")


def router_coefficient(model, configured: float | None) -> float:
    """The weight of the load-balancing term, by TRL's convention: `configured` when set (0 turns it off),
    else the checkpoint's `router_aux_loss_coef` (0 for a model without routers)."""
    text = model.config.get_text_config()
    if configured is None:
        return float(getattr(text, "router_aux_loss_coef", 0.0) or 0.0) if is_moe(model) else 0.0
    if configured and not is_moe(model):
        raise ValueError(f"train.router_aux_loss_coef is {configured} but {type(model).__name__} has no expert "
                         f"routers, so there is no load-balancing loss to weigh; leave it null or set it to 0")
    return float(configured)


def _router_outputs(model) -> dict[type, int]:
    """The router module classes of `model` and where their logits sit in each one's output, as transformers
    records them (`_can_record_outputs["router_logits"]` of the model's classes)."""
    found: dict[type, int] = {}
    for module in model.modules():
        spec = (getattr(type(module), "_can_record_outputs", None) or {}).get("router_logits")
        if isinstance(spec, OutputRecorder):
            found[spec.target_class] = spec.index
        elif isinstance(spec, type):
            found[spec] = 0
    return found


@contextlib.contextmanager
def captured_router_logits(model) -> Iterator[list[torch.Tensor]]:
    """Every router's logits (tokens x experts) from the forwards run inside, in the order the layers ran.
    Forward hooks take them, because asking the model for them (`output_router_logits`) also has it compute
    its own loss under a 2-D padding mask, which shared-prefix rows replace by a 4-D one. The hooks are gone
    on leaving, so gradient checkpointing's recomputation in backward adds nothing."""
    where = _router_outputs(model)
    logits: list[torch.Tensor] = []
    hooks = [module.register_forward_hook(lambda m, i, out, k=where[type(module)]: logits.append(out[k]))
             for module in model.modules() if type(module) in where]
    try:
        yield logits
    finally:
        for hook in hooks:
            hook.remove()


def load_balancing_loss(model, router_logits: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """num_experts * sum over experts of (share of top-k assignments) x (mean router probability), over all
    layers' tokens, each token weighted by `weights` (B, L; 0 drops it). With 0/1 weights this is transformers'
    `load_balancing_loss_func` under an attention mask, the `aux_loss` TRL adds."""
    if not router_logits:
        raise ValueError(f"{type(model).__name__} returned no router logits; it is not a mixture of experts")
    text = model.config.get_text_config()
    experts, top_k = text.num_experts, text.num_experts_per_tok
    device = router_logits[0].device
    w = weights.reshape(-1).to(device=device, dtype=torch.float32)
    assigned = torch.zeros(experts, dtype=torch.float32, device=device)
    probability = torch.zeros(experts, dtype=torch.float32, device=device)
    for layer in router_logits:
        probs = layer.float().softmax(-1)
        chosen = probs.topk(top_k, dim=-1).indices
        assigned = assigned.scatter_add(0, chosen.reshape(-1), w.repeat_interleave(top_k))
        probability = probability + (probs * w[:, None]).sum(0)
    rows = w.sum() * len(router_logits)
    return experts * (assigned / rows * probability / rows).sum()
