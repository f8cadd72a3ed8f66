"""The memory-constrained policy: the latency-sensitive search over the memory ratio (weights or the runtime's
peak against the budget). Memory falls faster with width than latency does (weights go as width squared in
the middle of a network), so the first guess assumes a steeper curve."""
from __future__ import annotations

from typing import Callable, Hashable

from ...registry import POLICIES
from .latency import LatencySensitivePolicy


@POLICIES.register("memory-constrained")
class MemoryConstrainedPolicy(LatencySensitivePolicy):
    name = "memory-constrained"

    def __init__(self, target_ratio: float, max_iterations: int, signature: Callable[[float], Hashable],
                 max_ratio: float = 0.98, initial_k: float = 2.0, **kwargs):
        super().__init__(target_ratio, max_iterations, signature, max_ratio=max_ratio, initial_k=initial_k,
                         **kwargs)
