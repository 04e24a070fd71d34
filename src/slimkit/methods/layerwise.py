"""Layer-wise calibration for methods that rewrite layers one at a time from statistics of their
inputs (GPTQ, AWQ, SparseGPT, Wanda), in execution order: each layer sees inputs produced by the
layers already rewritten, so later layers correct for the error upstream.

Calibration block by block (GPTQ's "true sequential" order with each block's inputs cached):
the inputs of a model's first repeated block are captured once per calibration batch, then each
block runs on its cached inputs, its layers are quantized group by group inside it, and its
outputs (from the quantized block) become the next block's inputs. Nothing re-runs the model's
prefix, so a 30-block model costs a few block passes per block instead of a prefix per layer,
and memory holds one block's inputs per batch (the hidden states), not every layer's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from ..core.heap import release_freed_memory

log = logging.getLogger(__name__)

Call = tuple[tuple[Any, ...], dict[str, Any]]


class StopForward(Exception):
    """Raised by a capture hook: nothing after the captured input is needed."""


def find_blocks(model: nn.Module, names: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList of at least two children of one class holding the most of `names` (the
    decoder layers of a transformer), or None when no such list holds any."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for path, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        inside = sum(1 for n in names if n.startswith(f"{path}."))
        if inside and (best is None or inside > best[0]):
            best = (inside, path, module)
    return None if best is None else (best[1], best[2])


def capture_first_block(model: nn.Module, block: nn.Module,
                        passes: list[Callable[[], Any]]) -> list[Call]:
    """The (args, kwargs) `block` is called with in each of `passes` (whole-model forwards),
    cut short as soon as the block is reached."""
    calls: list[Call] = []

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls.append((tuple(_detach(a) for a in args),
                      {k: _detach(v) for k, v in kwargs.items()}))
        raise StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            for run in passes:
                try:
                    run()
                except StopForward:
                    pass
    finally:
        handle.remove()
    return calls


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def block_passes(block: nn.Module, calls: list[Call]) -> list[Callable[[], Any]]:
    return [lambda a=args, k=kwargs: block(*a, **k) for args, kwargs in calls]


def next_calls(block: nn.Module, calls: list[Call]) -> list[Call]:
    """The next block's calls: the same arguments with the hidden state replaced by this block's
    output (its first tensor when it returns a tuple). `calls` is emptied as it goes, so the
    inputs and outputs of all batches are never held at once."""
    out: list[Call] = []
    calls.reverse()
    with torch.no_grad():
        while calls:
            args, kwargs = calls.pop()
            result = block(*args, **kwargs)
            hidden = result[0] if isinstance(result, (tuple, list)) else result
            if args:
                out.append(((hidden, *args[1:]), kwargs))
            else:
                out.append(((), {**kwargs, "hidden_states": hidden}))
    return out


class InputGroup:
    """Inputs of the next layers to quantize: the first pending layer the forward reaches, plus
    the pending layers fed that very same tensor (q, k, v of an attention block), which share
    one set of statistics. The forward is cut short right after, so one pass costs only the
    model's (or block's) prefix up to those layers."""

    def __init__(self, make: Callable[[int], Any]) -> None:
        self.make = make
        self.stats: Any = None
        self.members: list[str] = []

    def capture(self, pending: dict[str, nn.Module],
                passes: list[Callable[[], Any]]) -> list[str]:
        first_pass = True
        current: dict[str, Any] = {}

        def hook_for(name: str) -> Callable[..., None]:
            def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
                x = args[0]
                if "input" not in current:
                    if not first_pass and name != self.members[0]:
                        raise StopForward
                    current["input"] = x
                    if self.stats is None:
                        self.stats = self.make(x.shape[-1])
                    self.stats.add(x.detach().float())
                elif x is not current["input"]:
                    raise StopForward
                if first_pass:
                    self.members.append(name)
                # Every pending layer captured (first pass) or the group's last member reached:
                # the rest of the forward is not needed (after a language model's head, its
                # logits: 400 MB for 4 x 512 tokens of SmolLM2).
                if name == self.members[-1] and (not first_pass or
                                                 len(self.members) == len(pending)):
                    raise StopForward
            return hook

        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pending.items()]
        try:
            with torch.no_grad():
                for run in passes:
                    current.clear()
                    try:
                        run()
                    except StopForward:
                        pass
                    if first_pass and not self.members:
                        break  # no pending layer runs on this data
                    first_pass = False
        finally:
            for handle in handles:
                handle.remove()
        return self.members


def capture_all(pending: dict[str, nn.Module], passes: list[Callable[[], Any]],
                make: Callable[[int], Any]) -> dict[str, InputGroup]:
    """Every pending layer's inputs from one full pass per batch (no layer quantized yet)."""
    groups: dict[str, InputGroup] = {}

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            group = groups.setdefault(name, InputGroup(make))
            if group.stats is None:
                group.stats = make(args[0].shape[-1])
            group.stats.add(args[0].detach().float())
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in pending.items()]
    try:
        with torch.no_grad():
            for run in passes:
                run()
    finally:
        for handle in handles:
            handle.remove()
    return {name: groups[name] for name in pending if name in groups}


