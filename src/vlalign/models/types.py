"""The names the spine uses for a loaded model and its processor, for type checking only (nothing here
imports torch, so the modules that name them stay light)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, ProcessorMixin

Model: TypeAlias = "PreTrainedModel | PeftModel"  # a VLM, or one wrapped in LoRA adapters
Processor: TypeAlias = "ProcessorMixin"  # its processor (tokenizer, image processor, chat template)
