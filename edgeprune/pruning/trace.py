"""Tracing a model with torch-pruning's dependency graph: the whole model where torch-pruning can follow it,
else the model around opaque modules (the smallest it cannot follow, kept at their widths) and the parts inside
them that it can. Every trace is bounded in time (a graph torch-pruning misreads may never resolve)."""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from ..errors import ModelLoadError, first_line

log = logging.getLogger(__name__)

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class TracedPart:
    """A module traced by torch-pruning with its own example input: the whole model, or (when the whole model
    cannot be traced) the largest submodules that can, each with its boundary widths fixed."""
    prefix: str
    module: nn.Module
    example: torch.Tensor
    graph: Any
    ignored: list[nn.Module]
    opaque: list[nn.Module] = field(default_factory=list)  # leaves of the graph: groups reaching them stay whole
    note: str = ""  # why the whole model could not be traced, when it could not


def trace_parts(model: nn.Module, example: torch.Tensor) -> list[TracedPart]:
    """Trace the whole model. Where torch-pruning cannot (channel shuffle, window attention), find the smallest
    submodules it cannot trace, trace the model again with those as opaque leaves (a torch-pruning custom pruner
    per instance; groups that reach one are not pruned), and prune inside each of them the parts it can trace,
    with each part's input and output widths left as they are."""
    try:
        return [TracedPart("", model, example, *_graph(model, example))]
    except _TraceFailed as exc:
        whole = exc
    inputs = _module_inputs(model, example)
    parts: list[TracedPart] = []
    failed: dict[nn.Module, str] = {}
    _collect_parts(model, "", inputs, parts, failed, set())
    names = {m: n for n, m in model.named_modules()}
    opaque = [m for m in failed if not any(d in failed for d in m.modules() if d is not m)]
    if whole.culprit is not None and whole.culprit is not model and not any(whole.culprit in set(m.modules())
                                                                            for m in opaque):
        opaque.append(whole.culprit)  # a custom op without prunable layers, that tracing fails in
        failed[whole.culprit] = str(whole)
    why = "; ".join(f"torch-pruning cannot follow {names.get(m)} ({type(m).__name__}): {failed[m]}"
                    for m in opaque[:3]) or f"torch-pruning cannot follow the model: {whole}"
    try:
        graph, ignored = _graph(model, example, opaque=opaque)
        inside = [p for p in parts if any(_is_within(p.module, m) for m in opaque)]
        parts = [TracedPart("", model, example, graph, ignored, opaque)] + inside
    except _TraceFailed:
        restore_classes(model)
    if not parts:
        raise ModelLoadError(f"this model cannot be pruned structurally: {why}") from None
    for part in parts:
        part.note = why
    log.info("torch-pruning cannot trace the whole model (%s); pruning around %d opaque modules (%s) and "
             "inside them", whole, len(opaque), ", ".join(sorted({type(m).__name__ for m in opaque})))
    log.debug("opaque modules: %s", ", ".join(names.get(m, "?") for m in opaque))
    return parts



class _TraceFailed(Exception):
    def __init__(self, message: str, culprit: nn.Module | None = None):
        super().__init__(message)
        self.culprit = culprit


def _is_within(module: nn.Module, ancestor: nn.Module) -> bool:
    return any(m is module for m in ancestor.modules())


CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


def _collect_parts(module: nn.Module, prefix: str, inputs: dict[nn.Module, torch.Tensor], parts: list[TracedPart],
                   failed: dict[nn.Module, str], failed_types: set[type]) -> None:
    """Depth first: each child traced alone if it can be, else its children. A module holding a module of a
    type that already failed is not tried (each try may take the trace's time limit)."""
    for name, child in module.named_children():
        full = f"{prefix}.{name}" if prefix else name
        if not any(isinstance(m, PRUNABLE) for m in child.modules()):
            continue
        x = inputs.get(child)
        hopeless = any(type(m) in failed_types for m in child.modules())
        if x is not None and not hopeless:
            try:
                graph, _ = _graph(child, x, part=True)
                parts.append(TracedPart(full, child, x, graph, _boundary_layers(graph)))
                continue
            except _TraceFailed as exc:
                failed[child] = str(exc)
                if not isinstance(child, CONTAINERS):
                    failed_types.add(type(child))
        else:
            failed[child] = "not traced alone"
        _collect_parts(child, full, inputs, parts, failed, failed_types)


class _Cut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return None, None


def _cut_forward(forward):
    """`forward` run without autograd (a custom op that tracing fails in runs as in inference), its output tied
    to its input by one opaque node."""
    def run(*args, **kwargs):
        with torch.no_grad():
            out = forward(*args, **kwargs)
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        return _Cut.apply(x, out) if x is not None and isinstance(out, torch.Tensor) else out

    return run


_OPAQUE_CLASSES: dict[type, type] = {}


def _opaque_class(cls: type) -> type:
    if getattr(cls, "_edgeprune_opaque", False):
        return cls
    if cls not in _OPAQUE_CLASSES:
        _OPAQUE_CLASSES[cls] = type(f"Opaque{cls.__name__}", (cls,), {"_edgeprune_opaque": True})
    return _OPAQUE_CLASSES[cls]


def restore_classes(model: nn.Module) -> None:
    """Undo _opaque_class on every module (the pruned model must pickle and export as its own types)."""
    for m in model.modules():
        if getattr(type(m), "_edgeprune_opaque", False):
            m.__class__ = type(m).__bases__[0]


