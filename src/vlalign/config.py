"""Configs as data: a YAML file (or a dict) plus `key.sub=value` overrides becomes a nested dataclass.

Every recipe is a plain dataclass whose fields may be dataclasses, lists or dicts of them. `from_dict`
fills the keys given, keeps the defaults for the rest, and checks everything before it returns: unknown
keys, wrong types and values a dataclass refuses in `__post_init__` are all reported at once, each with
its full path. Nothing here imports torch, so a typo is reported in a fraction of a second.

A dataclass may name a `SHORTHAND` field: a bare value then stands for that field (`eval: [world]` is
`eval: [{name: world}]`). The comment on a field's line (or the comment lines right above it) is its
documentation: `describe(cls)` prints the whole config as YAML with those comments.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import operator
import textwrap
import tokenize
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Alias:
    """Another tool's name for a setting (TRL's `learning_rate` for `optim.lr`): `path` is the setting, dotted
    from the class that declares the alias in its `ALIASES`; `convert(value, current)` turns the other tool's
    value into this one's, given the setting's value so far (a loss term merges into the loss); `note` says
    where the meanings differ."""

    path: str
    convert: typing.Callable[[Any, Any], Any] | None = None
    note: str = ""
    tool: str = "TRL"


def prefixed(aliases: dict[str, Alias], prefix: str) -> dict[str, Alias]:
    """`aliases` of a nested setting, as seen from the class holding it under `prefix`."""
    return {k: dataclasses.replace(a, path=f"{prefix}.{a.path}") for k, a in aliases.items()}


class ConfigError(ValueError):
    """Every problem of a config at once, one line each, with the path of the key."""

    def __init__(self, problems: list[str], source: str = "", config: Any = None):
        self.problems, self.config = problems, config  # config: what parsed, broken keys at their defaults
        head = f"{source}: " if source else ""
        super().__init__(head + f"{len(problems)} problem(s) in the config:\n" + "\n".join(f"  - {p}" for p in problems))


def _join(where: str, key: Any) -> str:
    return f"{where}.{key}" if where else str(key)


def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without None, whether None is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        allows_none = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else functools.reduce(operator.or_, args)), allows_none
    return annotation, annotation is Any


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


class _Checker:
    """Converts plain data to the annotated type, collecting problems instead of stopping at the first."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.partial: Any = None  # the top-level dataclass as far as it parsed (broken keys at their defaults)

    def fail(self, where: str, message: str) -> Any:
        self.problems.append(f"{where or '(top)'}: {message}")
        return _MISSING

    def value(self, annotation: Any, value: Any, where: str, base: Any = None) -> Any:
        """`value` as `annotation`; `base` is what a nested dataclass's keys left out keep (its current value)."""
        annotation, allows_none = _optional(annotation)
        if value is None:
            return None if allows_none else self.fail(where, f"must be set (a {_type_name(annotation)}), got null")
        origin = typing.get_origin(annotation)
        if dataclasses.is_dataclass(annotation):
            return self.dataclass(annotation, value, where, base if isinstance(base, annotation) else None)
        if origin is typing.Union or origin is types.UnionType:
            for option in typing.get_args(annotation):
                trial = _Checker()
                out = trial.value(option, value, where)
                if not trial.problems:
                    return out
            return self.fail(where, f"expected {_type_name(annotation)}, got {value!r}")
        if origin is typing.Literal:
            choices = typing.get_args(annotation)
            return value if value in choices else self.fail(where, f"must be one of {list(choices)}, got {value!r}")
        if origin in (list, tuple):
            if not isinstance(value, (list, tuple)):
                return self.fail(where, f"expected a list, got {type(value).__name__} {value!r}")
            inner = (typing.get_args(annotation) or (Any,))[0]
            items = [self.value(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
        if origin is dict or annotation is dict:
            if not isinstance(value, dict):
                return self.fail(where, f"expected a mapping, got {type(value).__name__} {value!r}")
            inner = typing.get_args(annotation)[1] if typing.get_args(annotation) else Any
            return {k: self.value(inner, v, _join(where, k)) for k, v in value.items()}
        return self.scalar(annotation, value, where)

    def scalar(self, annotation: Any, value: Any, where: str) -> Any:
        if annotation is Any:
            return value
        if annotation is bool:
            return value if isinstance(value, bool) else self.fail(where, f"expected true or false, got {value!r}")
        if annotation is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
            return value if ok else self.fail(where, f"expected an integer, got {value!r}")
        if annotation is float:
            if isinstance(value, str):  # YAML reads 1e-3 (no dot) as a string
                try:
                    return float(value)
                except ValueError:
                    pass
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            return float(value) if ok else self.fail(where, f"expected a number, got {value!r}")
        if annotation is str:
            return value if isinstance(value, str) else self.fail(where, f"expected a string, got {value!r}")
        if isinstance(annotation, type):
            return value if isinstance(value, annotation) else self.fail(
                where, f"expected {annotation.__name__}, got {value!r}")
        return value

    def dataclass(self, cls: type, data: Any, where: str, base: Any = None) -> Any:
        """`cls` from the keys in `data`; the others keep `base`'s values (or the class defaults), and a nested
        dataclass given in part keeps the rest of its own current value, so `train: {beta: 0.2}` changes
        beta and nothing else of the method's training recipe. Mappings that are values (a loss, a mix)
        are replaced whole."""
        if isinstance(data, cls):
            return data
        shorthand = getattr(cls, "SHORTHAND", None)
        if shorthand is not None and not isinstance(data, dict):
            data = {shorthand: data}
        if not isinstance(data, dict):
            return self.fail(where, f"expected a mapping of {cls.__name__} settings, got {type(data).__name__} {data!r}")
        hints = typing.get_type_hints(cls)
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        current = base if base is not None else _defaults(cls)
        data = self.aliases(cls, data, where, current)
        unknown = [k for k in data if k not in names]
        for key in unknown:
            self.fail(_join(where, key), f"unknown setting for {cls.__name__}; known: {', '.join(names)}")
        before = len(self.problems)
        kwargs = {k: self.value(hints[k], v, _join(where, k), current.get(k) if isinstance(current, dict)
                                else getattr(current, k)) for k, v in data.items() if k in names}
        if base is not None:
            kwargs = {**{k: getattr(base, k) for k in names if k not in data}, **kwargs}
        broken = len(self.problems) > before or bool(unknown)
        try:  # a field that failed takes its default, so the checks of the others still run
            out = cls(**{k: v for k, v in kwargs.items() if v is not _MISSING})
        except (ValueError, TypeError) as e:
            return self.fail(where, str(e))
        if not where:
            self.partial = out
        return _MISSING if broken else out

    def aliases(self, cls: type, data: dict, where: str, current: Any) -> dict:
        """`data` with every alias `cls.ALIASES` knows replaced by the setting it stands for (in the order the
        aliases are declared, so a later one sees what an earlier one set); an alias given beside its setting
        is a problem."""
        known: dict[str, Alias] = getattr(cls, "ALIASES", {})
        given = [k for k in known if k in data]
        if not given:
            return data
        out = _deep_copy(data)
        for key in given:
            alias, value = known[key], out.pop(key)
            path = alias.path.split(".")
            if alias.convert is None and _get(data, path) is not _MISSING:
                self.fail(_join(where, key), f"{alias.tool}'s name for {_join(where, alias.path)}, which is set "
                                             f"too; keep one of them")
                continue
            if alias.convert is not None:
                so_far = _get(out, path)
                try:
                    value = alias.convert(value, _attr(current, path) if so_far is _MISSING else so_far)
                except (ValueError, TypeError, KeyError) as e:
                    self.fail(_join(where, key), f"({alias.tool}'s name for {alias.path}) {e}")
                    continue
            node = out
            for part in path[:-1]:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    self.fail(_join(where, key), f"{_join(where, alias.path)} is set to a value that is not a mapping")
                    break
            else:
                node[path[-1]] = value
        return out


def _deep_copy(data: dict) -> dict:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in data.items()}


def _get(data: Any, path: list[str]) -> Any:
    """The value at a dotted path in nested dicts, or _MISSING."""
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _attr(obj: Any, path: list[str]) -> Any:
    """The value at a dotted path of a dataclass (or a dict of defaults); None where the path ends early."""
    for part in path:
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _defaults(cls: type) -> dict[str, Any]:
    """The default value of every field of `cls` that has one."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def from_dict(cls: type[T], data: dict | None, where: str = "", source: str = "", base: T | None = None) -> T:
    """`cls` built from `data` on top of `base` (default: the class defaults), or a `ConfigError` listing every
    unknown key, wrong type and refused value."""
    checker = _Checker()
    out = checker.dataclass(cls, data or {}, where, base)
    if checker.problems:
        raise ConfigError(checker.problems, source, checker.partial)
    return out


def parse_overrides(overrides: list[str] | tuple[str, ...]) -> dict:
    """`["dpo.beta=0.2", "eval=[world]"]` as a nested dict; each value is read as YAML."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError([f"override {item!r}: write KEY=VALUE, e.g. train.beta=0.2 or rounds=2"])
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError([f"override {item!r}: the value is not valid YAML ({e})"]) from e
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError([f"override {item!r}: {part} is set to a value and also used as a mapping"])
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from e
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping of settings at the top, got {type(data).__name__}"], str(path))
    data.pop("method", None)  # a recipe names its method (`vlalign.recipes`); the method's config does not hold it
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | list[str] | None = None) -> T:
    """A config from a YAML file (missing keys keep their defaults), with overrides on top: a nested dict,
    or `key.sub=value` strings."""
    data = read_yaml(path) if path is not None else {}
    if isinstance(overrides, (list, tuple)):
        overrides = parse_overrides(overrides)
    problems: list[str] = []
    try:
        config = from_dict(cls, data, source=str(path or ""))
    except ConfigError as e:
        problems, config = e.problems, e.config
    if overrides:
        try:
            config = from_dict(cls, overrides, base=config)
        except ConfigError as e:
            problems += [f"(override) {p}" for p in e.problems]
            config = e.config if e.config is not None else config
    if problems:
        raise ConfigError(problems, str(path or ""), config)
    return config


