"""Automatic compression: search plans built from the registered methods until the model meets
its target (a quality budget plus the smallest size or latency). Needs the `search` extra."""

from .narrow import narrow
from .space import SearchSpace, suggest_plan
from .study import SearchResult, auto

__all__ = ["SearchResult", "SearchSpace", "auto", "narrow", "suggest_plan"]
