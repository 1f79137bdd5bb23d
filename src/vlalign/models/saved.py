"""One contract for every trained model vlalign saves (`vlalign run`'s rounds and arms, `vlalign dpo`,
`vlalign merge`): a folder holding

    policy/    the whole model, LoRA merged in, in the dtype the run loaded the policy in, with its processor
    adapter/   with LoRA: the adapter (stacked onto the earlier rounds' where a run has them), with the dtype
               its merge is made in (`vlalign_adapter.json`), so `vlalign merge adapter/` rebuilds policy/

The merge is peft's, on the base as the run loaded it: merging the saved adapter of a first round (or of
`vlalign dpo`) into the same base in the recorded dtype gives `policy/` to the bit. A quantized (QLoRA)
policy is merged into its base loaded unquantized, in the run's dtype, and loaded back quantized for what
comes next, as the next round loads it.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch

from vlalign import ranks
from vlalign.models.load import load, save
from vlalign.models.lora import is_quantized, save_stacked_adapter
from vlalign.models.paths import require_adapter
from vlalign.models.settings import Runtime

ADAPTER_RECORD = "vlalign_adapter.json"
POLICY, ADAPTER = "policy", "adapter"
_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def dtype_of(model) -> str:
    """The dtype the model was loaded in (its config's: training may upcast some weights, quantization others)."""
    dtype = getattr(model.config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    return _NAMES.get(dtype, "fp32")


def recorded_dtype(adapter: str | Path) -> str | None:
    """The dtype a saved adapter's run merged it in (None for an adapter saved elsewhere)."""
    record = Path(adapter) / ADAPTER_RECORD
    return json.loads(record.read_text()).get("dtype") if record.exists() else None


def _save_adapter(model, out: Path, stack_onto: Path | None, dtype: str) -> None:
    save_stacked_adapter(model, out, stack_onto)
    (out / ADAPTER_RECORD).write_text(json.dumps({"dtype": dtype, "stacked_onto": str(stack_onto) if stack_onto
                                                  else None}, indent=1))


def save_trained(model, processor, folder: str | Path, runtime: Runtime | None = None,
                 stack_onto: str | Path | None = None):
    """Save a trained model as `folder/policy` (and `folder/adapter` when it is a LoRA model, stacked onto
    `stack_onto`), by the main process; returns the model every process goes on with: the merged one."""
    folder, runtime = Path(folder), runtime or Runtime()
    if hasattr(model, "merge_and_unload"):
        dtype = dtype_of(model)
        adapter = folder / ADAPTER
        ranks.on_main(lambda: _save_adapter(model, adapter, Path(stack_onto) if stack_onto else None, dtype))
        if is_quantized(model):
            return _merged_from_disk(adapter, processor, folder / POLICY, runtime, dtype)
        model = model.merge_and_unload()
    ranks.on_main(lambda: save(model, processor, folder / POLICY))
    return model


def _merged_from_disk(adapter: Path, processor, out: Path, runtime: Runtime, dtype: str):
    """A quantized model's adapter merged into its base loaded unquantized, saved; then loaded back as the run
    loads its policy (quantized)."""
    def merge_and_save() -> None:
        merged = load(adapter, replace(runtime, dtype=dtype, quantization=None))[0]
        save(merged.merge_and_unload(), processor, out)

    ranks.on_main(merge_and_save)
    return load(out, runtime)[0]


def merge(adapter: str | Path, out: str | Path, dtype: str | None = None) -> Path:
    """`vlalign merge`: a saved adapter merged into its base, as `out/policy` in the dtype its run recorded
    (else `dtype`, else the base's own), with the adapter copied to `out/adapter`."""
    adapter, out = Path(adapter), Path(out)
    require_adapter(adapter)
    dtype = dtype or recorded_dtype(adapter) or "auto"
    model, processor = load(adapter, Runtime(dtype=dtype))
    if (out / ADAPTER).resolve() != adapter.resolve():
        shutil.rmtree(out / ADAPTER, ignore_errors=True)
        shutil.copytree(adapter, out / ADAPTER)
        if recorded_dtype(out / ADAPTER) is None:
            (out / ADAPTER / ADAPTER_RECORD).write_text(json.dumps({"dtype": dtype_of(model)}, indent=1))
    save(model.merge_and_unload(), processor, out / POLICY)
    return out
