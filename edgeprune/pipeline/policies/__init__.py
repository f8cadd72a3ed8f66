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
    # The constrained cost relative to the unpruned model: the paired latency ratio for a latency budget, the
    # memory ratio for a memory budget, the larger of the two (each over its budget) for both.
    latency_ratio: float
    met: bool
    signature: Hashable  # the widths it produced: two ratios with one signature are the same model
    accuracy: float | None = None
    deepest: bool = False


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
        c = _nearest_unseen(self.signature, r, low, high, seen)
        return None if c is None else Step(c, reason)


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


class AccuracyCriticalPolicy:
    """Prune as far as the deployed artifact's accuracy stays within `max_drop` points of the unpruned one
    (objective: the lowest measured latency). Adaptive steps, after the seed paper: large while the accuracy
    margin is large, smaller near the tolerance; a step that breaks it is rolled back to the last good ratio and
    retried at half the size. Every ratio is pruned from the trained model, so rolling back is exact."""

    name = "accuracy-critical"

    def __init__(self, max_drop: float, baseline_accuracy: float, max_iterations: int,
                 signature: Callable[[float], Hashable], first: float = 0.4, min_step: float = 0.02,
                 max_ratio: float = 0.98):
        self.max_drop, self.baseline = max_drop, baseline_accuracy
        self.max_iterations, self.signature = max_iterations, signature
        self.first, self.min_step, self.max_ratio = first, min_step, max_ratio

    def ok(self, accuracy: float | None) -> bool:
        return accuracy is not None and self.baseline - accuracy <= self.max_drop + 1e-9

    def first_step(self) -> Step | Stop:
        step = _nearest_unseen(self.signature, self.first, 0.0, self.max_ratio, {self.signature(0.0)})
        return Step(step, "first step") if step is not None else Stop("no layer can be pruned", False)

    def next_step(self, history: Sequence[Attempt]) -> Step | Stop:
        good = [a for a in history if a.met]
        if len(history) >= self.max_iterations:
            return Stop(f"iteration cap ({self.max_iterations}) reached", bool(good))
        best = max(good, key=lambda a: a.ratio) if good else None
        best_r = best.ratio if best else 0.0
        if best is not None and best.deepest:
            return Stop("accuracy stays within tolerance even at the deepest pruning the model allows", True)
        failed_above = [a.ratio for a in history if not a.met and a.ratio > best_r]
        upper = min(failed_above) if failed_above else self.max_ratio
        if upper - best_r < self.min_step:
            return Stop(f"accuracy boundary located: ratio {best_r:.3f} keeps accuracy within {self.max_drop:g} "
                        f"points, {upper:.3f} does not", bool(good))
        last = history[-1]
        seen = {a.signature for a in history} | {self.signature(0.0)}
        if last.met:
            previous = max((a.ratio for a in good if a.ratio < last.ratio), default=0.0)
            margin = (self.max_drop - (self.baseline - last.accuracy)) / self.max_drop if self.max_drop > 0 else 0.0
            size = max(self.min_step, (last.ratio - previous) * min(1.5, max(0.25, margin * 1.5)))
            target, reason = best_r + size, f"accuracy margin {margin:.0%} of the tolerance: step {size:.3f}"
            if failed_above:
                target = min(target, best_r + 0.5 * (upper - best_r))
        else:
            target = best_r + 0.5 * (last.ratio - best_r)
            reason = f"ratio {last.ratio:.3f} broke the tolerance: back to {best_r:.3f}, retry a half step"
        if target >= self.max_ratio and self.signature(self.max_ratio) not in seen and upper >= self.max_ratio:
            return Step(self.max_ratio, "deepest pruning the model allows")
        r = _nearest_unseen(self.signature, target, best_r, upper, seen)
        if r is None:
            return Stop("no model between the last good and the first failing ratio is reachable at this channel "
                        "multiple", bool(good))
        return Step(r, reason)


def _nearest_unseen(signature: Callable[[float], Hashable], r: float, low: float, high: float,
                    seen: set) -> float | None:
    for c in sorted({min(high, max(low, r + d)) for d in _offsets(high - low)}, key=lambda c: abs(c - r)):
        if low < c < high and signature(c) not in seen:
            return c
    return None


def choose_fastest(history: Sequence[Attempt]) -> int | None:
    """The accuracy-critical objective: the lowest measured latency among attempts within tolerance."""
    met = [(i, a) for i, a in enumerate(history) if a.met]
    return min(met, key=lambda ia: ia[1].latency_ratio)[0] if met else None
