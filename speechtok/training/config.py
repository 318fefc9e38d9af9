"""Trainer configs: YAML read into dataclasses. Every mistake is one line naming the file and the key.

One path rule: a relative path in a config file is relative to that file's folder. Fields declare what
they hold with `field(metadata=...)`: `min` (smallest allowed number), `path` ("input": must exist,
"output")."""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from dataclasses import MISSING, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A mistake in a config: the message names the file and the key."""


def at_least(default: Any, lo: float) -> Any:
    """A numeric field that must be ≥ lo."""
    return field(default=default, metadata={"min": lo})


def more_than(default: Any, lo: float) -> Any:
    """A numeric field that must be > lo."""
    return field(default=default, metadata={"above": lo})


def sizes_field(keys: dict, notes: tuple[str, ...] = ()) -> Any:
    """A mapping of model sizes, {} by default: `--print-config` shows `keys` (each with its default) and
    `notes` (comment lines: keys whose default is computed, or that depend on another key)."""
    return field(default_factory=dict, metadata={"keys": keys, "notes": notes})


def path_field(kind: str, default: Any = MISSING, **kw) -> Any:
    """A path (or list of paths) field: kind "input" must exist, "output" is written."""
    if default is MISSING and "default_factory" not in kw:
        return field(metadata={"path": kind})
    return field(default=default, metadata={"path": kind}, **kw)


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, but a key given twice in one mapping is an error (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    line = first.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: SafeLoader refuses it itself
                    continue
                if line != key_node.start_mark.line + 1:
                    why = f"duplicate key {key!r}, first on line {line}"
                    raise yaml.constructor.ConstructorError(problem=why, problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    """The YAML mapping in `path`; broken YAML (a duplicate key included) is a ConfigError with the line."""
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise ConfigError(f"{path}: {where}not valid YAML ({getattr(e, 'problem', None) or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, found {type(raw).__name__}")
    return raw


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for t in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, t, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} is none of {tp}")
    if tp is Any:
        return _finite(value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, not {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, not {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # `.inf` / `.nan` would train to NaN weights
                raise ConfigError(f"{where}: must be a finite number, not {value!r}")
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string: take it as the number meant
            try:
                x = float(value)
            except ValueError:
                pass
            else:
                if math.isfinite(x):
                    return x
        raise ConfigError(f"{where}: expected a number, not {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, not {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, not {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, not {len(value)}")
            return tuple(_coerce(v, t, where) for v, t in zip(value, args))
        return type(value)(_coerce(v, args[0], where) for v in value) if args else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, not {value!r}")
        if not args:
            return _finite(dict(value), where)
        return {_coerce(k, args[0], where): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, not {value!r}")
        return value  # built by build()
    return value


def _finite(value: Any, where: str) -> Any:
    """`value` when no float inside it (a free-form mapping or list too) is infinite or NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, not {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _finite(v, where)
    return value


def build(cls: type, raw: dict, path: str | Path, section: str = "",
          given_as: dict[str, str] | None = None) -> Any:
    """`cls(**raw)` with every key checked: unknown keys, wrong types, numbers below a field's `min`,
    missing input paths; relative paths resolved against the config file's folder. `given_as` names where
    a top-level key came from when not from the file (e.g. {"steps": "command line: --steps"})."""
    path = Path(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {section.rstrip('.') or 'config'}: expected a mapping, not {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.init}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{path}: {section}{key}: unknown key (known: {', '.join(sorted(known))})")
    values = {}
    for name, f in known.items():
        where = (given_as or {}).get(name) or f"{path}: {section}{name}"
        if name not in raw:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(f"{where}: missing (required)")
            continue
        tp = hints[name]
        value = _coerce(raw[name], tp, where)
        if is_dataclass(tp):
            value = build(tp, value, path, f"{section}{name}.")
        lo = f.metadata.get("min")
        if lo is not None and value is not None and value < lo:
            raise ConfigError(f"{where}: must be at least {lo}, not {value}")
        above = f.metadata.get("above")
        if above is not None and value is not None and not value > above:
            raise ConfigError(f"{where}: must be more than {above}, not {value}")
        kind = f.metadata.get("path")
        if kind and value is not None:
            value = [resolve(v, path, kind, where) for v in value] if isinstance(value, list) \
                else resolve(value, path, kind, where)
        values[name] = value
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{path}: {section}{e}") from None


def resolve(value: str, config: Path, kind: str, where: str) -> str:
    """The path rule: relative to the config file's folder. Inputs must exist."""
    p = Path(value).expanduser()
    p = p if p.is_absolute() else config.parent / p
    if kind == "input" and not p.exists():
        raise ConfigError(f"{where}: {p} does not exist")
    return str(p)


def default_yaml(cls: type) -> str:
    """Every key of the config dataclass `cls` with its default (and its comment in the source), as YAML;
    required keys are listed as comments. Generated from the dataclass, so it cannot go stale."""
    return "\n".join(_default_lines(cls, "")) + "\n"


def _default_lines(cls: type, pad: str) -> list[str]:
    try:
        notes = dict(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(cls), re.M))
    except (OSError, TypeError):
        notes = {}
    hints, required, lines = typing.get_type_hints(cls), [], []
    for f in (f for f in fields(cls) if f.init):
        note = f"  # {notes[f.name]}" if f.name in notes else ""
        if f.default is MISSING and f.default_factory is MISSING:
            tp = hints[f.name]
            required.append(f"{pad}# {f.name}: required ({tp if typing.get_args(tp) else tp.__name__})"
                            f"{' — ' + notes[f.name] if f.name in notes else ''}")
            continue
        value = f.default if f.default is not MISSING else f.default_factory()
        if "keys" in f.metadata:  # model sizes: each key with its default
            keys, notes = f.metadata["keys"], f.metadata["notes"]
            lines.append(f"{pad}{f.name}:{note}" if keys else f"{pad}{f.name}: {{}}{note}")
            lines += [f"{pad}  {k}: {flow_yaml(v)}" for k, v in keys.items()]
            lines += [f"{pad}  # {n}" for n in notes]
            continue
        if is_dataclass(value):
            lines += [f"{pad}{f.name}:{note}", *_default_lines(type(value), pad + "  ")]
            continue
        lines.append(f"{pad}{f.name}: {flow_yaml(value)}{note}")
    return required + lines


def flow_yaml(value: Any) -> str:
    """`value` as one YAML flow value (a tuple as a list)."""
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump([value], default_flow_style=True, width=10_000, sort_keys=False).strip()[1:-1]
