"""Load and save a VLM with its processor, under the runtime settings of `vlalign.models.settings.Runtime`.

A model reference is a local directory, or `<source>:<name>` for a model a plugin provides (`world:base`).
Nothing is downloaded. Weights load only from safetensors, and a checkpoint's own code runs only with
`trust_remote_code`. `save` writes to a temporary folder, checks what it wrote, records every file's size
and checksum (`vlalign.checksums`), and renames it into place, so a folder that `load` finds is always
whole; a folder cut short by a kill, or whose bytes changed since, is named as such. `check_complete` (what a
resume runs on a model it only names) reads a file only when its modification time changed; `load` hashes
every file, since it reads them all anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText

from vlalign import ranks
from vlalign.checksums import differences, moved, read_sums, sums, sums_json
from vlalign.models.paths import model_dir, source_of
from vlalign.models.processors import configure, load_processor
from vlalign.models.settings import Runtime
from vlalign.models.types import Model, Processor

CHECKPOINT_MARKER = "vlalign_checkpoint.json"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def resolve(path: str | Path, full: bool = False) -> Path:
    """The directory behind a model reference, with a clear error when it is not a model directory or is
    damaged (`check_complete`; with `full`, every file it recorded is hashed)."""
    p = model_dir(path)
    if source_of(str(path)) is None:
        check_complete(p, full)
    return p


class IncompleteCheckpoint(ValueError):
    """A model folder that lost, shortened or changed a file after it was written (a copy cut short, a full
    disk, bytes overwritten);
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


def check_complete(path: Path, full: bool = False) -> None:
    """Raise `IncompleteCheckpoint` when a model folder has lost, shortened or changed a file: against the sizes
    and checksums `save` recorded (a file is hashed when its modification time changed, or always with `full`),
    and for every safetensors file against the size its own header promises (so a folder saved by another
    tool is checked too)."""
    marker = path / CHECKPOINT_MARKER
    if marker.exists():
        try:
            record = json.loads(marker.read_text())
            sizes = {str(name): int(size) for name, size in record["files"].items()}
            recorded = read_sums(record["sums"]) if "sums" in record else {}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise IncompleteCheckpoint(path, f"the checkpoint marker {marker} is damaged ({e})") from e
        for name, size in sizes.items():
            f = path / name
            if not f.exists() or f.stat().st_size != size:
                have = f.stat().st_size if f.exists() else "missing"
                raise IncompleteCheckpoint(
                    path, f"the checkpoint at {path} is incomplete: {name} is {have} bytes, {size} expected")
        changed = differences(path, recorded, full)
        if changed:
            raise IncompleteCheckpoint(path, f"the checkpoint at {path} is damaged: {'; '.join(changed)}")
        _note_verified(path, record, recorded)
    for f in sorted(path.glob("*.safetensors")):
        promised = _safetensors_size(f)
        if promised is None or f.stat().st_size < promised:
            why = "its header is unreadable" if promised is None else f"its header promises {promised}"
            raise IncompleteCheckpoint(path, f"the checkpoint at {path} is incomplete: {f.name} is "
                                             f"{f.stat().st_size} bytes and {why}")


def _note_verified(path: Path, record: dict, recorded: dict) -> None:
    """After a copy every file's modification time differs, so every cheap check would hash it; once the
    hashes matched, the marker takes the new times (best effort: a read-only folder stays as it is)."""
    now = moved(path, recorded)
    if now == recorded or not ranks.is_main():
        return
    try:
        tmp = path / f".{CHECKPOINT_MARKER}.tmp"
        tmp.write_text(json.dumps({**record, "sums": sums_json(now)}, indent=1))
        os.replace(tmp, path / CHECKPOINT_MARKER)
    except OSError:
        pass


def _adapter_base(adapter_dir: Path, full: bool = False) -> Path:
    """The base model directory a LoRA adapter names (a relative name counts from the adapter's folder)."""
    from peft import PeftConfig

    ref = PeftConfig.from_pretrained(adapter_dir).base_model_name_or_path
    if not ref:
        raise FileNotFoundError(f"the adapter at {adapter_dir} does not name its base model "
                                f"(base_model_name_or_path is empty in adapter_config.json)")
    if source_of(ref) is None and not Path(ref).is_absolute() and (adapter_dir / ref).is_dir():
        ref = adapter_dir / ref
    return resolve(ref, full)


def torch_dtype(runtime: Runtime) -> torch.dtype | str:
    return "auto" if runtime.dtype == "auto" else _DTYPES[runtime.dtype]


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def quantization_config(path: Path, runtime: Runtime):
    """bitsandbytes' settings for `runtime.quantization` (4bit: NF4 with double quantization, QLoRA's),
    computing in the run's dtype (auto: the checkpoint's); a clear error where bitsandbytes is missing."""
    from transformers import BitsAndBytesConfig
    from transformers.utils import is_bitsandbytes_available

    if not is_bitsandbytes_available():
        raise ValueError(f"runtime.quantization {runtime.quantization} loads through bitsandbytes, which is not "
                         f"installed (or does not work on this machine): pip install bitsandbytes (or pip install "
                         f"'vlalign[qlora]'), or set quantization: null")
    dtype = torch_dtype(runtime)
    if dtype == "auto":
        saved = json.loads((path / "config.json").read_text()).get("dtype") or "float32"
        dtype = _DTYPES.get(saved, torch.float32)
    if runtime.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype, bnb_4bit_quant_storage=dtype)


def _from_pretrained(path: Path, runtime: Runtime):
    kwargs: dict = {"dtype": torch_dtype(runtime), "trust_remote_code": runtime.trust_remote_code,
                    "use_safetensors": True}
    if runtime.attn_implementation:
        kwargs["attn_implementation"] = runtime.attn_implementation
    if runtime.device_map:
        kwargs["device_map"] = runtime.device_map
    if runtime.quantization:  # a quantized model is placed as it loads: it cannot be moved afterwards
        kwargs["quantization_config"] = quantization_config(path, runtime)
        kwargs.setdefault("device_map", {"": runtime.device or default_device()})
    return AutoModelForImageTextToText.from_pretrained(path, **kwargs)


def load(path: str | Path, runtime: Runtime | None = None, **overrides) -> tuple[Model, Processor]:
    """(model, processor) in eval mode. LoRA adapter directories load onto their base model. `overrides`
    change single runtime settings (`load(path, dtype="fp32", device="cpu")`)."""
    runtime = (runtime or Runtime()).with_(**overrides)
    p = resolve(path, full=True)  # the load reads every byte anyway: each recorded file is hashed
    if (p / "adapter_config.json").exists():
        from peft import PeftModel

        base = _adapter_base(p, full=True)
        model = PeftModel.from_pretrained(_from_pretrained(base, runtime), p)
        processor_dir = p if (p / "processor_config.json").exists() else base
    else:
        model = _from_pretrained(p, runtime)
        processor_dir = p
    processor = configure(load_processor(processor_dir, runtime.trust_remote_code), runtime)
    if not runtime.device_map and not runtime.quantization:
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
    marker = {"files": files, "sums": sums_json(sums(tmp, list(files)))}
    (tmp / CHECKPOINT_MARKER).write_text(json.dumps(marker, indent=1))
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out
