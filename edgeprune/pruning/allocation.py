"""Per-layer allocation: from one scalar pruning ratio to a kept width for every prunable group.

- uniform: every group loses the same fraction (rounded to the channel multiple).
- global: channels of all groups ranked together by importance normalised within each group (torch-pruning's
  global pruning), so groups with many weak channels lose more.
- sensitivity: each group is damaged alone (half its channels removed, BN recalibrated) and the accuracy drop
  measured on validation images (after SBPF); a group's ratio is scaled down by its sensitivity.
- latency: each group is narrowed alone (half its channels) and the model timed on the target runtime against
  the unpruned one (after NetAdapt's per-layer empirical measurements and HALP's latency-aware allocation, in one
  shot rather than their iterative searches); a group's ratio is scaled up by the latency its channels carry, so
  channels are removed where the measured time goes, not where the MACs are.
The loop searches the scalar; an Allocator turns it into widths, always the same way within one build.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..registry import ALLOCATIONS
from .prune import prunable_groups, prune_model, root_groups
from .widths import DEEPEST_RATIO, group_width

log = logging.getLogger(__name__)

class Allocator:
    def __init__(self, model: nn.Module, example: torch.Tensor, multiple: int, allocation: str = "uniform",
                 criterion: str = "l1", batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
                 evaluate: Callable[[nn.Module], float] | None = None,
                 recalibrate: Callable[[nn.Module], None] | None = None,
                 measure: Callable[[dict[str, int]], float] | None = None):
        prepare = ALLOCATIONS.get(allocation)  # refuses an unknown name, listing the known ones
        self.allocation, self.multiple = allocation, multiple
        groups = prunable_groups(model, example)
        self.full = {name: channels for name, (channels, _) in groups.items()}
        self.slices = {name: slices for name, (_, slices) in groups.items()}
        self.scales = {name: 1.0 for name in self.full}
        self.sensitivity: dict[str, float] = {}
        self.latency_saving: dict[str, float] = {}
        self.scores: dict[str, np.ndarray] = {}
        prepare(self, model=model, example=example, criterion=criterion, batches=batches, evaluate=evaluate,
                recalibrate=recalibrate, measure=measure)

    def widths(self, ratio: float) -> dict[str, int]:
        if ratio >= DEEPEST_RATIO:  # the deepest step is every group at its narrowest, whatever the allocation
            return {n: self._width(n, DEEPEST_RATIO) for n in self.full}
        if self.scores:  # global: one threshold over the scores of every group
            return self._global(ratio)
        return {n: self._width(n, scaled_ratio(ratio, self.scales[n])) for n in self.full}

    def _width(self, name: str, ratio: float) -> int:
        """Kept channels of one group at `ratio`, rounded as the uniform pruner rounds it (grouped slices alike)."""
        return group_width(self.full[name], ratio, self.multiple, self.slices[name])

    def _global(self, ratio: float) -> dict[str, int]:
        if ratio <= 0:
            return dict(self.full)
        allscores = np.concatenate([self.scores[n] for n in self.full])
        threshold = np.quantile(allscores, ratio)
        out = {}
        for n, c in self.full.items():
            keep_fraction = float((self.scores[n] > threshold).mean())
            out[n] = self._width(n, 1.0 - keep_fraction)
        return out

    def describe(self) -> dict:
        return {"allocation": self.allocation, "channel_multiple": self.multiple, "scales": self.scales,
                "sensitivity": self.sensitivity or None, "latency_saving": self.latency_saving or None}


# Each allocation registered once by name: what it measures up front, on the Allocator it prepares.
@ALLOCATIONS.register("uniform")
def _uniform(alloc: Allocator, **_: object) -> None:
    """Every group loses the same fraction: nothing to measure."""


@ALLOCATIONS.register("global")
def _global_scores(alloc: Allocator, *, model, example, criterion, batches, **_: object) -> None:
    alloc.scores = group_scores(model, example, criterion, batches)


@ALLOCATIONS.register("sensitivity")
def _sensitivity(alloc: Allocator, *, model, example, criterion, batches, evaluate, recalibrate,
                 **_: object) -> None:
    if evaluate is None:
        raise ConfigError("sensitivity allocation needs labeled data to measure accuracy: give --data")
    alloc.sensitivity = measure_sensitivity(model, example, alloc.multiple, criterion, batches, evaluate,
                                            recalibrate, alloc.full, alloc.slices)
    drops = np.array([max(alloc.sensitivity[n], 0.0) for n in alloc.full])
    weights = 1.0 / (drops + max(0.5, 0.1 * drops.max()))  # smoothed: a zero drop is not infinitely safe
    weights = weights / weights.mean()
    alloc.scales = {n: float(w) for n, w in zip(alloc.full, weights)}


@ALLOCATIONS.register("latency")
def _latency(alloc: Allocator, *, measure, **_: object) -> None:
    if measure is None:
        raise ConfigError("latency allocation needs a runtime to time the model on: use a device whose "
                          "runner can run here (edgeprune devices)")
    alloc.latency_saving = measure_latency_saving(alloc.full, alloc.multiple, measure, alloc.slices)
    alloc.scales = latency_scales(alloc.full, alloc.multiple, alloc.latency_saving, slices=alloc.slices)


def group_scores(model: nn.Module, example: torch.Tensor, criterion: str,
                 batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None) -> dict[str, np.ndarray]:
    """Per-group channel importance, each divided by its group's mean so groups are comparable."""
    import copy

    from .importance import make_importance

    model = copy.deepcopy(model).eval()
    importance = make_importance(criterion)
    if hasattr(importance, "prepare"):
        if not batches:
            raise ConfigError(f"criterion {criterion} needs calibration data: give --data")
        importance.prepare(model, batches)
    out = {}
    for rg in root_groups(model, example):
        name = rg.name
        with torch.no_grad():
            s = importance(rg.group)
        s = np.ones(1) if s is None else s.detach().float().numpy()
        out[name] = s / (s.mean() + 1e-12)
    return out


