"""Which nodes of a traced graph matter: those the outputs depend on, and in-place writes."""

from __future__ import annotations

import torch


def live_nodes(graph: torch.fx.Graph) -> set[torch.fx.Node]:
    """The nodes the outputs depend on, and in-place operations with what they read: a
    result nobody uses (attention weights a caller drops) must not lock what it reads."""
    todo = [n for n in graph.nodes
            if n.op == "output" or (n.op == "call_function" and _in_place(n))]
    live: set[torch.fx.Node] = set()
    while todo:
        node = todo.pop()
        if node not in live:
            live.add(node)
            todo.extend(node.all_input_nodes)
    return live


def _in_place(node: torch.fx.Node) -> bool:
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return name.endswith("_") and not name.startswith("_")
