"""LoRA through peft, and freezing the vision tower, for any supported VLM.

Module names differ between architectures (LLaVA's `vision_tower`, Qwen2-VL's `visual`, Idefics3's
`vision_model`), so both functions go by name patterns rather than by attribute paths.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch

from vlalign.models.settings import LoraSettings

VISION_MARKERS = ("vision_tower", "vision_model", "visual", "image_newline")
LANGUAGE_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# family -> the decoder projections LoRA adapts when `target_modules` is null, where they are not the above.
# GLM-4.xV fuses its MLP's gate and up projections into one. A mixture of experts keeps its experts as 3-D
# weight tensors (no Linear layer for a LoRA adapter to wrap) and its routers as they were trained, so its
# adapters sit on attention.
FAMILY_PROJECTIONS: dict[str, tuple[str, ...]] = {
    "glm4v": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    "glm46v": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"),
    "qwen3_vl_moe": ("q_proj", "k_proj", "v_proj", "o_proj"),
}


def projections(family: str) -> tuple[str, ...]:
    """The module names LoRA adapts in `family`'s decoder by default."""
    return FAMILY_PROJECTIONS.get(family, LANGUAGE_PROJECTIONS)


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
    """Names of the decoder's attention and MLP projections (never the vision encoder's), as the family names
    them (`projections`)."""
    names = projections(model.config.model_type)
    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in names
               and not is_vision_parameter(name)]
    if not targets:
        raise ValueError(f"found no decoder projections ({', '.join(names)}) in "
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


@contextlib.contextmanager
def reference_context(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Inside, a peft model behaves as its base (adapters off): the DPO reference without a copy."""
    disable = getattr(model, "disable_adapter", None)
    if disable is None:
        yield model
        return
    with disable():
        yield model


ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _lora_pairs(state: dict[str, torch.Tensor], scaling: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module name -> (A, B scaled by the adapter's scaling), from a saved adapter's state dict."""
    pairs = {}
    for key, a in state.items():
        if key.endswith(".lora_A.weight"):
            module = key[: -len(".lora_A.weight")]
            pairs[module] = (a, state[f"{module}.lora_B.weight"] * scaling)
    return pairs


def _stacked(older: tuple[torch.Tensor, torch.Tensor] | None, newer: tuple[torch.Tensor, torch.Tensor] | None,
             ranks: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """[A_old; A_new] and [B_old, B_new]: B A is the sum of both updates (a missing one counts as zeros)."""
    like = newer or older
    parts = [p or (like[0].new_zeros(r, like[0].shape[1]), like[1].new_zeros(like[1].shape[0], r))
             for p, r in ((older, ranks[0]), (newer, ranks[1]))]
    return torch.cat([parts[0][0], parts[1][0]], 0), torch.cat([parts[0][1], parts[1][1]], 1)


def save_stacked_adapter(model, out: str | Path, previous: str | Path | None = None) -> None:
    """Save the LoRA adapter of a peft `model` stacked onto the one saved at `previous` (the earlier rounds'),
    as one adapter on the first round's base: each round trains a fresh adapter on the round before merged,
    and W0 + B1 A1 s1 + B2 A2 s2 is the LoRA of rank r1 + r2 with A = [A1; A2], B = [s1 B1, s2 B2], scaling 1.
    So a server keeps its base and loads one adapter per round (vLLM's dynamic LoRA); the rank grows by r
    each round. Fully trained modules (`modules_to_save`) are the newest round's, which holds the sum.
    Without `previous` the adapter is saved as trained (its own rank and alpha), so merging it gives what
    merging the model in memory gives. Written to a temporary folder, then renamed into place."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    config = model.peft_config[model.active_adapter]
    state = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(model).items()}
    stacked = copy.deepcopy(config)
    if previous is not None:
        old_config = json.loads((Path(previous) / "adapter_config.json").read_text())
        old = load_file(str(Path(previous) / ADAPTER_WEIGHTS))
        old_pairs = _lora_pairs(old, _scaling(old_config["lora_alpha"], old_config["r"],
                                              old_config.get("use_rslora", False)))
        pairs = _lora_pairs(state, _scaling(config.lora_alpha, config.r, config.use_rslora))
        state = {**old, **state}
        for module in {*old_pairs, *pairs}:
            a, b = _stacked(old_pairs.get(module), pairs.get(module), (old_config["r"], config.r))
            state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"] = a.contiguous(), b.contiguous()
        rank = old_config["r"] + config.r
        stacked.r, stacked.lora_alpha, stacked.use_rslora = rank, rank, False
        stacked.base_model_name_or_path = old_config["base_model_name_or_path"]
        stacked.target_modules = sorted(set(config.target_modules) | set(old_config["target_modules"]))
    out = Path(out)
    tmp = out.with_name(f".{out.name}.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    stacked.save_pretrained(tmp)
    save_file(state, str(tmp / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _scaling(alpha: float, r: int, rslora: bool) -> float:
    return alpha / (r ** 0.5 if rslora else r)


def is_quantized(model: torch.nn.Module) -> bool:
    """Whether the model (or a peft model's base) was loaded quantized through bitsandbytes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def prepare_quantized(model: torch.nn.Module, gradient_checkpointing: bool = False) -> torch.nn.Module:
    """A quantized model (QLoRA) made ready for adapters the way peft prescribes (its quantized weights
    frozen, layer norms in fp32, input gradients on); any other model as it is."""
    if not is_quantized(model):
        return model
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
