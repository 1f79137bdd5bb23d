"""Load and save a VLM with its processor: a local directory, or `world:<name>` for a shipped world model."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

WORLD_PREFIX = "world:"


def resolve(path: str | Path) -> Path:
    """The directory behind a model reference, with a clear error when it is not a model directory."""
    ref = str(path)
    if ref.startswith(WORLD_PREFIX):
        from vlalign.world.train_base import shipped_path

        return shipped_path(ref[len(WORLD_PREFIX):] or "base")
    p = Path(ref).expanduser().absolute()
    if not ((p / "config.json").exists() or (p / "adapter_config.json").exists()):
        raise FileNotFoundError(
            f"no model at {p} (no config.json or adapter_config.json there). Pass a local model directory "
            f"saved with save_pretrained, or world:base / world:labeler for the shipped world models. "
            f"Nothing is downloaded from a hub.")
    return p


def _adapter_base(adapter_dir: Path) -> Path:
    """The base model directory a LoRA adapter names (a relative name counts from the adapter's folder)."""
    from peft import PeftConfig

    ref = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not ref:
        raise FileNotFoundError(f"the adapter at {adapter_dir} does not name its base model "
                                f"(base_model_name_or_path is empty in adapter_config.json)")
    if not str(ref).startswith(WORLD_PREFIX) and not Path(ref).is_absolute() and (adapter_dir / ref).is_dir():
        ref = adapter_dir / ref
    return resolve(ref)


def _dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load(path: str | Path, dtype: str | torch.dtype | None = "auto", device: str | None = None,
         trust_remote_code: bool = False):
    """(model, processor) in eval mode. LoRA adapter directories load onto their base model."""
    device = device or default_device()
    p = resolve(path)
    torch_dtype = _dtype(dtype, device)
    if (p / "adapter_config.json").exists():
        from peft import PeftModel

        base = _adapter_base(p)
        model = AutoModelForImageTextToText.from_pretrained(
            base, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        model = PeftModel.from_pretrained(model, p)
        processor_dir = p if (p / "processor_config.json").exists() else base
    else:
        model = AutoModelForImageTextToText.from_pretrained(
            p, dtype=torch_dtype, trust_remote_code=trust_remote_code)
        processor_dir = p
    processor = AutoProcessor.from_pretrained(processor_dir, trust_remote_code=trust_remote_code)
    return model.to(device).eval(), processor


def save(model, processor, out: str | Path) -> Path:
    """Safetensors weights (or the LoRA adapter) plus the processor, loadable by `load`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for config in getattr(model, "peft_config", {}).values():
        # The adapter records its base by the path it was loaded from; make that path absolute so the
        # adapter loads from any working directory, and say so now if it names nothing loadable.
        ref = config.base_model_name_or_path
        try:
            if not ref:
                raise FileNotFoundError(ref)
            base = resolve(ref)
            if not str(ref).startswith(WORLD_PREFIX):
                config.base_model_name_or_path = str(base)
        except FileNotFoundError:
            warnings.warn(f"saving a LoRA adapter to {out} whose base model ({ref!r}) is not a model "
                          f"directory; load() will not open it until adapter_config.json's "
                          f"base_model_name_or_path names one (load the base with load() before "
                          f"applying LoRA to avoid this)", stacklevel=2)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    return out
