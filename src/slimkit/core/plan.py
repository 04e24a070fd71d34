"""Plans: ordered, versioned lists of method configs that round-trip exactly through YAML
and JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import yaml

from .config import MethodConfig, lookup
from .errors import ConfigError, SlimkitError

PLAN_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Plan:
    steps: tuple[MethodConfig, ...]
    version: int = PLAN_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "steps": [s.to_dict() for s in self.steps]}

    @classmethod
    def from_dict(cls, data: Any) -> Plan:
        if not isinstance(data, dict):
            raise ConfigError("plan", data, "a mapping with 'version' and 'steps'")
        unknown = set(data) - {"version", "steps"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(key, data[key], "known: steps, version", unknown=True)
        version = data.get("version", PLAN_VERSION)
        if type(version) is not int or version != PLAN_VERSION:
            raise ConfigError("version", version, f"plan version {PLAN_VERSION}")
        steps = data.get("steps")
        if not isinstance(steps, list):
            raise ConfigError("steps", steps, "a list of steps")
        parsed = []
        for i, step in enumerate(steps):
            if not isinstance(step, dict):
                raise ConfigError(f"steps[{i}]", step, "a mapping with a 'method'")
            config_cls, _ = lookup(step.get("method"), f"steps[{i}].method")
            parsed.append(config_cls.from_dict(step, prefix=f"steps[{i}]"))
        return cls(steps=tuple(parsed), version=version)

    def to_yaml(self) -> str:
        return str(yaml.safe_dump(self.to_dict(), sort_keys=False))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_yaml(cls, text: str) -> Plan:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", None)
            where = f" at line {line + 1}" if line is not None else ""
            raise SlimkitError(f"plan: not valid YAML{where}") from None
        return cls.from_dict(data)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SlimkitError(f"plan: not valid JSON at line {exc.lineno}") from None
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        path = Path(path)
        if not path.is_file():
            raise SlimkitError(f"plan: no such file {str(path)!r}")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SlimkitError(f"plan: cannot read {str(path)!r} ({type(exc).__name__})") from None
        return cls.from_json(text) if path.suffix == ".json" else cls.from_yaml(text)
