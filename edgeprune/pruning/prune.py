"""Structural filter pruning over torch-pruning's dependency graph.

Widths are chosen per layer here, not by torch-pruning's global ratio + round_to: its round_to rounds the kept
count down (a 16-channel layer drops to 8 at the smallest ratio) and silently skips a group that rounds to 0.
Here every root layer's kept width is the nearest multiple of the device's channel multiple, never zero.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

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
    never zero. At the deepest ratio only, the narrowest width is half a multiple when the multiple is 8 or more:
    a layer narrower than one SIMD block is not padded up to it (measured here on AVX-512, multiple 16: ResNet-56
    with 8 channels in its first stage ran 13-21% faster than with 16), so it is the last resort when one
    multiple everywhere is still over budget. At ordinary ratios it is not used: a 16-channel layer would halve
    at ratio 0.25 and MACs would fall much faster than latency."""
    floor = multiple // 2 if multiple >= 8 else multiple
    if ratio <= 0.0 or channels <= floor:
        return channels
    if ratio >= DEEPEST_RATIO:
        return floor
    if channels <= multiple:
        return channels
    target = channels * (1.0 - ratio)
    candidates = {c for c in range(multiple, channels + 1, multiple)} | {channels}
    return int(min(candidates, key=lambda c: (abs(c - target), -c)))


def prunable_widths(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Output width of every root layer the pruner may shrink (the classifier output excluded)."""
    graph, ignored = _graph(copy.deepcopy(model).eval(), example)  # tracing must not touch the caller's model
    out = {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        root = group[0].dep.target.module
        out[graph._module2name[root]] = graph.get_pruner_of_module(root).get_out_channels(root)
    return out


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
    graph, ignored = _graph(model, example)
    before, after = {}, {}
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=PRUNABLE):
        root = group[0].dep.target.module
        name = graph._module2name[root]
        pruner = graph.get_pruner_of_module(root)
        n = pruner.get_out_channels(root)
        target = widths.get(name, n) if widths is not None else round_width(n, ratio, multiple)
        target = max(1, min(n, int(target)))
        before[name] = n
        after[name] = target
        if target >= n:
            continue
        with torch.no_grad():
            scores = importance(group)
        if scores is None or len(scores) != n:  # a group the criterion cannot score: keep it whole
            log.warning("criterion cannot score %s; left unpruned", name)
            after[name] = n
            continue
        drop = torch.argsort(scores.float(), stable=True)[: n - target].tolist()
        graph.get_pruning_group(root, pruner.prune_out_channels, sorted(drop)).prune()
    return PruneResult(model, ratio, before, after, [graph._module2name[m] for m in ignored if m in graph._module2name])


def _graph(model: nn.Module, example: torch.Tensor):
    import torch_pruning as tp

    ignored = _output_layers(model, example)
    try:
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:
        raise ModelLoadError(f"torch-pruning cannot trace this model ({type(exc).__name__}: {exc}); "
                             "models with data-dependent control flow cannot be pruned structurally") from None
    return graph, ignored


def _output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The last conv/linear to run produces the class scores: its output width must stay."""
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in model.modules()
             if isinstance(m, PRUNABLE)]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return order[-1:]
