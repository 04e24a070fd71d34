"""Truncation: fewer layers, a narrower hidden width, smaller vocabularies and embedding tables."""

from .hidden import Hidden

__all__ = ["Hidden"]
