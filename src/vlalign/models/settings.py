"""How a model is loaded, prompted and decoded, as data (no torch here, so configs validate in an instant)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar

from vlalign.config import Alias

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")
QUANTIZATIONS = ("4bit", "8bit")


def _switch(on: str, keep_when_off: bool):
    """A true/false flag (TRL's `bf16: true`, `load_in_4bit: true`) as the value `on`; false keeps the setting
    as it was (`keep_when_off`) or turns it off (null)."""
    def convert(value: Any, current: Any) -> Any:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return on if value else (current if keep_when_off else None)
    return convert


RUNTIME_ALIASES: dict[str, Alias] = {
    "torch_dtype": Alias("dtype"),
    "bf16": Alias("dtype", _switch("bf16", True), "true: dtype bf16"),
    "fp16": Alias("dtype", _switch("fp16", True), "true: dtype fp16"),
    "load_in_4bit": Alias("quantization", _switch("4bit", False), "true: quantization 4bit (QLoRA with train.lora)"),
    "load_in_8bit": Alias("quantization", _switch("8bit", False), "true: quantization 8bit"),
    "cutoff_len": Alias("max_length", tool="LLaMA-Factory"),
}


@dataclass(frozen=True)
class Runtime:
    """Runtime settings of one model of a run (the policy's; the labeler, judge and pool take their own)."""

    ALIASES: ClassVar[dict[str, Alias]] = RUNTIME_ALIASES

    dtype: str = "auto"  # auto (the checkpoint's own), bf16, fp16 or fp32; trained models are saved in it
    device: str | None = None  # cpu, cuda, cuda:1, mps; null: cuda when there is one, else cpu
    device_map: str | None = None  # e.g. auto: spread a large model over the GPUs (then device is ignored)
    attn_implementation: str | None = None  # sdpa, eager, flash_attention_2; null: transformers' default
    gradient_checkpointing: bool = False  # recompute activations in training: less memory, more time
    quantization: str | None = None  # 4bit (NF4, double quantization; QLoRA with train.lora) or 8bit through bitsandbytes; null: none. Trained models are saved unquantized, in dtype
    max_length: int | None = None  # longest row in tokens: answers are cut to fit, image tokens never are
    max_prompt_length: int | None = None  # longest prompt in tokens, image tokens included: a longer instruction loses its first tokens (TRL's keep_end); image tokens are never cut
    max_completion_length: int | None = None  # longest answer in tokens (its EOS included) in a scored or trained row; longer answers are cut
    trust_remote_code: bool = False  # run a checkpoint's own Python code (only for checkpoints you trust)
    system_prompt: str | None = None  # a system message before every prompt (where the chat template has one)
    chat_template: str | None = None  # replaces the checkpoint's chat template: the name of one of the processor's own templates, a .jinja file, or Jinja text

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be 4bit, 8bit or null, got {self.quantization!r}")
        for name in ("max_length", "max_prompt_length", "max_completion_length"):
            value = getattr(self, name)
            if value is not None and value < (8 if name == "max_length" else 1):
                raise ValueError(f"{name} must be at least {8 if name == 'max_length' else 1} tokens, got {value}")

    def with_(self, **changes) -> Runtime:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


@dataclass(frozen=True)
class Decoding:
    """Decoding settings; temperature 0 means greedy."""

    max_new_tokens: int = 96  # longest answer, in tokens
    temperature: float = 0.0  # 0: greedy; above 0: sampling, one recorded seed per sample
    top_p: float = 1.0  # nucleus sampling: keep the smallest set of tokens with this much probability

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class LoraSettings:
    """A LoRA adapter through peft (the base weights stay frozen)."""

    r: int = 8  # rank of the update matrices
    alpha: int = 16  # scaling: the update is multiplied by alpha / r
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: tuple[str, ...] | None = None  # module names to adapt; null: the family's decoder projections (README: model families)
    modules_to_save: tuple[str, ...] | None = None  # modules trained in full and saved with the adapter (e.g. lm_head)

    def __post_init__(self) -> None:
        if self.r < 1 or self.alpha < 1:
            raise ValueError(f"LoRA r and alpha must be at least 1, got r={self.r}, alpha={self.alpha}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class ChatDecoding:
    """How a chat judge answers the requests a run sends it (ratings, claim lists, injected answers)."""

    max_tokens: int | None = None  # longest reply, in tokens (null: the task's own: 1024 for VLFeedback's rubric, 64 per answer, 512 for claims and injections)
    temperature: float | None = None  # null: the task's own (greedy); above 0: sampled replies

    def __post_init__(self) -> None:
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {self.max_tokens}")
        if self.temperature is not None and self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