def to_dict(config: Any) -> Any:
    """The config as plain data (YAML- and JSON-ready): dataclasses to dicts, tuples to lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config


# ---- documentation: the comments next to the fields ----

@functools.cache
def _own_comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line(s), or the comment lines right above it, in `cls`'s own source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
    lines = source.splitlines()
    out: dict[str, str] = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            inline = [comments[n] for n in range(node.lineno, (node.end_lineno or node.lineno) + 1) if n in comments
                      and not lines[n - 1].lstrip().startswith("#")]
            above: list[str] = []
            n = node.lineno - 1
            while n in comments and lines[n - 1].lstrip().startswith("#"):
                above.insert(0, comments[n])
                n -= 1
            text = " ".join(above + inline)
            if text:
                out[node.target.id] = text
    return out


def field_comments(cls: type) -> dict[str, str]:
    """The documentation of every field of `cls`, from the class that declares it last (subclasses may
    redeclare a field with a new default and a new comment)."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            out.update(_own_comments(klass))
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _scalar_yaml(value: Any) -> str:
    return yaml.safe_dump(to_dict(value), default_flow_style=True, width=10_000, sort_keys=False).strip().removesuffix(
        "\n...").strip()


def _lines(value: Any, cls: type | None, indent: int) -> list[str]:
    """YAML lines of a dataclass instance's fields, each with its comment."""
    pad = " " * indent
    comments = field_comments(cls) if cls is not None else {}
    hints = typing.get_type_hints(cls) if cls is not None else {}
    out: list[str] = []
    for f in dataclasses.fields(value):
        if not f.init:
            continue
        v = getattr(value, f.name)
        note = comments.get(f.name, "")
        inner, _ = _optional(hints.get(f.name, Any))
        if dataclasses.is_dataclass(v):
            out.append(f"{pad}{f.name}:" + (f"  # {note}" if note else ""))
            out += _lines(v, type(v), indent + 2)
        elif isinstance(v, (list, tuple)) and v and all(dataclasses.is_dataclass(i) for i in v):
            out.append(f"{pad}{f.name}:" + (f"  # {note}" if note else ""))
            for item in v:
                item_lines = _lines(item, type(item), indent + 4)
                out.append(f"{pad}  - {item_lines[0].lstrip()}")
                out += item_lines[1:]
        else:
            text = _scalar_yaml(v) if v is not None or inner is not Any else "null"
            out.append(f"{pad}{f.name}: {text}" + (f"  # {note}" if note else ""))
    return out


