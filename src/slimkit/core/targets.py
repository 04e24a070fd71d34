"""Which modules a method touches: names by glob (or `re:` regex), module types, excludes."""

from __future__ import annotations

import dataclasses
import fnmatch
import re

from torch import nn

from .errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class Targets:
    """Select submodules by qualified name and type.

    `names` are glob patterns over dotted module names (`tower.*`), or regular expressions when
    prefixed with `re:`. `types` are class names (`Linear`); empty means the method's default.
    """

    names: tuple[str, ...] = ("*",)
    types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for field, pats in (("names", self.names), ("exclude", self.exclude)):
            for i, pat in enumerate(pats):
                if pat.startswith("re:"):
                    try:
                        re.compile(pat[3:])
                    except re.error:
                        raise ConfigError(f"{field}[{i}]", pat, "a valid regex") from None

    def select(self, model: nn.Module,
               default_types: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
        """Matching (name, module) pairs in definition order; the root module is never selected."""
        types = self.types or default_types
        chosen = []
        for name, module in model.named_modules():
            if not name or type(module).__name__ not in types:
                continue
            if _matches(name, self.names) and not _matches(name, self.exclude):
                chosen.append((name, module))
        return chosen


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    for pat in patterns:
        if pat.startswith("re:"):
            if re.fullmatch(pat[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False
