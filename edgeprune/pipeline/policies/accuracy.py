"""The accuracy-critical policy: prune as far as the deployed artifact stays within the accuracy tolerance;
objective the lowest measured latency."""
from __future__ import annotations

from typing import Callable, Hashable, Sequence

from ...registry import POLICIES
from .base import Attempt, Measured, Step, Stop, choose_fastest, nearest_unseen


@POLICIES.register("accuracy-critical")
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

    def first_step(self) -> Step | Stop:
        step = nearest_unseen(self.signature, self.first, 0.0, self.max_ratio, {self.signature(0.0)})
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
        r = nearest_unseen(self.signature, target, best_r, upper, seen)
        if r is None:
            return Stop("no model between the last good and the first failing ratio is reachable at this channel "
                        "multiple", bool(good))
        return Step(r, reason)

    def observe(self, measured: Measured) -> Attempt:
        """Met when every constraint is (the accuracy tolerance above all); the cost is the latency ratio."""
        return Attempt(measured.ratio, measured.latency_ratio, measured.all_met, measured.signature,
                       measured.accuracy, measured.deepest)

    def choose(self, history: Sequence[Measured], accuracy_resolution: float = 0.0) -> int | None:
        return choose_fastest([Attempt(m.ratio, m.latency_ratio, m.all_met, None, m.accuracy) for m in history])

    def closest(self, history: Sequence[Measured]) -> int:
        """Nothing within tolerance: the smallest accuracy drop, the least pruned among equals."""
        return max(range(len(history)), key=lambda i: (history[i].accuracy or 0.0, -history[i].ratio))