def describe(config: Any) -> str:
    """The config as YAML, every key with its value and its comment (`vlalign config show`)."""
    return "\n".join(_lines(config, type(config), 0)) + "\n"


def alias_table(cls: type) -> str:
    """The other tools' names `cls` accepts (its `ALIASES`), as a Markdown table for docs/configs.md."""
    rows = "".join(f"| `{name}` | {a.tool} | `{a.path}` | {a.note} |\n" for name, a in getattr(cls, "ALIASES", {}).items())
    return ("## Other tools' names\n\nKeys a TRL or LLaMA-Factory user knows, accepted at the top of any method's "
            "config (and inside `train:` for the training ones, inside `runtime:` for the runtime ones) and "
            "written into the key they stand for; giving a name and its key together is an error.\n\n"
            "| name | tool | key | note |\n|---|---|---|---|\n" + rows)


def undocumented(cls: type, where: str = "") -> list[str]:
    """Paths of the fields (nested dataclasses included) that have no comment: `describe` should explain all."""
    missing = []
    comments = field_comments(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        path = _join(where, f.name)
        if f.name not in comments:
            missing.append(path)
        inner, _ = _optional(hints[f.name])
        if typing.get_origin(inner) in (list, tuple):
            inner = (typing.get_args(inner) or (Any,))[0]
        if dataclasses.is_dataclass(inner):
            missing += undocumented(inner, path)
    return missing
