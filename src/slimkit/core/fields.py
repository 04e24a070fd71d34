"""Type checking of plain data (from YAML/JSON) against dataclass field annotations.

Plans come from files users edit by hand, so every value is checked against its annotation and a
mismatch names the field path and the offending value.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal

from .errors import ConfigError


def coerce(value: Any, tp: Any, field: str) -> Any:
    """Return `value` converted to annotation `tp`, or raise ConfigError naming `field`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, field)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(field, value, " or ".join(_describe(a) for a in args))
    if origin is Literal:
        # Compare types too: 4.0 == 4 and True == 1 in Python, but a plan saying `bits: 4.0`
        # must not slip through as a float.
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise ConfigError(field, value, "one of " + ", ".join(repr(a) for a in args))
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(field, value, "a list")
        item_tp = args[0] if args else Any
        return tuple(coerce(v, item_tp, f"{field}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(field, value, "a mapping")
        key_tp, val_tp = args or (Any, Any)
        return {
            coerce(k, key_tp, field): coerce(v, val_tp, f"{field}.{k}") for k, v in value.items()
        }
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(field, value, "true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(field, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(field, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(field, value, "a string")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):  # built in Python: its fields get the same checks
            plain = {f.name: getattr(value, f.name) for f in dataclasses.fields(tp) if f.init}
            rebuilt = from_mapping(tp, plain, field)
            return value if rebuilt == value else rebuilt
        return from_mapping(tp, value, field)
    raise TypeError(f"unsupported annotation {tp!r} for {field}")


def from_mapping(cls: Any, data: Any, prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown fields and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(prefix, data, "a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in known:
            raise ConfigError(f"{prefix}.{key}", data[key],
                              "known: " + ", ".join(sorted(known)), unknown=True)
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.init and required and f.name not in data:
            raise ConfigError(f"{prefix}.{f.name}", None, "a value (this field is required)")
    kwargs = {k: coerce(v, hints[k], f"{prefix}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc.field}", exc.value, exc.expected,
                          unknown=exc.unknown) from None


def to_plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts to JSON/YAML-safe builtins (inverse of `coerce`)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.init}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def _describe(tp: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list"
    return getattr(tp, "__name__", str(tp))