def measure_sensitivity(model: nn.Module, example: torch.Tensor, multiple: int, criterion: str,
                        batches, evaluate: Callable[[nn.Module], float],
                        recalibrate: Callable[[nn.Module], None] | None, full: dict[str, int],
                        slices: dict[str, int]) -> dict[str, float]:
    """Accuracy drop (points) when each group alone (`full`: the prunable widths, `slices`: their channel groups)
    loses half its channels."""
    base = evaluate(model)
    out = {}
    for name, c in full.items():
        kept = group_width(c, 0.5, multiple, slices[name])
        if kept >= c:
            out[name] = 0.0
            continue
        damaged = prune_model(model, example, 0.0, multiple, criterion, widths={**full, name: kept},
                              batches=batches).model
        if recalibrate:
            recalibrate(damaged)
        out[name] = base - evaluate(damaged)
        log.debug("sensitivity %s: %.2f points", name, out[name])
    return out


def scaled_ratio(ratio: float, scale: float) -> float:
    """A group's ratio for the searched `ratio` and its scale: 1 - (1 - ratio)^scale keeps the fraction *kept*
    multiplicative, so a group scaled below 1 is pruned less yet still approaches its narrowest width as the
    search goes deeper (ratio x scale, capped, left such groups far from it and a budget out of reach)."""
    return min(1.0 - (1.0 - ratio) ** scale, DEEPEST_RATIO - 1e-6)


PROBE_RATIO = 0.5  # how far each group is narrowed, alone, to see what its channels cost in time


def measure_latency_saving(full: dict[str, int], multiple: int, measure: Callable[[dict[str, int]], float],
                           slices: dict[str, int] | None = None) -> dict[str, float]:
    """Fraction of the unpruned latency saved when each group alone loses half its channels (rounded to the
    channel multiple), as `measure(widths)` (the candidate / baseline ratio on the target runtime) reports."""
    out = {}
    for name, c in full.items():
        kept = _probe_width(name, c, multiple, slices)
        if kept >= c:
            out[name] = 0.0
            continue
        out[name] = 1.0 - measure({**full, name: kept})
        log.debug("latency probe %s: %d -> %d channels saves %.1f%%", name, c, kept, 100 * out[name])
    return out


def _probe_width(name: str, channels: int, multiple: int, slices: dict[str, int] | None) -> int:
    """The width a latency probe narrows a group to: the probe and the scales read from it must agree."""
    return group_width(channels, PROBE_RATIO, multiple, (slices or {}).get(name, 1))


def latency_scales(full: dict[str, int], multiple: int, saving: dict[str, float], floor: float = 0.005,
                   bounds: tuple[float, float] = (0.25, 2.5), slices: dict[str, int] | None = None) -> dict[str, float]:
    """Per-group ratio scales from measured savings per channel removed: a group whose channels carry more
    time is pruned harder. Savings under `floor` (timing noise) count as the floor; scales average 1 over the
    groups that can be narrowed and stay within `bounds`."""
    eff = {}
    for name, c in full.items():
        removed = 1.0 - _probe_width(name, c, multiple, slices) / c
        if removed > 0:
            eff[name] = max(saving.get(name, 0.0), floor) / removed
    if not eff:
        return {n: 1.0 for n in full}
    mean = float(np.mean(list(eff.values())))
    return {n: float(np.clip(eff[n] / mean, *bounds)) if n in eff else 1.0 for n in full}
