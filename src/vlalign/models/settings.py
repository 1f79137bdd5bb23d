"""How a model is loaded, prompted and decoded, as data (no torch here, so configs validate in an instant)."""

from __future__ import annotations

from dataclasses import dataclass, replace

DTYPES = ("auto", "float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


@dataclass(frozen=True)
class Runtime:
    """Runtime settings of one model of a run (the policy's; the labeler, judge and pool take their own)."""

    dtype: str = "auto"  # auto (the checkpoint's own), bf16, fp16 or fp32
    device: str | None = None  # cpu, cuda, cuda:1, mps; null: cuda when there is one, else cpu
    device_map: str | None = None  # e.g. auto: spread a large model over the GPUs (then device is ignored)
    attn_implementation: str | None = None  # sdpa, eager, flash_attention_2; null: transformers' default
    gradient_checkpointing: bool = False  # recompute activations in training: less memory, more time
    max_length: int | None = None  # longest row in tokens: answers are cut to fit, image tokens never are
    trust_remote_code: bool = False  # run a checkpoint's own Python code (only for checkpoints you trust)
    system_prompt: str | None = None  # a system message before every prompt (where the chat template has one)
    chat_template: str | None = None  # a Jinja chat template that replaces the checkpoint's

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.max_length is not None and self.max_length < 8:
            raise ValueError(f"max_length must be at least 8 tokens, got {self.max_length}")

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
