"""Dependency analysis: the groups of channels that must be removed together.

`analyse(model, inputs)` traces the model, applies the rule of every operation (op_rules.py) to
tie dimensions into classes, and returns one Group per prunable class: the parameter slices it
owns (rows of one Linear, columns of the next, a BatchNorm's entries, a head's block of q/k/v/o),
whether it is locked and why, and which unknown operations were left alone.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import shape_rules  # noqa: F401  (registers its rules)
from .dims import Dims
from .liveness import live_nodes
from .op_rules import RULES, args, kwargs
from .reshape_factors import refine
from .trace import Traced, TraceError, captured_inputs, issuing_module, trace

log = logging.getLogger(__name__)
# Higher-order operations export leaves around a region run under another grad or autocast mode.
WRAPPED_REGIONS = ("wrap_with_set_grad_enabled", "wrap_with_autocast")


@dataclasses.dataclass
class Member:
    """One tensor slice of a group: dimension `dim` of parameter/buffer `name`."""

    name: str
    dim: int
    cls: int


@dataclasses.dataclass
class Group:
    id: int
    size: int
    kind: str  # "head" (attention heads) or "channel" (neurons, channels, widths)
    members: list[Member]
    locked: str | None
    modules: set[str]
    classes: set[int]
    head_of: int | None = None  # the query-head class this is a factor of (GQA: kv x group)
    # Locked only because a normalisation reads the width: cutting it runs but is not exact.
    inexact: bool = False
    repeat: int = 1  # times each channel recurs in the widths it cuts (G for per-group parts)

    def describe(self) -> str:
        params = sorted({m.name.rpartition(".")[0] or m.name for m in self.members})
        shown = ", ".join(params[:3]) + (f" (+{len(params) - 3})" if len(params) > 3 else "")
        return f"{self.kind} group of {self.size} in {shown}"


@dataclasses.dataclass
class Analysis:
    dims: Dims
    groups: list[Group]
    unknown_ops: dict[str, list[str]]  # op name -> modules that issued it
    scope: str = ""  # the submodule analysed ("" = the whole model)
    notes: list[str] = dataclasses.field(default_factory=list)

    def prefix(self, path: str) -> None:
        """Rename everything as seen from a parent model holding this one at `path`."""
        self.scope = path
        for g in self.groups:
            for m in g.members:
                m.name = f"{path}.{m.name}"
            g.modules = {f"{path}.{p}" if p else path for p in g.modules}
        self.unknown_ops = {k: [f"{path}.{p}" if p else path for p in v]
                            for k, v in self.unknown_ops.items()}

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.locked is None]

    @property
    def prunable_inexact(self) -> list[Group]:
        """The prunable groups and those whose cut is only inexact (widths under a norm)."""
        return [g for g in self.groups if g.locked is None or g.inexact]

    def report(self, inexact_cut: bool = False) -> dict[str, Any]:
        """JSON-friendly summary: counts and the reason each locked group was left alone
        (with `inexact_cut`, groups under a normalisation were offered for cutting: listed
        apart, not as locked)."""
        locked = [{"group": g.describe(), "reason": g.locked} for g in self.groups
                  if g.locked is not None and not (inexact_cut and g.inexact)]
        out = {"scope": self.scope or "model", "notes": self.notes,
               "groups": len(self.groups),
               "prunable": len(self.prunable_inexact if inexact_cut else self.prunable),
               "locked": locked, "unknown_ops": {k: sorted(set(v))[:5]
                                                 for k, v in self.unknown_ops.items()}}
        if inexact_cut:
            out["inexact"] = [{"group": g.describe(), "reason": g.locked}
                              for g in self.groups if g.inexact]
        return out


def analyse(model: nn.Module, example_inputs: Sequence[Any],
            example_kwargs: dict[str, Any] | None = None, prefix: str = "") -> Analysis:
    """Groups of `model`; with `prefix`, names are given as seen from the model holding it."""
    traced = trace(model, example_inputs, example_kwargs)
    an = Analyser(traced)
    an.run()
    result = an.result()
    if prefix:
        result.prefix(prefix)
    return result


def analyse_units(model: nn.Module, example_inputs: Sequence[Any]) -> list[Analysis]:
    """Analyse the whole model; if it does not trace, the largest submodules that do.

    The fallback is conservative: each traced unit's own inputs and outputs are locked, so only
    structure inside a unit (an MLP's neurons, a layer's heads) is cut.
    """
    try:
        return [analyse(model, example_inputs)]
    except TraceError as exc:
        first_error = exc
    seen = captured_inputs(model, example_inputs)
    units: list[Analysis] = []
    failed: list[str] = []

    def visit(path: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{path}.{name}" if path else name
            if full not in seen or not any(True for _ in child.children()):
                continue
            args, kwargs = seen[full]
            try:
                units.append(analyse(child, args, kwargs, prefix=full))
            except TraceError:
                failed.append(full)
                visit(full, child)

    visit("", model)
    if not units:
        raise first_error
    log.info("whole model untraceable (%s); analysed %d submodules", first_error, len(units))
    units[0].notes.append(f"whole model not traceable ({first_error}); analysed submodules "
                          f"{', '.join(sorted(a.scope for a in units))[:300]}")
    return units


class Analyser:
    """Walks the traced graph once; op rules call the helpers below."""

    def __init__(self, traced: Traced) -> None:
        self.traced = traced
        self.d = Dims()
        # Keyed by node, not name: a wrapped region's subgraph reuses the outer graph's names.
        self.values_of: dict[torch.fx.Node, list[list[int]]] = {}
        self.slot_module: list[str] = []
        self.param_slots: list[tuple[str, int, int]] = []
        self.head_slots: list[int] = []
        self.unknown: dict[str, list[str]] = defaultdict(list)
        self.current = ""
        self.live: set[torch.fx.Node] = set()
        # (sliced value, dim) -> the pieces every slice of it cuts that dim into.
        self.slice_pieces: dict[tuple[torch.fx.Node, int], list[tuple[int, int, int]] | None] = {}

    # Helpers for rules.

    def new_class(self, size: int) -> int:
        self.slot_module.append(self.current)
        return self.d.new(size)

    def size(self, slot: int) -> int:
        return self.d.size[slot]

    def tie(self, a: int, b: int) -> None:
        self.d.union(a, b)

    def lock(self, slot: int, reason: str) -> None:
        self.d.lock(slot, reason)

    def lock_inexact(self, slot: int, reason: str) -> None:
        self.d.lock_inexact(slot, reason)

    def compose(self, slot: int, kind: str, children: list[int]) -> None:
        self.d.compose(slot, kind, children)

    def mark_heads(self, slot: int) -> None:
        self.head_slots.append(slot)

    def op_name(self, node: torch.fx.Node) -> str:
        target = node.target
        if target is operator.getitem:
            return "getitem"
        name = getattr(target, "__name__", str(target))
        return name.split(".")[0]

    def has(self, arg: Any) -> bool:
        return isinstance(arg, torch.fx.Node) and arg in self.values_of

    def dims(self, arg: Any) -> list[int]:
        return self.values_of[arg][0]

    def tensor_args(self, node: torch.fx.Node) -> list[torch.fx.Node]:
        flat = [*args(node), *kwargs(node).values()]
        out = []
        for a in flat:
            for x in (a if isinstance(a, (list, tuple)) else [a]):
                if self.has(x) and self.values_of[x]:
                    out.append(x)
        return out

    def values(self, node: torch.fx.Node) -> list[list[int]]:
        if node not in self.values_of:
            val = node.meta.get("val")
            vals = val if isinstance(val, (list, tuple)) else [val]
            self.values_of[node] = [
                [self.new_class(int(s)) for s in v.shape] if isinstance(v, torch.Tensor) else []
                for v in vals]
        return self.values_of[node]

    def value(self, node: torch.fx.Node) -> list[int]:
        return self.values(node)[0]

    def lock_node(self, node: torch.fx.Node, reason: str) -> None:
        for arg in self.tensor_args(node):
            for d in self.dims(arg):
                self.lock(d, reason)
        for out in self.values(node):
            for d in out:
                self.lock(d, reason)

    def reshape(self, x: list[int], out: list[int]) -> None:
        xs, os_ = [self.size(d) for d in x], [self.size(d) for d in out]
        i = j = 0
        while True:
            while i < len(x) and xs[i] == 1:
                i += 1
            while j < len(out) and os_[j] == 1:
                j += 1
            if i >= len(x) or j >= len(out):
                return
            gi, gj, pi, pj = [i], [j], xs[i], os_[j]
            i, j = i + 1, j + 1
            while pi != pj:
                if pi < pj and i < len(x):
                    gi.append(i)
                    pi, i = pi * xs[i], i + 1
                elif pj < pi and j < len(out):
                    gj.append(j)
                    pj, j = pj * os_[j], j + 1
                else:
                    return
            if len(gi) == 1 and len(gj) == 1:
                self.tie(x[gi[0]], out[gj[0]])
            elif len(gi) == 1:
                self.compose(x[gi[0]], "prod", [out[k] for k in gj])
            elif len(gj) == 1:
                self.compose(out[gj[0]], "prod", [x[k] for k in gi])
            elif not refine(self, [x[k] for k in gi], [out[k] for k in gj]):
                for k in [*[x[k] for k in gi], *[out[k] for k in gj]]:
                    self.lock(k, "reshaped across several dimensions")

    # The walk.

    def run(self) -> None:
        graph = self.traced.graph
        self.live = live_nodes(graph)
        for node in graph.nodes:
            self.current = issuing_module(node)
            if node.op == "placeholder":
                self._placeholder(node)
            elif node.op == "call_function" and node in self.live:
                self._call(node)
            elif node.op == "output":
                for arg in args(node)[0]:
                    for v in (self.values_of.get(arg, []) if self.has(arg) else []):
                        for d in v:
                            self.lock(d, "model output")

    def _placeholder(self, node: torch.fx.Node) -> None:
        name = self.traced.params.get(node.name)
        self.current = name.rpartition(".")[0] if name else ""
        dims = self.value(node)
        if name is not None:
            self.param_slots.extend((name, k, d) for k, d in enumerate(dims))
            if not any(u in self.live for u in node.users):
                for d in dims:
                    self.lock(d, "not used in the forward pass")
            if name in self.traced.transient:
                for d in dims:
                    self.lock(d, "non-persistent buffer (not saved with the weights)")
        elif node.name in self.traced.inputs:
            for d in dims:
                self.lock(d, "model input")

    def _call(self, node: torch.fx.Node) -> None:
        name = self.op_name(node)
        if name == "getitem":
            src, idx = args(node)
            if self.has(src) and isinstance(idx, int) and idx < len(self.values_of[src]):
                self.values_of[node] = [self.values_of[src][idx]]
            else:
                self.value(node)
            return
        if name in WRAPPED_REGIONS:
            self._region(node)
            return
        fn = RULES.get(name)
        if fn is None and name.endswith("_") and name[:-1] in RULES:
            # In place: the result is the first argument, changed as the out-of-place form
            # would change it (out += identity, ReLU6(inplace=True), dropout_).
            fn = RULES[name[:-1]]
        if fn is None:
            self.unknown[name].append(self.current)
            self.lock_node(node, f"unknown operation {name}")
            return
        try:
            fn(self, node)
        except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError) as exc:
            # A rule meeting an unexpected signature must not guess: lock what it touches.
            self.unknown[f"{name} ({type(exc).__name__})"].append(self.current)
            self.lock_node(node, f"operation {name} not understood here")

    def _region(self, node: torch.fx.Node) -> None:
        """A no-grad or autocast region: export keeps its operations in a subgraph called with
        the region's inputs; walk it as if inline (neither mode changes a shape)."""
        at = next(i for i, a in enumerate(args(node))
                  if isinstance(a, torch.fx.Node) and a.op == "get_attr")
        sub = getattr(self.traced.graph.owning_module, str(args(node)[at].target)).graph
        operands = iter(args(node)[at + 1:])
        outer = self.current
        for inner in sub.nodes:
            self.current = issuing_module(inner) or outer
            if inner.op == "placeholder":
                operand = next(operands)
                if self.has(operand):
                    self.values_of[inner] = self.values_of[operand]
                else:
                    self.value(inner)
            elif inner.op == "call_function":
                self._call(inner)
            elif inner.op == "output":
                results = args(inner)[0]
                self.values_of[node] = [self.dims(r) if self.has(r) else []
                                        for r in results]
        self.current = outer

    def result(self) -> Analysis:
        d = self.d
        by_root: dict[int, list[int]] = defaultdict(list)
        for slot in range(len(d.parent)):
            by_root[d.find(slot)].append(slot)
        containing: dict[int, set[int]] = defaultdict(set)
        for root in by_root:
            for leaf, path in _expand(d, root, []):
                containing[leaf].update(path)
        heads = {leaf: d.find(h) for h in self.head_slots for leaf in d.leaves(h)}
        params_by_root: dict[int, list[Member]] = defaultdict(list)
        for name, dim, slot in self.param_slots:
            params_by_root[d.find(slot)].append(Member(name, dim, d.find(slot)))
        groups = []
        for leaf, classes in containing.items():
            members = [m for c in classes for m in params_by_root.get(c, [])]
            if not members or d.size[leaf] <= 1:
                continue
            locked = next((d.locks[c] for c in classes if c in d.locks), None)
            inexact = next((d.inexact[c] for c in classes if c in d.inexact), None)
            modules = {self.slot_module[s] for c in classes for s in by_root[c]}
            # A part of a product (channels within each of G conv groups) is repeated G times
            # in the tensors it cuts.
            repeats = [d.size[c] // d.size[leaf] for c in classes
                       if c != leaf and c in d.struct and d.struct[c].kind == "prod"]
            groups.append(Group(leaf, d.size[leaf], "head" if leaf in heads else "channel",
                                sorted(members, key=lambda m: (m.name, m.dim)),
                                locked or inexact, modules, classes, heads.get(leaf),
                                inexact=locked is None and inexact is not None,
                                repeat=min(repeats, default=1)))
        groups.sort(key=lambda g: (g.members[0].name, g.id))
        return Analysis(d, groups, dict(self.unknown))


def _expand(d: Dims, x: int, path: list[int]) -> list[tuple[int, list[int]]]:
    root = d.find(x)
    s = d.struct.get(root)
    if s is None:
        return [(root, [*path, root])]
    return [item for c in s.children for item in _expand(d, c, [*path, root])]
