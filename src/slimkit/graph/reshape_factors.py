"""Row-major factorisation of a reshape that merges and splits several dimensions at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .deps import Analyser


def refine(an: Analyser, a: list[int], b: list[int]) -> bool:
    """Tie two row-major runs of the same total size ([B, E] -> [B*H, hd]) by splitting
    the larger head of either run into the smaller one times a new remainder class, until
    the runs match part for part; False (nothing tied) if a size does not divide."""
    plan: list[tuple[str, int, list[int]]] = []
    a, b = list(a), list(b)
    sizes = {s: an.size(s) for s in [*a, *b]}
    while a and b:
        x, y = a[0], b[0]
        if sizes[x] == sizes[y]:
            plan.append(("tie", x, [y]))
            a.pop(0)
            b.pop(0)
            continue
        small, large, rest = (x, y, b) if sizes[x] < sizes[y] else (y, x, a)
        if sizes[large] % sizes[small]:
            return False
        remainder = -len(plan) - 1  # a class made only if the whole run factorises
        sizes[remainder] = sizes[large] // sizes[small]
        plan.append(("prod", large, [small, remainder]))
        (a if rest is b else b).pop(0)
        rest[0] = remainder
    made: dict[int, int] = {}
    for kind, target, parts in plan:
        target = made.get(target, target)
        for p in parts:
            if p < 0 and p not in made:
                made[p] = an.new_class(sizes[p])
        parts = [made.get(p, p) for p in parts]
        if kind == "tie":
            an.tie(target, parts[0])
        else:
            an.compose(target, "prod", parts)
    return True
