"""What each registered method takes, for `slimkit methods` and the docs: its fields with types,
defaults, choices and the ranges its own validation enforces, and the paper it implements."""

from __future__ import annotations

import dataclasses
import inspect
import sys
import typing
from typing import Any

from .config import RANGES, MethodConfig, _hints, lookup, method_names
from .errors import ConfigError
from .fields import to_plain


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    name: str
    type: str
    default: Any
    allowed: str  # choices, or the range validate() enforces ("" when neither is declared)


@dataclasses.dataclass(frozen=True)
class MethodInfo:
    name: str
    config: str
    summary: str  # the first paragraph of the config's docstring, or its module's
    fields: tuple[FieldInfo, ...]


def describe_method(name: str) -> MethodInfo:
    cls, _ = lookup(name)
    ranges = _declared_ranges(cls)
    fields = []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        tp = _hints(cls)[field.name]
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING \
            else field.default
        fields.append(FieldInfo(field.name, _type_text(tp), to_plain(default),
                                _allowed(tp, ranges.get(field.name))))
    return MethodInfo(name, cls.__name__, _summary(cls), tuple(fields))


def describe_methods() -> list[MethodInfo]:
    return [describe_method(name) for name in method_names()]


def _declared_ranges(cls: type[MethodConfig]) -> dict[str, tuple[float, float, bool, bool]]:
    """The ranges validate() checks, recorded while it validates the defaults (a method whose
    defaults are incomplete reports the ranges checked before the first refusal)."""
    recorded: dict[str, tuple[float, float, bool, bool]] = {}
    token = RANGES.set(recorded)
    try:
        cls()
    except (ConfigError, TypeError, ValueError):
        pass  # recorded: the ranges seen so far are what there is to show
    finally:
        RANGES.reset(token)
    return recorded


def _allowed(tp: Any, bounds: tuple[float, float, bool, bool] | None) -> str:
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if bounds is None:
        return ""
    lo, hi, lo_open, hi_open = bounds
    return f"{'(' if lo_open else '['}{_num(lo)}, {_num(hi)}{')' if hi_open else ']'}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _type_text(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Literal:
        return "choice"
    text = getattr(tp, "__name__", None) if not typing.get_args(tp) else None
    return text or str(tp).replace("typing.", "")


def _summary(cls: type) -> str:
    """The module docstring's first paragraph (where each method names its paper), else the
    config's own docstring (not the one dataclasses writes from the signature)."""
    doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    if not doc:
        doc = inspect.getdoc(cls) or ""
        doc = "" if doc.startswith(f"{cls.__name__}(") else doc
    return " ".join(doc.split("\n\n")[0].split())
