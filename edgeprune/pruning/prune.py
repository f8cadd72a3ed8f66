"""Structural filter pruning over torch-pruning's dependency graph.

Widths are chosen per layer here, not by torch-pruning's global ratio + round_to: its round_to rounds the kept
count down (a 16-channel layer drops to 8 at the smallest ratio) and silently skips a group that rounds to 0.
Here every root layer's kept width is the nearest multiple of the device's channel multiple, never zero.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from .importance import make_importance

log = logging.getLogger(__name__)

PRUNABLE = (nn.Conv2d, nn.Linear)


@dataclass
class PruneResult:
    model: nn.Module
    ratio: float
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    kept_layers: list[str] = field(default_factory=list)  # layers not pruned (the classifier output)

    @property
    def changed(self) -> int:
        return sum(self.widths_after[k] != v for k, v in self.widths_before.items())


DEEPEST_RATIO = 0.98  # the policies' deepest step: every layer at its narrowest allowed width


def round_width(channels: int, ratio: float, multiple: int) -> int:
    """Kept channels after removing `ratio` of `channels`: the nearest multiple of `multiple` (ties keep more),
    never zero. When the multiple is 8 or more, the narrowest width is half a multiple, used only where the
    unrounded width is at or below it (and for every layer at the deepest ratio): a layer narrower than one SIMD
    block is not padded up to it (measured here on AVX-512, multiple 16: ResNet-56 with 8 channels in its first
    stage ran 13-21% faster than with 16). Rounding to it from above would halve a 16-channel layer at ratio
    0.25, where MACs fall much faster than latency; never using it short of the deepest ratio left no model
    between one multiple everywhere and half a multiple everywhere (measured: ResNet-56 at multiple 8 ran 0.36x
    and 0.21x of its unpruned latency, with nothing between for a 0.35x budget to land on)."""
    floor = multiple // 2 if multiple >= 8 else multiple
    if ratio <= 0.0 or channels <= floor:
        return channels
    target = channels * (1.0 - ratio)
    if ratio >= DEEPEST_RATIO or target <= floor:
        return floor
    if channels <= multiple:
        return channels
    candidates = {c for c in range(multiple, channels + 1, multiple)} | {channels}
    return int(min(candidates, key=lambda c: (abs(c - target), -c)))


@dataclass
class RootGroup:
    """One group of coupled channels, named by its root layer (the full name in the model)."""
    name: str
    root: nn.Module
    group: Any
    graph: Any
    channels: int
    channel_groups: int  # >1: grouped conv / attention heads / GroupNorm: every channel group keeps the same slots


@dataclass
class _Part:
    """A module traced by torch-pruning with its own example input: the whole model, or (when the whole model
    cannot be traced) the largest submodules that can, each with its boundary widths fixed."""
    prefix: str
    module: nn.Module
    example: torch.Tensor
    graph: Any
    ignored: list[nn.Module]
    opaque: list[nn.Module] = field(default_factory=list)  # leaves of the graph: groups reaching them stay whole
    note: str = ""  # why the whole model could not be traced, when it could not


def prunable_widths(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Output width of every root layer the pruner may shrink (the classifier output excluded)."""
    return {name: channels for name, (channels, _) in prunable_groups(model, example).items()}


def prunable_groups(model: nn.Module, example: torch.Tensor) -> dict[str, tuple[int, int]]:
    """Every root layer the pruner may shrink: (output width, channel groups), the channel groups being the
    equal slices a grouped conv or attention heads keep (1 for an ordinary layer); see group_width."""
    model = copy.deepcopy(model).eval()  # tracing must not touch the caller's model
    parts = trace_parts(model, example)
    widths = {g.name: (g.channels, g.channel_groups) for g in root_groups(model, example, parts)}
    restore_classes(model)
    if not widths:
        note = next((p.note for p in parts if p.note), "")
        why = f"{note}, and no layer outside it can be pruned alone" if note else (
            "it has no convolution or linear layer (other than the classifier output) whose output channels can "
            "be removed")
        raise ModelLoadError(f"nothing in this model can be pruned: {why}")
    return widths