class HessianAccumulator:
    """H = 2/n sum_i x_i x_i^T over every input row seen so far (a running mean, in float64 so
    thousands of rows of large activations do not lose the small eigenvalues)."""

    def __init__(self, features: int) -> None:
        self.features = features
        self.hessian = torch.zeros(features, features, dtype=torch.float64)
        self.rows = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, self.features).float()
        new = x.shape[0]
        if new == 0:
            return
        self.hessian *= self.rows / (self.rows + new)
        self.rows += new
        # One batch's product in fp32 (fast, short sums); the running mean across batches in fp64.
        self.hessian += (2.0 / self.rows) * (x.T @ x).double()


def live_hessian(hessian: torch.Tensor) -> torch.Tensor:
    """A float64 copy of `hessian` in which dead inputs (H_jj = 0: never active on the
    calibration data) have no coupling and a unit diagonal, so the inverse exists and those
    columns are handled on their own (GPTQ rounds them, SparseGPT ranks them by magnitude)."""
    h = hessian.detach().double().clone()
    dead = torch.diag(h) == 0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0
    return h


def inverse_cholesky(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp I)^-1 (GPTQ, SparseGPT); the damping grows tenfold until
    H is positive definite, since rank-deficient Hessians (few calibration rows, collinear inputs)
    are common."""
    mean_diag = float(torch.diag(h).mean())
    damp = damp_percent * (mean_diag if mean_diag > 0 else 1.0)
    # One n x n temporary at a time (no identity matrix, no sum kept beside the factor): for a
    # 1536-wide fp64 H each copy is 19 MB, and this ran at a language model's memory peak.
    for _ in range(6):
        damped = h.clone()
        damped.diagonal().add_(damp)
        chol, info = torch.linalg.cholesky_ex(damped)
        del damped
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            del chol
            chol_inv, info = torch.linalg.cholesky_ex(inv, upper=True)
            if int(info) == 0:
                return chol_inv
        log.info("Hessian not positive definite at damp %.3g, retrying x10", damp)
        damp *= 10.0
    raise ValueError("Hessian stays singular even with heavy dampening")


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread for a column loop of thousands of tiny ops (GPTQ, SparseGPT): with
    several threads each op pays a thread barrier (see gptq.py for the measurement)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def hessian_error(weight: torch.Tensor, approx: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the layer's relative output error on the calibration rows."""
    h = hessian.double()
    num = den = 0.0
    # In blocks of rows: a tied 49152-row table would otherwise take four fp64 copies (900 MB).
    for start in range(0, weight.shape[0], 4096):
        w = weight[start:start + 4096].double()
        diff = approx[start:start + 4096].double() - w
        num += float(((diff @ h) * diff).sum())
        den += float(((w @ h) * w).sum())
    return num / den if den > 0 else 0.0


def calibrate_in_order(model: nn.Module, pending: dict[str, nn.Module],
                       passes: list[Callable[[], Any]], *, make: Callable[[int], Any],
                       handle: Callable[[str, nn.Module, Any], None], sequential: bool,
                       info: dict[str, Any]) -> list[str]:
    """Call `handle(name, module, stats)` for every layer of `pending` (`stats` built by
    `make(in_features)` and fed each input the layer got on `passes`, whole-model forwards on
    the calibration batches); `handle` replaces the layer. Returns the names that never ran.

    Sequentially, layers inside the model's repeated blocks are calibrated block by block on
    cached block inputs, group by group inside a block (layers fed the same tensor, q/k/v, share
    one group); the others by cut-short whole-model passes. Not sequentially, every layer's
    statistics come from one pass of the unmodified model.

    `pending` is consumed: each layer leaves it as it is handled, so nothing here keeps a layer
    `handle` replaced alive, and the freed heap goes back to the system after every block (a
    model loaded from a memory-mapped file keeps its weights resident regardless: the causal-LM
    loader reads them into memory of their own)."""

    def handle_found(found: dict[str, InputGroup]) -> None:
        for name, group in found.items():
            handle(name, pending.pop(name), group.stats)

    def run_groups(scope: dict[str, nn.Module], scope_passes: list[Callable[[], Any]]) -> None:
        while scope:
            group = InputGroup(make)
            found = {name: group for name in group.capture(scope, scope_passes)}
            if not found:
                return
            handle_found(found)
            for name in found:
                scope.pop(name)

    if not sequential:
        handle_found(capture_all(pending, passes, make))
        return list(pending)
    blocks = find_blocks(model, list(pending))
    if blocks is not None:
        path, layers = blocks
        info["blocks"] = path
        calls = capture_first_block(model, layers[0], passes)
        for index, block in enumerate(layers):
            prefix = f"{path}.{index}."
            run_groups({n: m for n, m in pending.items() if n.startswith(prefix)},
                       block_passes(block, calls))
            if index + 1 < len(layers):
                calls = next_calls(block, calls)
            release_freed_memory()  # the replaced layers' weights, and this block's temporaries
        del calls
    run_groups(dict(pending), passes)
    release_freed_memory()
    return list(pending)
