"""Latency statistics, robust to the slow blocks a shared machine produces.

Times are taken in blocks; a verdict uses the median of block medians, so one slow block (about 1 in 10 here,
15-60% slow) cannot flip it. Two artifacts are compared with interleaved blocks (A B A B ...) and the paired
ratio of their block medians, so drift of the machine cancels out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per batch. `p50` is the median of block medians; p90/p99/mean/min over all timed runs."""

    n: int
    warmup: int
    blocks: int
    mean: float
    p50: float
    p90: float
    p99: float
    min: float
    mad: float  # median absolute deviation of all runs, ms
    block_medians: tuple[float, ...]
    batch_size: int = 1
    runtime: str = ""
    threads: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def percentile(self, name: str) -> float:
        return float(getattr(self, name))

    @property
    def spread(self) -> float:
        """Relative spread of the block medians (max-min over median): what one verdict can trust."""
        b = np.asarray(self.block_medians)
        return float((b.max() - b.min()) / np.median(b)) if len(b) > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block_medians"] = list(self.block_medians)
        d["spread"] = self.spread
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LatencyStats":
        d = {k: v for k, v in d.items() if k != "spread"}
        d["block_medians"] = tuple(d.get("block_medians", ()))
        return cls(**d)


def summarize(blocks_ms: Sequence[Sequence[float]], warmup: int, **meta: Any) -> LatencyStats:
    """Statistics of timed runs grouped in blocks (each block a list of per-run milliseconds)."""
    blocks = [np.asarray(b, dtype=np.float64) for b in blocks_ms if len(b)]
    if not blocks:
        raise ValueError("no timed runs to summarize")
    allt = np.concatenate(blocks)
    med_blocks = tuple(float(np.median(b)) for b in blocks)
    return LatencyStats(
        n=int(allt.size), warmup=warmup, blocks=len(blocks), mean=float(allt.mean()),
        p50=float(np.median(med_blocks)), p90=float(np.percentile(allt, 90)), p99=float(np.percentile(allt, 99)),
        min=float(allt.min()), mad=float(np.median(np.abs(allt - np.median(allt)))), block_medians=med_blocks, **meta)


@dataclass(frozen=True)
class PairedRatio:
    """candidate / reference latency from interleaved blocks: median of per-pair ratios, with a bootstrap CI."""

    ratio: float
    low: float
    high: float
    pairs: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_ratio(candidate: LatencyStats, reference: LatencyStats, confidence: float = 0.95,
                 seed: int = 0) -> PairedRatio:
    """Ratio of block medians taken pairwise (block i of each was measured back to back)."""
    a = np.asarray(candidate.block_medians)
    b = np.asarray(reference.block_medians)
    k = min(len(a), len(b))
    if k == 0:
        raise ValueError("no blocks to pair")
    r = a[:k] / b[:k]
    med = float(np.median(r))
    if k < 3:
        return PairedRatio(med, float(r.min()), float(r.max()), k)
    rng = np.random.default_rng(seed)
    boots = np.median(r[rng.integers(0, k, size=(2000, k))], axis=1)
    alpha = (1 - confidence) / 2
    return PairedRatio(med, float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha)), k)


def within_noise(value: float, target: float, stats: LatencyStats, floor: float = 0.03) -> bool:
    """True when `value` is so close to `target` that this machine's measured spread could flip the verdict."""
    rel = max(floor, 0.5 * stats.spread)
    return math.isfinite(value) and abs(value - target) <= rel * target

