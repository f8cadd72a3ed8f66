"""The latency-sensitive policy searches the pruning ratio so that the measured latency lands just under the
budget (objective: the best accuracy, so no deeper than needed). Latency is modelled as a power of the kept
width fraction, latency/baseline = (1 - ratio)^k, with k fitted to what was measured: first from the last
attempt, then by interpolating between the closest attempts over and under the budget.
"""
from __future__ import annotations

import math
from typing import Callable, Hashable, Sequence

from ...registry import POLICIES
from .base import Attempt, Measured, Step, Stop, choose_final, nearest_unseen


@POLICIES.register("latency-sensitive")
class LatencySensitivePolicy:
    """Prune no deeper than needed to bring the constrained cost (latency and/or memory) under its budget."""

    name = "latency-sensitive"

    def __init__(self, target_ratio: float, max_iterations: int, signature: Callable[[float], Hashable],
                 land_within: float = 0.10, aim: float = 0.95, max_ratio: float = 0.98, initial_k: float = 1.5):
        self.target = target_ratio
        self.max_iterations = max_iterations
        self.signature = signature
        self.land_within = land_within
        self.aim = aim
        self.max_ratio = max_ratio
        self.initial_k = initial_k

    def first_step(self) -> Step | Stop:
        if self.target >= 1.0:
            return Stop("the unpruned model already meets the budget", True)
        r = 1.0 - (self.aim * self.target) ** (1.0 / self.initial_k)
        step = None
        if r < self.max_ratio:
            step = self._unseen(r, 0.0, self.max_ratio, {self.signature(0.0)},
                                f"first guess from latency ~ width^{self.initial_k:g}")
        if step is None and self.signature(self.max_ratio) != self.signature(0.0):
            step = Step(self.max_ratio, "deepest pruning the model allows")
        return step or Stop("no layer can be pruned at this channel multiple", False)

    def next_step(self, history: Sequence[Attempt]) -> Step | Stop:
        last = history[-1]
        met = [a for a in history if a.met]
        if last.met and last.latency_ratio >= (1.0 - self.land_within) * self.target:
            return Stop(f"budget met: measured latency within {self.land_within:.0%} under the budget", True)
        if len(history) >= self.max_iterations:
            return Stop(f"iteration cap ({self.max_iterations}) reached" +
                        ("; the best attempt that meets the budget is kept" if met else " without meeting the budget"),
                        bool(met))
        over = [a for a in history if not a.met]
        if over and max(over, key=lambda a: a.ratio).deepest:
            return Stop("budget unreachable: even the deepest pruning the model allows is over budget", bool(met))
        seen = {a.signature for a in history} | {self.signature(0.0)}  # the unpruned model is no attempt
        lo = max(over, key=lambda a: a.ratio) if over else None
        hi = min(met, key=lambda a: a.ratio) if met else None
        goal = self.aim * self.target
        step = (self._extrapolate(lo, goal, seen, _plateau(over)) if hi is None
                else self._interpolate(lo, hi, goal, seen))
        if step is None:
            return Stop("no model between the closest attempts over and under budget is reachable at this "
                        "channel multiple" + ("; the best attempt that meets the budget is kept" if met else ""),
                        bool(met))
        return step

    def _extrapolate(self, lo: Attempt, goal: float, seen: set, plateau: bool = False) -> Step | None:
        k = _exponent(lo.ratio, lo.latency_ratio) or self.initial_k
        r = 1.0 - goal ** (1.0 / k)
        r = max(r, lo.ratio + 0.1 * (1.0 - lo.ratio))  # move at least a tenth of what is left
        if plateau:  # pruning deeper stopped buying time: the next drop is further on, so halve what is left
            r = max(r, 0.5 * (lo.ratio + self.max_ratio))
        deepest = None if self.signature(self.max_ratio) in seen else Step(self.max_ratio,
                                                                            "deepest pruning the model allows")
        if r >= self.max_ratio:
            return deepest
        # nothing new below the deepest step (widths already at one multiple): the deepest is what is left
        return self._unseen(r, lo.ratio, self.max_ratio, seen, f"extrapolated with latency ~ width^{k:.2f}") or deepest

    def _interpolate(self, lo: Attempt | None, hi: Attempt, goal: float, seen: set) -> Step | None:
        lo_r, lo_lat = (lo.ratio, lo.latency_ratio) if lo else (0.0, 1.0)
        x0, x1 = math.log(1.0 - lo_r), math.log(1.0 - hi.ratio)
        y0, y1 = math.log(lo_lat), math.log(hi.latency_ratio)
        t = 0.5 if abs(y1 - y0) < 1e-9 else (math.log(goal) - y0) / (y1 - y0)
        t = min(0.85, max(0.15, t))  # stay inside the bracket: the fit is only local
        r = 1.0 - math.exp(x0 + t * (x1 - x0))
        return self._unseen(r, lo_r, hi.ratio, seen, "interpolated between the closest attempts over and under budget")

    def _unseen(self, r: float, low: float, high: float, seen: set, reason: str) -> Step | None:
        """The ratio nearest to r in (low, high) whose widths differ from every attempt so far."""
        c = nearest_unseen(self.signature, r, low, high, seen)
        return None if c is None else Step(c, reason)

    def observe(self, measured: Measured) -> Attempt:
        """Met when every latency/memory bound is; accuracy is the objective, not a constraint, here."""
        return Attempt(measured.ratio, measured.cost, measured.bounds_met, measured.signature, measured.accuracy,
                       measured.deepest)

    def choose(self, history: Sequence[Measured], accuracy_resolution: float = 0.0) -> int | None:
        return choose_final([Attempt(m.ratio, m.latency_ratio, m.all_met, None, m.accuracy) for m in history],
                            accuracy_resolution)

    def closest(self, history: Sequence[Measured]) -> int:
        """Nothing met every constraint: the lowest constrained cost."""
        return min(range(len(history)), key=lambda i: history[i].cost)


def _plateau(over: Sequence[Attempt], gain: float = 0.02) -> bool:
    """Whether the two deepest attempts over budget measured within `gain` of each other: latency falls in steps
    (ResNet-56 at multiple 8: 0.36x from ratio 0.73 to 0.82, then 0.25-0.28x once a stage reaches half a
    multiple), and a power law fitted on a flat stretch asks for steps too small to leave it."""
    if len(over) < 2:
        return False
    a, b = sorted(over, key=lambda x: x.ratio)[-2:]
    return b.ratio > a.ratio and b.latency_ratio > (1.0 - gain) * a.latency_ratio


def _exponent(ratio: float, latency_ratio: float) -> float | None:
    if not 0.0 < ratio < 1.0 or not 0.0 < latency_ratio < 1.0:
        return None
    return max(0.3, min(3.0, math.log(latency_ratio) / math.log(1.0 - ratio)))
