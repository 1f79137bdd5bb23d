"""Load and save a VLM with its processor, under the runtime settings of `vlalign.models.settings.Runtime`.

A model reference is a local directory, or `<source>:<name>` for a model a plugin provides (`world:base`).
Nothing is downloaded. Weights load only from safetensors, and a checkpoint's own code runs only with
`trust_remote_code`. `save` writes to a temporary folder, checks what it wrote, and renames it into place,
so a folder that `load` finds is always whole; a folder cut short by a kill is named as such.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from vlalign.models.processors import configure, load_processor
from vlalign.models.settings import Runtime
from vlalign.models.types import Model, Processor
from vlalign.plugins import MODEL_SOURCES

CHECKPOINT_MARKER = "vlalign_checkpoint.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def source_of(ref: str) -> tuple[str, str] | None:
    """(source, name) when `ref` names a plugin's model (`world:base`), else None (a path)."""
    prefix, sep, rest = str(ref).partition(":")
    if sep and len(prefix) > 1 and "/" not in prefix and prefix in MODEL_SOURCES:
        return prefix, rest
    return None


def resolve(path: str | Path) -> Path:
    """The directory behind a model reference, with a clear error when it is not a model directory."""
    found = source_of(str(path))
    if found is not None:
        source, name = found
        return Path(MODEL_SOURCES.get(source)(name))
    p = Path(path).expanduser().absolute()
    if not ((p / "config.json").exists() or (p / "adapter_config.json").exists()):
        sources = ", ".join(f"{s}:NAME" for s in MODEL_SOURCES.names())
        raise FileNotFoundError(
            f"no model at {p} (no config.json or adapter_config.json there). Pass a local model directory "
            f"saved with save_pretrained{', or ' + sources if sources else ''}. Nothing is downloaded from a hub.")
    check_complete(p)
    return p


class IncompleteCheckpoint(ValueError):
    """A model folder that lost or shortened a file after it was written (a copy cut short, a full disk);
    `problem` says what is wrong, the message adds the fix (callers that know which step saved the folder
    give a better one)."""

    def __init__(self, path: Path, problem: str, fix: str | None = None):
        self.path, self.problem = path, problem
        super().__init__(f"{problem}. {fix or f'Delete {path} and run the step that saved it again.'}")


def _safetensors_size(path: Path) -> int | None:
    """The size a safetensors file's header promises (None when even the header is unreadable)."""
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n)) if 0 < n < 100_000_000 else None
    except (OSError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)
            and isinstance(v.get("data_offsets"), list) and len(v["data_offsets"]) == 2]
    return 8 + n + max(ends, default=0)


def check_complete(path: Path) -> None:
    """Raise `IncompleteCheckpoint` when a model folder has lost or shortened a file: against the sizes
    `save` recorded, and for every safetensors file against the size its own header promises (so a folder
    saved by another tool is checked too)."""
    marker = path / CHECKPOINT_MARKER
    if marker.exists():
        try:
            files = json.loads(marker.read_text())["files"]
            sizes = {str(name): int(size) for name, size in files.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IncompleteCheckpoint(path, f"the checkpoint marker {marker} is damaged ({e})") from e
        for name, size in sizes.items():
            f = path / name
            if not f.exists() or f.stat().st_size != size:
                have = f.stat().st_size if f.exists() else "missing"
                raise IncompleteCheckpoint(
                    path, f"the checkpoint at {path} is incomplete: {name} is {have} bytes, {size} expected")
    for f in sorted(path.glob("*.safetensors")):
        promised = _safetensors_size(f)
        if promised is None or f.stat().st_size < promised:
            why = "its header is unreadable" if promised is None else f"its header promises {promised}"
            raise IncompleteCheckpoint(path, f"the checkpoint at {path} is incomplete: {f.name} is "
                                             f"{f.stat().st_size} bytes and {why}")


def _adapter_base(adapter_dir: Path) -> Path:
    """The base model directory a LoRA adapter names (a relative name counts from the adapter's folder)."""
    from peft import PeftConfig

    ref = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not ref:
        raise FileNotFoundError(f"the adapter at {adapter_dir} does not name its base model "
                                f"(base_model_name_or_path is empty in adapter_config.json)")
    if source_of(ref) is None and not Path(ref).is_absolute() and (adapter_dir / ref).is_dir():
        ref = adapter_dir / ref
    return resolve(ref)


def torch_dtype(runtime: Runtime) -> torch.dtype | str:
    return "auto" if runtime.dtype == "auto" else _DTYPES[runtime.dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _from_pretrained(path: Path, runtime: Runtime):
    kwargs: dict = {"dtype": torch_dtype(runtime), "trust_remote_code": runtime.trust_remote_code,
                    "use_safetensors": True}
    if runtime.attn_implementation:
        kwargs["attn_implementation"] = runtime.attn_implementation
    if runtime.device_map:
        kwargs["device_map"] = runtime.device_map
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def load(path: str | Path, runtime: Runtime | None = None, **overrides) -> tuple[Model, Processor]:
    """(model, processor) in eval mode. LoRA adapter directories load onto their base model. `overrides`
    change single runtime settings (`load(path, dtype="fp32", device="cpu")`)."""
    runtime = (runtime or Runtime()).with_(**overrides)
    p = resolve(path)
    if (p / "adapter_config.json").exists():
        from peft import PeftModel

        base = _adapter_base(p)
        model = PeftModel.from_pretrained(_from_pretrained(base, runtime), p)
        processor_dir = p if (p / "processor_config.json").exists() else base
    else:
        model = _from_pretrained(p, runtime)
        processor_dir = p
    processor = configure(load_processor(processor_dir, runtime.trust_remote_code), runtime)
    if not runtime.device_map:
        model = model.to(runtime.device or default_device())
    return model.eval(), processor


def _absolute_adapter_bases(model, out: Path) -> None:
    """An adapter records its base by the path it was loaded from; make it absolute so the adapter loads
    from any working directory, and say so now if it names nothing loadable."""
    for config in getattr(model, "peft_config", {}).values():
        ref = config.base_model_name_or_path
        try:
            if not ref:
                raise FileNotFoundError(ref)
            base = resolve(ref)
            if source_of(ref) is None:
                config.base_model_name_or_path = str(base)
        except FileNotFoundError:
            warnings.warn(f"saving a LoRA adapter to {out} whose base model ({ref!r}) is not a model "
                          f"directory; load() will not open it until adapter_config.json's "
                          f"base_model_name_or_path names one (load the base with load() before "
                          f"applying LoRA to avoid this)", stacklevel=3)


def _check_safetensors(folder: Path) -> None:
    """Every safetensors file parses and holds every byte its header promises."""
    from safetensors import safe_open

    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():  # noqa: SIM118 - safe_open has no __iter__
                st.get_slice(key)


def save(model, processor, out: str | Path) -> Path:
    """Safetensors weights (or the LoRA adapter) plus the processor, loadable by `load`: written next to
    `out`, checked, then renamed into place (an older folder at `out` is replaced only then)."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.saving")
    shutil.rmtree(tmp, ignore_errors=True)
    _absolute_adapter_bases(model, out)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    _check_safetensors(tmp)
    files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}
    (tmp / CHECKPOINT_MARKER).write_text(json.dumps({"files": files}, indent=1))
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
