"""Structural filter pruning over torch-pruning's dependency graph.

Widths are chosen per layer here, not by torch-pruning's global ratio + round_to: its round_to rounds the kept
count down (a 16-channel layer drops to 8 at the smallest ratio) and silently skips a group that rounds to 0.
Here every root layer's kept width is the nearest multiple of the device's channel multiple, never zero
(widths.py). How a model is traced, whole or in parts around the modules torch-pruning cannot follow, is in
trace.py.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ..errors import ConfigError, ModelLoadError
from .importance import make_importance
from .trace import PRUNABLE, TracedPart, restore_classes, trace_parts
from .widths import DEEPEST_RATIO, group_width, round_width

__all__ = ["DEEPEST_RATIO", "PruneResult", "RootGroup", "group_width", "prunable_groups", "prunable_widths",
           "prune_model", "round_width"]

log = logging.getLogger(__name__)



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



@dataclass
class RootGroup:
    """One group of coupled channels, named by its root layer (the full name in the model)."""
    name: str
    root: nn.Module
    group: Any
    graph: Any
    channels: int
    channel_groups: int  # >1: grouped conv / attention heads / GroupNorm: every channel group keeps the same slots



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


def root_groups(model: nn.Module, example: torch.Tensor, parts: list[TracedPart] | None = None):
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

