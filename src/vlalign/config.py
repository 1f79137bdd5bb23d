"""Configs as data: a YAML file (or a dict) becomes a nested dataclass, and back.

Every recipe (`RLAIFVConfig`, `SilkieConfig`, `POVIDConfig`, ...) is a plain dataclass whose fields may be
dataclasses themselves; `from_dict` fills only the keys given, keeps the defaults for the rest, and names
the full path of a key it does not know, with the keys it does.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _dataclass_type(annotation: Any) -> type | None:
    """The dataclass inside an annotation such as `LoraSettings | None`, if any."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def from_dict(cls: type[T], data: dict | None, where: str = "") -> T:
    """`cls` with the values in `data` (nested dicts become nested dataclasses); unknown keys are errors."""
    data = data or {}
    if not isinstance(data, dict):
        raise ValueError(f"{where or cls.__name__}: expected a mapping of settings, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        path = ", ".join(f"{where}.{k}" if where else k for k in unknown)
        raise ValueError(f"unknown setting {path} for {cls.__name__}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        inner = _dataclass_type(hints[key])
        if inner is not None and isinstance(value, dict):
            value = from_dict(inner, value, f"{where}.{key}" if where else key)
        elif isinstance(value, list) and typing.get_origin(hints[key]) is tuple:
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def load_config(cls: type[T], path: str | Path | None, overrides: dict | None = None) -> T:
    """A config from a YAML file (missing keys keep their defaults), then `overrides` on top."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from e
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return from_dict(cls, data, where="")


def to_dict(config: Any) -> dict:
    """The config as plain data (YAML-ready)."""
    return dataclasses.asdict(config)
