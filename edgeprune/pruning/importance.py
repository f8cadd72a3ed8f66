"""Importance criteria: callables from a torch-pruning group to one score per channel (higher = keep).

They are torch-pruning's own Importance classes where it has them, so any criterion plugs into the same pruner.
"""
from __future__ import annotations

from typing import Callable

from ..errors import ConfigError

CRITERIA = ("l1", "l2", "bn-scale", "random")


def make_importance(name: str) -> Callable:
    import torch_pruning as tp

    factories: dict[str, Callable[[], Callable]] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1, group_reduction="mean", normalizer=None),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2, group_reduction="mean", normalizer=None),
        "bn-scale": lambda: tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None),
        "random": lambda: tp.importance.RandomImportance(),
    }
    if name not in factories:
        raise ConfigError(f"unknown criterion {name!r}: use one of {', '.join(CRITERIA)}")
    return factories[name]()
