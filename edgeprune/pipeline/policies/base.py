"""What every policy shares: the steps it proposes, what it learns of a measured attempt, and the choice of the
attempt to ship. A policy is an object with `first_step()`, `next_step(history)`, `observe(measured)`,
`choose(history)` and `closest(history)` (the Policy protocol below); the loop knows nothing else of it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Hashable, Protocol, Sequence


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


@dataclass(frozen=True)
class Measured:
    """One attempt as the loop measured it, before a policy reads it through its own objective."""

    ratio: float
    latency_ratio: float   # paired, against the unpruned model
    cost: float            # constrained cost (constraints.cost); 1.0 for the unpruned model
    bounds_met: bool       # every latency / memory budget met
    all_met: bool          # every constraint met, accuracy included
    accuracy: float | None
    signature: Hashable = None
    deepest: bool = False


class Policy(Protocol):
    name: str

    def first_step(self) -> Step | Stop: ...

    def next_step(self, history: Sequence[Attempt]) -> Step | Stop: ...

    def observe(self, measured: Measured) -> Attempt: ...

    def choose(self, history: Sequence[Measured], accuracy_resolution: float = 0.0) -> int | None: ...

    def closest(self, history: Sequence[Measured]) -> int: ...


def offsets(span: float) -> list[float]:
    step = max(span / 40.0, 1e-3)
    return [0.0] + [s * i * step for i in range(1, 40) for s in (1, -1)]



def nearest_unseen(signature: Callable[[float], Hashable], r: float, low: float, high: float,
                    seen: set) -> float | None:
    for c in sorted({min(high, max(low, r + d)) for d in offsets(high - low)}, key=lambda c: abs(c - r)):
        if low < c < high and signature(c) not in seen:
            return c
    return None



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


def choose_fastest(history: Sequence[Attempt]) -> int | None:
    """The accuracy-critical objective: the lowest measured latency among attempts within tolerance."""
    met = [(i, a) for i, a in enumerate(history) if a.met]
    return min(met, key=lambda ia: ia[1].latency_ratio)[0] if met else None
