"""Channel classes: which tensor dimensions must be cut together, found by union-find.

Every dimension of every traced value and parameter is a slot. Operations tie slots whose indices
correspond (a Linear's output rows and the next Linear's input columns, both sides of a residual
addition) into one class. A reshape that splits a dimension records the class as a product of
others (hidden = heads x head_dim), and a split or concatenation as a concatenation, so cutting a
head removes its block of rows everywhere. A class that must keep its size (a model output, a
dimension normalised by LayerNorm, one an unknown operation touched) is locked with a reason.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch


@dataclasses.dataclass
class Struct:
    kind: str  # "prod" (row-major product of children) or "cat" (concatenation)
    children: list[int]


class Dims:
    """Union-find over dimension slots, with product/concatenation structure and locks."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.struct: dict[int, Struct] = {}
        self.locks: dict[int, str] = {}
        # Cuts that run but are not exact (a width LayerNorm normalises): allowed on request.
        self.inexact: dict[int, str] = {}

    def new(self, size: int) -> int:
        self.parent.append(len(self.parent))
        self.size.append(int(size))
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:  # path compression
            self.parent[x], x = root, self.parent[x]
        return root

    def lock(self, x: int, reason: str) -> None:
        root = self.find(x)
        self.locks.setdefault(root, reason)

    def lock_inexact(self, x: int, reason: str) -> None:
        self.inexact.setdefault(self.find(x), reason)

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self._within(ra, rb) or self._within(rb, ra):
            # A class equal to a part of itself (cat([h]) + h): no consistent cut exists.
            self.lock(ra, "tied to a part of itself")
            self.lock(rb, "tied to a part of itself")
            return
        if self.size[ra] != self.size[rb]:
            self.lock(ra, f"sizes {self.size[ra]} and {self.size[rb]} meet")
            self.lock(rb, f"sizes {self.size[ra]} and {self.size[rb]} meet")
            return
        self.parent[rb] = ra
        if rb in self.locks:
            self.locks.setdefault(ra, self.locks.pop(rb))
        if rb in self.inexact:
            self.inexact.setdefault(ra, self.inexact.pop(rb))
        sa, sb = self.struct.get(ra), self.struct.pop(rb, None)
        if sb is None:
            return
        if sa is None:
            self.struct[ra] = sb
        elif sa.kind == sb.kind and [self.size[c] for c in sa.children] == \
                [self.size[c] for c in sb.children]:
            for ca, cb in zip(sa.children, sb.children, strict=True):
                self.union(ca, cb)
        else:
            self.lock(ra, "reshaped in two incompatible ways")

    def compose(self, x: int, kind: str, children: list[int]) -> None:
        """Declare class x = prod/cat of `children` (sizes must multiply/add up)."""
        children = [c for c in children if not (kind == "prod" and self.size[c] == 1)]
        if len(children) == 1:  # a product or concatenation of one part is that part
            self.union(x, children[0])
            return
        if not children:
            return
        root = self.find(x)
        if any(self._within(self.find(c), root) or self.find(c) == root for c in children):
            self.lock(root, "tied to a part of itself")
            return
        new = Struct(kind, children)
        old = self.struct.get(root)
        if old is None:
            self.struct[root] = new
            return
        if old.kind == kind and [self.size[c] for c in old.children] == \
                [self.size[c] for c in children]:
            for ca, cb in zip(old.children, children, strict=True):
                self.union(ca, cb)
        else:
            self.lock(root, "reshaped in two incompatible ways")

    def _within(self, x: int, y: int) -> bool:
        """Is class x a (transitive) part of class y?"""
        todo, seen = [y], set()
        while todo:
            s = self.struct.get(self.find(todo.pop()))
            for c in s.children if s else []:
                rc = self.find(c)
                if rc == x:
                    return True
                if rc not in seen:
                    seen.add(rc)
                    todo.append(rc)
        return False

    # Queries (valid once all ties are recorded).

    def leaves(self, x: int) -> Iterator[int]:
        root = self.find(x)
        s = self.struct.get(root)
        if s is None:
            yield root
            return
        for c in s.children:
            yield from self.leaves(c)

    def lock_reason(self, leaf: int, ancestors: list[int]) -> str | None:
        """A leaf is locked by its own lock or by a lock on any class built from it."""
        for x in [leaf, *ancestors]:
            reason = self.locks.get(self.find(x))
            if reason is not None:
                return reason
        return None

    def owner(self, x: int, leaf: int) -> torch.Tensor:
        """For each index of class x: the index of `leaf` it belongs to, or -1."""
        root = self.find(x)
        if root == self.find(leaf):
            return torch.arange(self.size[root])
        s = self.struct.get(root)
        if s is None:
            return torch.full((self.size[root],), -1, dtype=torch.long)
        parts = [self.owner(c, leaf) for c in s.children]
        if s.kind == "cat":
            return torch.cat(parts)
        out = parts[0]
        for part in parts[1:]:
            # Row-major: index = i * len(part) + j.
            out = torch.maximum(out.repeat_interleave(len(part)), part.repeat(len(out)))
        return out

    def keep(self, x: int, kept: dict[int, torch.Tensor]) -> torch.Tensor:
        """Indices of class x that survive when each leaf in `kept` keeps only those indices."""
        return self._keep_mask(x, {self.find(k): v for k, v in kept.items()}).nonzero().flatten()

    def _keep_mask(self, x: int, kept: dict[int, torch.Tensor]) -> torch.Tensor:
        root = self.find(x)
        mask = torch.ones(self.size[root], dtype=torch.bool)
        if root in kept:
            mask = torch.zeros(self.size[root], dtype=torch.bool)
            mask[kept[root]] = True
            return mask
        s = self.struct.get(root)
        if s is None:
            return mask
        parts = [self._keep_mask(c, kept) for c in s.children]
        if s.kind == "cat":
            return torch.cat(parts)
        out = parts[0]
        for part in parts[1:]:  # row-major product: index = i * len(part) + j
            out = (out[:, None] & part[None, :]).flatten()
        return out
