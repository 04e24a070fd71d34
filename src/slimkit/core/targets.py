"""Which modules a method touches: names by glob (or `re:` regex), module types, excludes."""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import re

from torch import nn

from .errors import ConfigError

log = logging.getLogger(__name__)


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

    def select(self, model: nn.Module, default_types: tuple[str, ...], *,
               subclasses: bool = False, tied_ok: bool = False) -> list[tuple[str, nn.Module]]:
        """Matching (name, module) pairs in definition order; the root module is never selected.

        A module whose weight is tied to another module's (a language model's head and its
        input embedding) is left out unless named exactly, and refused then: rewriting one side
        either breaks the tie (a second copy of the table) or changes the other side too
        (pruning the head zeroes the embedding). `tied_ok`: the caller cuts a tied tensor once
        for both sides (a structured cut of the width they share). `subclasses`: a type also
        matches its subclasses (FalconLinear is a Linear), for a caller that reads only the
        tensors, never the module's own forward."""
        types = self.types or default_types
        tied = {} if tied_ok else _tied(model)
        chosen = []
        for name, module in model.named_modules():
            kinds = [c.__name__ for c in type(module).__mro__] if subclasses \
                else [type(module).__name__]
            if not name or not set(kinds) & set(types):
                continue
            if _matches(name, self.names) and not _matches(name, self.exclude):
                if name in tied:
                    if name in self.names:
                        raise ConfigError("targets", name, "a module whose weight is not tied "
                                          f"(it shares its weight with {tied[name]!r}; untie "
                                          "them first, or leave it out)")
                    log.info("targets: %s left out: its weight is tied to %s", name, tied[name])
                    continue
                chosen.append((name, module))
        return chosen


def _tied(model: nn.Module) -> dict[str, str]:
    """Module name -> the other module it shares its `weight` Parameter with."""
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        weight = module._parameters.get("weight") if name else None
        if weight is not None and name not in owners.get(id(weight), []):
            owners.setdefault(id(weight), []).append(name)
    return {name: next(n for n in names if n != name)
            for names in owners.values() if len(names) > 1 for name in names}


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    for pat in patterns:
        if pat.startswith("re:"):
            if re.fullmatch(pat[3:], name):
                return True
        elif fnmatch.fnmatchcase(name, pat):
            return True
    return False
