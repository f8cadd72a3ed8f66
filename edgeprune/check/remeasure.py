"""`--remeasure`: time both artifacts' model.onnx here, interleaved block by block, and judge the paired ratio.

Each block pair (one block of each artifact, back to back, first position alternating) is timed in fresh
sessions, in a fresh worker process: two sessions of the very same file differ by about half a percent for as long
as they live (memory placement; measured by benchmarks/check_noise.py), so pairs timed by one pair of sessions all
share that offset, and an interval over them would exclude 1.0 for an artifact against itself about one run in
four. With a fresh pair of sessions per block pair, the pairs are independent, and the p50 verdict uses the paired
ratio new/baseline (median of per-pair ratios) with its distribution-free 95% interval [low, high] for that median
(order statistics of the ratios, binomial coverage; a bootstrap of the median of 10 covers only about 93%).
With L = 1 + threshold (an absolute threshold in ms is divided by the re-measured baseline p50):
  1. low > L                      -> regression: slower than allowed even at the optimistic end;
  2. high <= L                    -> pass: within the threshold even at the pessimistic end;
  3. otherwise the interval straddles L: measure once more with twice the blocks, then
     regression iff ratio > L and low > 1 (the estimate is over the threshold and the slow-down is real).
Why not "regression iff low > L" alone: that tests "slower than L by more than the noise", so a real slow-down
just over the threshold passes most of the time (detection reaches ~100% only about two interval half-widths
above L). Why not "ratio > L" alone: with noise comparable to the threshold, an unchanged model would fail
whenever a burst of slow blocks hits one side. The rule keeps the confident cases immediate, spends a second,
longer measurement only on the ambiguous ones, and then judges at the threshold itself (about 50% detection at
exactly L, as a threshold should mean) while requiring that the slow-down be significant (low > 1), which keeps
false alarms on an unchanged model rare. benchmarks/check_noise.py measures both rates.
p90 (the median of the pairs' p90s, not robust to slow runs) is judged on the same run by the stored-mode rule.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from ..backends.base.stats import LatencyStats, PairedRatio
from ..files import scratch_dir
from .thresholds import Threshold

ORT_RUNNERS = ("onnxruntime", "onnxruntime-cuda")
RULE = ("one fresh pair of sessions per block pair; median of per-pair ratios with its distribution-free 95% "
        "interval; regression if low > limit; pass if high <= limit; else re-measure with twice the blocks and "
        "flag iff ratio > limit and low > 1")


def remeasure_latency(runner: Any, new_onnx: Path, base_onnx: Path, threshold: Threshold, warmup: int = 50,
                      iters: int = 200, blocks: int = 10) -> dict[str, Any]:
    """Time both artifacts interleaved and judge the p50 ratio (rule in the module docstring): at most two rounds,
    the second with twice the blocks, only when the first interval straddles the limit."""
    with scratch_dir("edgeprune-check-") as work:
        deployed = [runner.prepare(Path(new_onnx), work), runner.prepare(Path(base_onnx), work)]
        rounds: list[dict[str, Any]] = []
        for n_blocks, last in ((blocks, False), (2 * blocks, True)):
            new_stats, base_stats = measure_pairs(runner, deployed, warmup, iters, n_blocks)
            ratio = median_ratio(new_stats.block_medians, base_stats.block_medians)
            limit = 1.0 + threshold.allowed(base_stats.p50) / base_stats.p50
            verdict = decide_paired(ratio, limit, last)
            rounds.append({"blocks": n_blocks, "new": new_stats.to_dict(), "baseline": base_stats.to_dict(),
                           "ratio": ratio.to_dict(), "limit_ratio": limit, "verdict": verdict})
            if verdict != "uncertain":
                break
        release = getattr(runner, "release", None)
        if release:
            release()
    r = rounds[-1]["ratio"]
    limit = rounds[-1]["limit_ratio"]
    verdict = rounds[-1]["verdict"]
    lim = "no limit (threshold off)" if math.isinf(limit) else f"limit {limit:.3f}"
    how = (f"paired ratio {r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}], {lim}"
           + (f"; first round [{rounds[0]['ratio']['low']:.3f}, {rounds[0]['ratio']['high']:.3f}] straddled the "
              f"limit, so measured again with {rounds[-1]['blocks']} blocks" if len(rounds) > 1 else ""))
    detail = (f"{r['ratio'] - 1:+.1%} slower, more than allowed: {how}" if verdict == "regression" else how)
    return {"warmup": warmup, "iters": iters, "blocks": blocks, "threshold": threshold.to_dict(),
            "limit_ratio": limit, "rounds": rounds, "verdict": verdict, "detail": detail, "rule": RULE}


def decide_paired(ratio: PairedRatio, limit: float, last: bool) -> str:
    """'regression' | 'pass' | 'uncertain' (only when not `last`) for a paired ratio new/baseline."""
    if ratio.low > limit:
        return "regression"
    if ratio.high <= limit:
        return "pass"
    if not last:
        return "uncertain"
    return "regression" if ratio.ratio > limit and ratio.low > 1.0 else "pass"


def measure_pairs(runner: Any, deployed: Sequence[Any], warmup: int, iters: int,
                  pairs: int) -> tuple[LatencyStats, LatencyStats]:
    """`pairs` block pairs (new, baseline), each from its own measure_interleaved call (fresh sessions), the first
    position alternating; merged into one LatencyStats per artifact whose block_medians are paired by index."""
    new, base = [], []
    for i in range(pairs):
        order = list(deployed) if i % 2 == 0 else list(deployed)[::-1]
        first, second = runner.measure_interleaved(order, warmup, iters, 1)
        new.append(first if i % 2 == 0 else second)
        base.append(second if i % 2 == 0 else first)
    return merge_blocks(new), merge_blocks(base)


def median_ratio(candidate: Sequence[float], reference: Sequence[float], confidence: float = 0.95) -> PairedRatio:
    """Median of the per-pair ratios candidate[i] / reference[i], with the distribution-free interval for that
    median: [r(j), r(k+1-j)] of the sorted ratios, j the largest with binomial coverage >= `confidence` (j = 1,
    the full range, when k < 6 cannot reach it). Exact for independent pairs whatever their distribution."""
    k = min(len(candidate), len(reference))
    if k == 0:
        raise ValueError("no blocks to pair")
    r = sorted(candidate[i] / reference[i] for i in range(k))
    j = 1
    while j < k // 2 and _median_coverage(k, j + 1) >= confidence:
        j += 1
    return PairedRatio(float(statistics.median(r)), float(r[j - 1]), float(r[k - j]), k)


def merge_blocks(stats: Sequence[LatencyStats]) -> LatencyStats:
    """One LatencyStats from single-block measurements: p50 the median of block medians (as summarize), p90/p99/MAD
    the medians of the blocks' own, mean weighted by runs, min the smallest."""
    n = sum(s.n for s in stats)
    return replace(stats[0], n=n, blocks=len(stats), mean=sum(s.mean * s.n for s in stats) / n,
                   p50=float(statistics.median(b for s in stats for b in s.block_medians)),
                   p90=float(statistics.median(s.p90 for s in stats)),
                   p99=float(statistics.median(s.p99 for s in stats)), min=min(s.min for s in stats),
                   mad=float(statistics.median(s.mad for s in stats)),
                   block_medians=tuple(b for s in stats for b in s.block_medians))


def ort_runner_for(runner_info: dict[str, Any]):
    """An ONNX Runtime runner with the providers and thread count a report recorded."""
    from ..backends.onnxrt.runner import OnnxRuntimeRunner

    providers = tuple(runner_info.get("providers") or ("CPUExecutionProvider",))
    return OnnxRuntimeRunner(providers=providers, threads=runner_info.get("threads"))


def _median_coverage(k: int, j: int) -> float:
    """Coverage of [r(j), r(k+1-j)] for the median of k independent ratios: 1 - 2 P(Binomial(k, 1/2) < j)."""
    return 1.0 - 2.0 * sum(math.comb(k, i) for i in range(j)) / 2.0 ** k