def _opaque_pruner(channels: dict[nn.Module, tuple[int, int]]):
    """A torch-pruning custom pruner that makes a module a leaf of the graph with fixed widths."""
    import torch_pruning as tp

    class Opaque(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer, idxs):
            raise RuntimeError("an opaque module cannot be pruned")

        prune_in_channels = prune_out_channels

        def get_out_channels(self, layer):
            return channels[layer][1]

        def get_in_channels(self, layer):
            return channels[layer][0]

    return Opaque()


def _module_inputs(model: nn.Module, example: torch.Tensor) -> dict[nn.Module, torch.Tensor]:
    """The input each submodule saw on `example`, for those called once with a single tensor."""
    seen: dict[nn.Module, torch.Tensor | None] = {}

    def hook(mod, args, kwargs):
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        one = len(args) == 1 and len(tensors) == 1 and not kwargs
        seen[mod] = tensors[0].detach().clone() if one and mod not in seen else None

    _run_hooked(model, example, [m.register_forward_pre_hook(hook, with_kwargs=True) for m in model.modules()
                                 if m is not model])
    return {m: x for m, x in seen.items() if x is not None}


def _module_widths(model: nn.Module, example: torch.Tensor, modules) -> dict[nn.Module, tuple[int, int]]:
    """(input channels, output channels) each of `modules` saw on `example`."""
    out: dict[nn.Module, tuple[int, int]] = {}

    def hook(mod, args, result):
        x = next((a for a in args if isinstance(a, torch.Tensor)), None)
        y = result if isinstance(result, torch.Tensor) else None
        out[mod] = (x.shape[1] if x is not None and x.dim() > 1 else 0,
                    y.shape[1] if y is not None and y.dim() > 1 else 0)

    _run_hooked(model, example, [m.register_forward_hook(hook) for m in modules])
    return out


def _boundary_layers(graph) -> list[nn.Module]:
    """Prunable layers whose output reaches the part's output (or meets its input) without passing through
    another prunable layer: their widths are the part's interface with the rest of the model."""
    prunable = (*PRUNABLE, nn.MultiheadAttention)
    sinks = [node for node in graph.module2node.values() if not node.outputs]
    out, stack, seen = [], list(sinks), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if isinstance(node.module, prunable):
            out.append(node.module)
            continue
        stack.extend(node.inputs)
    return out


def _graph(model: nn.Module, example: torch.Tensor, part: bool = False, opaque: Sequence[nn.Module] = ()):
    """torch-pruning's dependency graph of `model`, with every group resolved once (that is where a graph it
    misreads shows: on Swin's channels-last window reshapes, its index mapping grows without end; upstream
    torch-pruning lists Swin as unsupported). Resolving is bounded in time; a graph that does not resolve in
    time counts as untraceable, and the caller prunes inside smaller parts instead."""
    import torch_pruning as tp

    try:
        ignored = [] if part else _output_layers(model, example)
        start = time.monotonic()
        custom = None
        if opaque:
            # torch-pruning keys custom pruners by type (keyed by instance, its tracer passes the instance to
            # isinstance and fails), so each opaque instance gets a subclass of its own type for the trace.
            pruner = _opaque_pruner(_module_widths(model, example, opaque))
            for m in opaque:
                m.__class__ = _opaque_class(type(m))
            custom = {type(m): pruner for m in opaque}
        # An opaque module's output is cut from the autograd graph inside it (torch-pruning traces grad_fns, so
        # a leaf module's internals would otherwise still be traced): it depends on the module's input only.
        for m in opaque:
            m.forward = _cut_forward(m.forward)
        try:
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False,
                                                          customized_pruners=custom)
        finally:
            for m in opaque:
                del m.forward  # the instance attribute: the class's forward again
        limit = max(GROUP_MIN_S, GROUP_PER_BUILD * (time.monotonic() - start))
        with _time_limit(limit) as rearm:
            for _ in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
                rearm()  # the limit is per group: a large graph has many groups, each resolved quickly
    except Exception as exc:
        raise _TraceFailed(f"{type(exc).__name__}: {first_line(exc).rstrip('.')}", _culprit(model, exc)) from None
    return graph, ignored


def _culprit(model: nn.Module, exc: BaseException) -> nn.Module | None:
    """The innermost module of `model` whose forward was running when tracing failed (from the traceback)."""
    inside = set(model.modules())
    found = None
    tb = exc.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if isinstance(owner, nn.Module) and owner in inside and tb.tb_frame.f_code.co_name == "forward":
            found = owner
        tb = tb.tb_next
    return found


GROUP_MIN_S = 10.0  # one group of a graph torch-pruning reads right resolves in well under a second
GROUP_PER_BUILD = 10.0


class _TimeLimit(Exception):
    def __str__(self) -> str:
        return "torch-pruning's dependency groups did not resolve in time (an unsupported reshape)"


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _TimeLimit after `seconds` of wall time, counted afresh each time the yielded rearm() is called
    (SIGALRM: main thread only; elsewhere no limit)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield lambda: None
        return

    def expire(signum, frame):
        raise _TimeLimit()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield lambda: signal.setitimer(signal.ITIMER_REAL, seconds)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The last conv/linear to run produces the class scores: its output width must stay."""
    order: list[nn.Module] = []
    _run_hooked(model, example, [m.register_forward_hook(lambda mod, i, o: order.append(mod))
                                 for m in model.modules() if isinstance(m, PRUNABLE)])
    return order[-1:]


def _run_hooked(model: nn.Module, example: torch.Tensor, hooks) -> None:
    """One forward pass on `example` with `hooks` registered, removed after whatever happens."""
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
