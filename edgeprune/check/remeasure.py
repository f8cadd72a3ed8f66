"""`--remeasure`: time both artifacts' model.onnx here, interleaved block by block, and judge the paired ratio.

Both are timed in one run, interleaved (A B A B ..., first position rotating), and the p50 verdict uses the paired
ratio new/baseline (median of per-block ratios) with its 95% interval [low, high]. With L = 1 + threshold (an
absolute threshold in ms is divided by the re-measured baseline p50):
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
p90 (over all timed runs, not robust to a slow block) is judged on the same run by the stored-mode rule.
"""
from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

from ..backends.base.stats import PairedRatio, paired_ratio
from .thresholds import Threshold

ORT_RUNNERS = ("onnxruntime", "onnxruntime-cuda")
RULE = ("regression if low > limit; pass if high <= limit; else re-measure with twice the blocks and flag iff "
        "ratio > limit and low > 1")


def remeasure_latency(runner: Any, new_onnx: Path, base_onnx: Path, threshold: Threshold, warmup: int = 50,
                      iters: int = 200, blocks: int = 10) -> dict[str, Any]:
    """Time both artifacts interleaved and judge the p50 ratio (rule in the module docstring): at most two rounds,
    the second with twice the blocks, only when the first interval straddles the limit."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-check-") as work:
        deployed = [runner.prepare(Path(new_onnx), Path(work)), runner.prepare(Path(base_onnx), Path(work))]
        rounds: list[dict[str, Any]] = []
        for n_blocks, last in ((blocks, False), (2 * blocks, True)):
            new_stats, base_stats = runner.measure_interleaved(deployed, warmup, iters, n_blocks)
            ratio = paired_ratio(new_stats, base_stats)
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


def ort_runner_for(runner_info: dict[str, Any]):
    """An ONNX Runtime runner with the providers and thread count a report recorded."""
    from ..backends.onnxrt.runner import OnnxRuntimeRunner

    providers = tuple(runner_info.get("providers") or ("CPUExecutionProvider",))
    return OnnxRuntimeRunner(providers=providers, threads=runner_info.get("threads"))
