"""LoRA through peft, and freezing the vision tower, for any supported VLM.

Module names differ between architectures (LLaVA's `vision_tower`, Qwen2-VL's `visual`, Idefics3's
`vision_model`), so both functions go by name patterns rather than by attribute paths.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from vlalign.models.settings import LoraSettings

VISION_MARKERS = ("vision_tower", "vision_model", "visual", "image_newline")
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def is_vision_parameter(name: str) -> bool:
    return any(marker in name.split(".") for marker in VISION_MARKERS)


def freeze_vision(model: torch.nn.Module) -> int:
    """Stop gradients into the vision encoder (the projector stays trainable); returns tensors frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        if is_vision_parameter(name):
            param.requires_grad_(False)
            frozen += 1
    if frozen == 0:
        raise ValueError(f"found no vision-encoder parameters to freeze in {type(model).__name__}; "
                         f"expected a module named one of {VISION_MARKERS}, or set freeze_vision: false")
    return frozen


def language_targets(model: torch.nn.Module) -> list[str]:
    """Names of the decoder's attention and MLP projections (never the vision encoder's)."""
    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in LANGUAGE_PROJECTIONS
               and not is_vision_parameter(name)]
    if not targets:
        raise ValueError(f"found no decoder projections ({', '.join(LANGUAGE_PROJECTIONS)}) in "
                         f"{type(model).__name__} to put LoRA adapters on")
    return targets


def apply_lora(model: torch.nn.Module, settings: LoraSettings = LoraSettings()):
    """Wrap `model` in a fresh peft LoRA adapter (on the decoder's projections unless `target_modules` names
    others); base weights stay frozen, `modules_to_save` train in full."""
    from peft import LoraConfig, get_peft_model

    targets = list(settings.target_modules) if settings.target_modules else language_targets(model)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets,
                        modules_to_save=list(settings.modules_to_save) if settings.modules_to_save else None)
    return get_peft_model(model, config)


def merge(adapter: str, out: str) -> str:
    """Fold a saved LoRA adapter into its base model and save the result as a plain checkpoint."""
    from vlalign.models.load import load, save

    model, processor = load(adapter)
    if not hasattr(model, "merge_and_unload"):
        raise ValueError(f"{adapter} is not a LoRA adapter (no adapter_config.json); it needs no merge")
    return str(save(model.merge_and_unload(), processor, out))


@contextlib.contextmanager
def reference_context(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside, a peft model behaves as its base (adapters off): the DPO reference without a copy."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield model
        return
    with disable():
        yield model
