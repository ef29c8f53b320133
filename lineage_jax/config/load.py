"""Presets, YAML and ``section.key=value`` overrides -> a validated frozen ``Config``.

Each value is coerced to its field's type here (``3e-3`` read as a string by YAML 1.1 included),
so a bad key or value is reported in one line before JAX starts.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml

from lineage_jax.config.checks import validate
from lineage_jax.config.errors import ConfigError
from lineage_jax.config.sections import Config

REPO_CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def resolve_preset(name_or_path: str) -> Path:
    """A path as given, else a preset name (``tiny``) or file name in the repo's configs/."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (REPO_CONFIGS / name_or_path, REPO_CONFIGS / f"{name_or_path}.yaml"):
        if cand.is_file():
            return cand
    presets = sorted(q.stem for q in REPO_CONFIGS.glob("*.yaml"))
    raise ConfigError(f"config file '{name_or_path}' not found; give a path or one of the presets: {', '.join(presets)}")


def load_config(path: str | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Preset YAML (or defaults) + ``key.sub=value`` overrides -> validated frozen Config."""
    tree: dict[str, Any] = {}
    where = "defaults"
    if path is not None:
        p = resolve_preset(path)
        where = str(path)
        try:
            tree = yaml.safe_load(p.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); save the config as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections (model, data, optim, train, mesh)")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' must look like section.key=value (e.g. train.steps=200)")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        _set_path(tree, key.strip(), value)
    cfg = _build(Config, tree, prefix="", where=where)
    validate(cfg)
    return cfg


def _set_path(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def _build(cls, tree: Any, prefix: str, where: str):
    if not isinstance(tree, dict):
        raise ConfigError(f"'{prefix.rstrip('.')}' must be a section (mapping), got {tree!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in tree:
        if key not in fields:
            near = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{prefix}{near[0]}'?)" if near else ""
            raise ConfigError(
                f"unknown key '{prefix}{key}' in {where}{hint}; allowed: {', '.join(prefix + f for f in fields)}")
    kwargs = {}
    for name, value in tree.items():
        typ = hints[name]
        if dataclasses.is_dataclass(typ):
            kwargs[name] = _build(typ, value, f"{prefix}{name}.", where)
        else:
            kwargs[name] = _coerce(f"{prefix}{name}", value, typ)
    return cls(**kwargs)


def _coerce(key: str, value: Any, typ) -> Any:
    origin = typing.get_origin(typ)
    item = (typing.get_args(typ) or (None,))[0]
    if origin is tuple and dataclasses.is_dataclass(item):           # a list of records, e.g. data.mixture
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
            allowed = ", ".join(f.name for f in dataclasses.fields(item))
            raise ConfigError(f"{key}={value!r}: expected a list of {{{allowed}}} mappings, "
                              f"e.g. {key}=[{{name: a, weight: 2}}]")
        return tuple(_build(item, v, f"{key}[{i}].", key) for i, v in enumerate(value))
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}={value!r}: expected a list of strings (YAML list or comma-separated)")
        return tuple(value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if typ is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}={value!r}: expected a number")
    if typ is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return "" if value is None else str(value)
    raise ConfigError(f"{key}: unsupported field type {typ}")  # pragma: no cover