def root_groups(model: nn.Module, example: torch.Tensor, parts: list[_Part] | None = None):
    """Every prunable group of `model` (traced in place), in a fixed order."""
    for part in parts if parts is not None else trace_parts(model, example):
        real = set(part.module.modules())
        for group in part.graph.get_all_groups(ignored_layers=part.ignored, root_module_types=PRUNABLE):
            root = group[0].dep.target.module
            if part.prefix and _touches_input(part.graph, group, real):
                continue  # would narrow the part's input, which the rest of the model still feeds at full width
            if part.opaque and any(dep.target.module in part.opaque for dep, _ in group):
                continue
            pruner = part.graph.get_pruner_of_module(root)
            name = part.graph._module2name[root]
            name = f"{part.prefix}.{name}" if part.prefix else name
            yield RootGroup(name, root, group, part.graph, pruner.get_out_channels(root),
                            _channel_groups(part.graph, group))


def group_width(channels: int, ratio: float, multiple: int, channel_groups: int = 1) -> int:
    """round_width for a group whose channels come in `channel_groups` equal slices (grouped conv, heads):
    each slice is narrowed alike, and the total stays a multiple of `multiple` where a slice width allows."""
    if channel_groups <= 1 or channels % channel_groups:
        return round_width(channels, ratio, multiple)
    per = channels // channel_groups
    if per % multiple == 0:
        # Slices already a multiple wide stay so: ONNX Runtime's grouped convolution runs far slower on slices
        # that are not a multiple of the SIMD block (benchmarks/grouped_conv.py, AVX-512: 88 per group ran at
        # 44 GMAC/s, 80 and 96 at 64-66; RegNetX-1.6GF pruned 24 -> 16 per group gained 2.38x). Half a multiple
        # per slice, which round_width allows short of the deepest ratio for ordinary layers, is kept for the
        # deepest ratio here: grouped slices that narrow are not measured.
        kept = round_width(per, ratio, multiple)
        if kept < multiple and ratio < DEEPEST_RATIO:
            kept = multiple
        return channel_groups * kept
    step = max(1, multiple // math.gcd(multiple, channel_groups))
    return channel_groups * round_width(per, ratio, step)


def prune_model(model: nn.Module, example: torch.Tensor, ratio: float = 0.0, multiple: int = 1,
                criterion: str | Callable = "l1", widths: dict[str, int] | None = None,
                batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None) -> PruneResult:
    """A pruned copy of `model`: each group of coupled channels cut to its target width by lowest importance.

    `ratio` applies to every group; `widths` (root layer name -> kept channels) overrides it per layer.
    `batches` (images, labels) feed the data-driven criteria (activation, taylor).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"pruning ratio must be in [0, 1), got {ratio}")
    model = copy.deepcopy(model).eval()
    importance = make_importance(criterion) if isinstance(criterion, str) else criterion
    if hasattr(importance, "prepare"):
        if not batches:
            name = criterion if isinstance(criterion, str) else type(criterion).__name__
            raise ConfigError(f"criterion {name} needs calibration data: give --data")
        importance.prepare(model, batches)
    parts = trace_parts(model, example)
    before, after = {}, {}
    for rg in list(root_groups(model, example, parts)):
        n, slices = rg.channels, rg.channel_groups
        target = widths.get(rg.name, n) if widths is not None else group_width(n, ratio, multiple, slices)
        target = max(1, min(n, int(target)))
        if slices > 1 and n % slices == 0:
            target = max(slices, target - target % slices)
        before[rg.name] = n
        after[rg.name] = target
        if target >= n:
            continue
        pruner = rg.graph.get_pruner_of_module(rg.root)
        group = rg.graph.get_pruning_group(rg.root, pruner.prune_out_channels, list(range(n)))
        with torch.no_grad():
            scores = importance(group)
        if scores is None or len(scores) != n:  # a group the criterion cannot score: keep it whole
            log.warning("criterion cannot score %s; left unpruned", rg.name)
            after[rg.name] = n
            continue
        drop = _drop_indices(scores.float(), n - target, slices)
        rg.graph.get_pruning_group(rg.root, pruner.prune_out_channels, drop).prune()
    restore_classes(model)
    for part in parts:
        _sync_attributes(part.module)
    kept = [f"{p.prefix}.{p.graph._module2name[m]}".lstrip(".") for p in parts for m in p.ignored
            if m in p.graph._module2name]
    return PruneResult(model, ratio, before, after, kept)


def _drop_indices(scores: torch.Tensor, count: int, slices: int) -> list[int]:
    """The `count` least important channels; with slices, the same slots in every slice (scores averaged over
    slices, as torch-pruning does for grouped convolutions) so every slice keeps an equal width."""
    n = len(scores)
    if slices <= 1 or n % slices:
        return sorted(torch.argsort(scores, stable=True)[:count].tolist())
    per = n // slices
    slots = torch.argsort(scores.view(slices, per).mean(0), stable=True)[: count // slices].tolist()
    return sorted(s * per + slot for s in range(slices) for slot in slots)


def _touches_input(graph, group, modules: set[nn.Module]) -> bool:
    """Whether pruning the group changes what the traced module's first layers read from its input: a layer
    with no producer in the graph, pruned on its input side (a depthwise conv or a norm is pruned on both).
    torch-pruning's own nodes without producers (a weight's transpose) are not layers of the module."""
    for dep, _ in group:
        module, node = dep.target.module, dep.target
        if node.inputs or module not in modules:
            continue
        plain = isinstance(module, PRUNABLE) and not (isinstance(module, nn.modules.conv._ConvNd)
                                                      and module.groups == module.out_channels > 1)
        if not (plain and graph.is_out_channel_pruning_fn(dep.handler)):
            return True
    return False


def _channel_groups(graph, group) -> int:
    """How many equal slices the group's channels must keep: a grouped (not depthwise) convolution's groups,
    a GroupNorm's groups, a multi-head attention's heads."""
    found = [1]
    for dep, _ in group:
        module = dep.target.module
        if isinstance(module, nn.MultiheadAttention):
            found.append(module.num_heads)
        elif isinstance(module, nn.modules.conv._ConvNd):
            if 1 < module.groups != module.out_channels:
                found.append(module.groups)
        elif isinstance(module, nn.GroupNorm):
            found.append(module.num_groups)
    return max(found)


def _sync_attributes(model: nn.Module) -> None:
    """Modules that cache a width torch-pruning changed: torchvision's VisionTransformer reshapes its patch
    embedding with self.hidden_dim in forward (torch-pruning's own torchvision example sets it the same way)."""
    for module in model.modules():
        proj = getattr(module, "conv_proj", None)
        if isinstance(proj, nn.Conv2d) and hasattr(module, "hidden_dim"):
            module.hidden_dim = proj.out_channels


def trace_parts(model: nn.Module, example: torch.Tensor) -> list[_Part]:
    """Trace the whole model. Where torch-pruning cannot (channel shuffle, window attention), find the smallest
    submodules it cannot trace, trace the model again with those as opaque leaves (a torch-pruning custom pruner
    per instance; groups that reach one are not pruned), and prune inside each of them the parts it can trace,
    with each part's input and output widths left as they are."""
    try:
        return [_Part("", model, example, *_graph(model, example))]
    except _TraceFailed as exc:
        whole = exc
    inputs = _module_inputs(model, example)
    parts: list[_Part] = []
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
        parts = [_Part("", model, example, graph, ignored, opaque)] + inside
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


def _collect_parts(module: nn.Module, prefix: str, inputs: dict[nn.Module, torch.Tensor], parts: list[_Part],
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
                parts.append(_Part(full, child, x, graph, _boundary_layers(graph)))
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
        raise _TraceFailed(f"{type(exc).__name__}: {_first_line(exc)}", _culprit(model, exc)) from None
    return graph, ignored


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200].rstrip(".") if text else ""


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
