"""Policies steer the loop: a first step, then after each measured attempt the next step or a stop with its reason.

The latency-sensitive policy searches the pruning ratio so that the measured latency lands just under the
budget (objective: the best accuracy, so no deeper than needed). Latency is modelled as a power of the kept
width fraction, latency/baseline = (1 - ratio)^k, with k fitted to what was measured: first from the last
attempt, then by interpolating between the closest attempts over and under the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Hashable, Sequence


@dataclass(frozen=True)
class Step:
    ratio: float
    reason: str


@dataclass(frozen=True)
class Stop:
    reason: str
    budget_met: bool


@dataclass(frozen=True)
class Attempt:
    """What the policy needs to know of a measured attempt."""

    ratio: float
    latency_ratio: float  # measured latency / unpruned latency (paired, interleaved measurement)
    met: bool
    signature: Hashable  # the widths it produced: two ratios with one signature are the same model
    accuracy: float | None = None
    deepest: bool = False


class LatencySensitivePolicy:
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
        step = self._extrapolate(lo, goal, seen) if hi is None else self._interpolate(lo, hi, goal, seen)
        if step is None:
            return Stop("no model between the closest attempts over and under budget is reachable at this "
                        "channel multiple" + ("; the best attempt that meets the budget is kept" if met else ""),
                        bool(met))
        return step

    def _extrapolate(self, lo: Attempt, goal: float, seen: set) -> Step | None:
        k = _exponent(lo.ratio, lo.latency_ratio) or self.initial_k
        r = 1.0 - goal ** (1.0 / k)
        r = max(r, lo.ratio + 0.1 * (1.0 - lo.ratio))  # move at least a tenth of what is left
        if r >= self.max_ratio:
            deepest = Step(self.max_ratio, "deepest pruning the model allows")
            return deepest if self.signature(self.max_ratio) not in seen else None
        return self._unseen(r, lo.ratio, self.max_ratio, seen, f"extrapolated with latency ~ width^{k:.2f}")

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
        candidates = sorted({min(high, max(low, r + d)) for d in _offsets(high - low)}, key=lambda c: abs(c - r))
        for c in candidates:
            if low < c < high and self.signature(c) not in seen:
                return Step(c, reason)
        return None


def _exponent(ratio: float, latency_ratio: float) -> float | None:
    if not 0.0 < ratio < 1.0 or not 0.0 < latency_ratio < 1.0:
        return None
    return max(0.3, min(3.0, math.log(latency_ratio) / math.log(1.0 - ratio)))


def _offsets(span: float) -> list[float]:
    step = max(span / 40.0, 1e-3)
    return [0.0] + [s * i * step for i in range(1, 40) for s in (1, -1)]


def choose_final(history: Sequence[Attempt], accuracy_resolution: float = 0.0) -> int | None:
    """Index of the attempt to ship: among those meeting the budget the most accurate; attempts within
    `accuracy_resolution` of the best (one validation image) count as equal, and the least pruned wins."""
    met = [(i, a) for i, a in enumerate(history) if a.met]
    if not met:
        return None
    if all(a.accuracy is not None for _, a in met):
        best = max(a.accuracy for _, a in met)
        met = [(i, a) for i, a in met if a.accuracy >= best - accuracy_resolution - 1e-9]
    return max(met, key=lambda ia: ia[1].latency_ratio)[0]
