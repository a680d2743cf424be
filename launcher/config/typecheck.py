"""Raw TOML tables -> the schema's dataclasses: types, unknown keys (with a did-you-mean), missing keys."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union

from launcher.config.schema import OWNED_TRAINER_KEYS, TrainerSection
from launcher.errors import ConfigError


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "table"
    if tp is type(None):
        return "unset"
    if dataclasses.is_dataclass(tp):
        return "table"
    return {int: "integer", float: "number", str: "string", bool: "true/false"}.get(tp, str(tp))


def describe(value: Any) -> str:
    kind = {bool: "true/false", int: "integer", float: "number", str: "string"}.get(
        type(value), "table" if isinstance(value, dict) else "list" if isinstance(value, list) else ""
    )
    shown = repr(value) if not isinstance(value, (dict, list)) else ""
    return f"{kind} {shown}".strip()


def coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check `value` against type `tp`; return the typed value or raise ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        closest = None  # a table's own error (a missing or unknown key) says more than "expected a table"
        for option in typing.get_args(tp):
            if option is type(None):
                continue
            try:
                return coerce(value, option, source, key)
            except ConfigError as err:
                if dataclasses.is_dataclass(option) and isinstance(value, dict):
                    closest = err
        raise closest or ConfigError(source, key, f"expected {type_name(tp)}, got {describe(value)}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        raise ConfigError(
            source, key, f"{describe(value)} is not allowed; allowed: {', '.join(map(repr, allowed))}"
        )
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(source, key, f"expected {type_name(tp)}, got {describe(value)}")
        (item_tp,) = typing.get_args(tp)
        return [coerce(v, item_tp, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {describe(value)}")
        _, val_tp = typing.get_args(tp)
        if val_tp is Any:
            return dict(value)
        return {k: coerce(v, val_tp, source, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(source, key, f"expected a table, got {describe(value)}")
        return build(tp, value, source, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Any:
        return value
    raise ConfigError(source, key, f"expected {type_name(tp)}, got {describe(value)}")


def unknown_key(cls: type, name: str, source: str, key: str) -> ConfigError:
    if cls is TrainerSection and name in OWNED_TRAINER_KEYS:
        return ConfigError(source, key, f"is set by launch: {OWNED_TRAINER_KEYS[name]}")
    names = [f.name for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return ConfigError(source, key, f"unknown key{hint} (known: {', '.join(names)})")


def build(cls: type, table: dict[str, Any], source: str, prefix: str = "") -> Any:
    """A whole table -> an instance of dataclass `cls` (every required key present)."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise unknown_key(cls, name, source, key)
        kwargs[name] = coerce(value, hints[name], source, key)
    for name, f in known.items():
        if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(source, key, f"missing required key ({type_name(hints[name])})")
    return cls(**kwargs)


def check_keys(cls: type, table: dict[str, Any], source: str, prefix: str = "") -> None:
    """Validate a partial table (keys and types) without requiring every required key."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name, value in table.items():
        key = f"{prefix}.{name}" if prefix else name
        if name not in known:
            raise unknown_key(cls, name, source, key)
        tp = hints[name]
        union = typing.get_origin(tp) in (Union, types.UnionType)
        options = [t for t in typing.get_args(tp) if t is not type(None)] if union else []
        if len(options) == 1 and dataclasses.is_dataclass(options[0]):
            tp = options[0]  # an optional table ([model] of a script's job): its keys as a table's
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            check_keys(tp, value, source, key)
        else:
            coerce(value, tp, source, key)
