"""Model references without torch: what a `policy:`, `labeler:` or `judge:` string names, checked in the time a
config takes to parse, so a wrong path is reported with the typos and before any model library loads.

A reference is a local directory saved with `save_pretrained` (a model: config.json; a LoRA adapter:
adapter_config.json), `<source>:<name>` for a model a plugin provides (`world:base`), or, where the setting
allows it, `api:MODEL[@URL]` (checked when the run starts: it needs the network) and `self` (the policy).
"""

from __future__ import annotations

import json
from pathlib import Path

from vlalign.plugins import MODEL_SOURCES

API = "api:"


def source_of(ref: str) -> tuple[str, str] | None:
    """(source, name) when `ref` names a plugin's model (`world:base`), else None (a path)."""
    prefix, sep, rest = str(ref).partition(":")
    if sep and len(prefix) > 1 and "/" not in prefix and prefix in MODEL_SOURCES:
        return prefix, rest
    return None


def model_dir(ref: str | Path) -> Path:
    """The directory behind a model reference, or `FileNotFoundError` naming it and what a model directory
    holds. Nothing is downloaded."""
    found = source_of(str(ref))
    if found is not None:
        source, name = found
        return Path(MODEL_SOURCES.get(source)(name))
    p = Path(ref).expanduser().absolute()
    if not ((p / "config.json").exists() or (p / "adapter_config.json").exists()):
        sources = ", ".join(f"{s}:NAME" for s in MODEL_SOURCES.names())
        raise FileNotFoundError(
            f"no model at {p} (no config.json or adapter_config.json there). Pass a local model directory "
            f"saved with save_pretrained{', or ' + sources if sources else ''}. Nothing is downloaded from a hub.")
    return p


def reference_problem(key: str, ref: str | None) -> str | None:
    """Why the model reference of setting `key` cannot be loaded (None when it can, or is checked later:
    `api:` backends and `self`)."""
    if ref is None or ref == "self" or str(ref).startswith(API):
        return None
    try:
        model_dir(ref)
    except (FileNotFoundError, ValueError) as e:
        return f"{key}: {e}"
    return None


def require_adapter(path: str | Path) -> None:
    """A `ValueError` unless `path` holds a LoRA adapter (what `vlalign merge` folds into its base)."""
    if not (Path(path) / "adapter_config.json").exists():
        raise ValueError(f"{path} is not a LoRA adapter (no adapter_config.json there); it needs no merge")


def token_count(ref: str, text: str) -> int:
    """How many tokens `text` is to a local model, by its own tokenizer.json (the `tokenizers` library, no
    torch); its words where the model has no such file."""
    try:
        from tokenizers import Tokenizer

        return len(Tokenizer.from_file(str(model_dir(ref) / "tokenizer.json")).encode(text).ids)
    except Exception:  # no tokenizer.json, or one this library cannot read: words are a lower bound
        return len(text.split())


def context_length(ref: str) -> int | None:
    """The longest sequence a local model reads, from its config.json (its text model's
    max_position_embeddings); None when it does not say or is not a local model."""
    try:
        config = json.loads((model_dir(ref) / "config.json").read_text())
    except (FileNotFoundError, ValueError, OSError):
        return None
    for part in (config.get("text_config") or {}, config):
        n = part.get("max_position_embeddings")
        if isinstance(n, int):
            return n
    return None
