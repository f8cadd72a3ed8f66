"""How often does `edgeprune check --remeasure` cry wolf, and how small a slow-down does it catch?

Exports a CIFAR-style ResNet-20 (1 input channel, random weights: latency does not depend on them) at 1x32x32 as
the baseline, and the same network at larger inputs as truly slower candidates (more pixels, same weights: more
MACs, nothing else changes). It first measures each candidate's true slow-down with a long run interleaved with the
baseline, then runs the check's re-measure logic (edgeprune.check.remeasure_latency, exactly what
--remeasure runs) --runs times for the baseline against itself (every regression verdict is a false alarm) and for
each candidate against the baseline (a regression verdict is a detection when the true slow-down is over the
threshold, a false alarm when it is under, and either verdict is right when the true slow-down's interval contains
the threshold). Pairs take turns within each run, so slow phases of the machine hit every pair alike.

It also scores two simpler rules on the same first-round measurements, for comparison:
  strict: regression iff the 95% interval's low end > 1 + threshold;  point: regression iff the ratio > 1 + threshold.

    .venv/bin/python benchmarks/check_noise.py                  # 20 runs (about 15 minutes on a 2-core VM)
    .venv/bin/python benchmarks/check_noise.py --runs 3         # a smoke test
Writes benchmarks/results/check_noise.json.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeprune.targets.devices import detect_host  # noqa: E402
from edgeprune.check import METRICS, parse_threshold, remeasure_latency  # noqa: E402
from edgeprune.check.remeasure import RULE, measure_pairs, median_ratio  # noqa: E402

BASE_SHAPE = (1, 32, 32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="check runs per pair (default 20)")
    ap.add_argument("--sizes", default="30x33,31x33,32x33,33x33,35x35",
                    help="candidate input sizes HxW, comma-separated (default 30x33,31x33,32x33,33x33,35x35: "
                         "about +3%% to +24%% MACs; 35x35 is the clearly slower candidate)")
    ap.add_argument("--threshold", default=METRICS[0].default,
                    help=f"--max-latency-increase to judge with (default {METRICS[0].default.replace('%', '%%')}, "
                         "the check's default)")
    ap.add_argument("--blocks", type=int, default=10, help="check blocks (default 10, the check's default)")
    ap.add_argument("--iters", type=int, default=200, help="runs per block (default 200, the check's default)")
    ap.add_argument("--warmup", type=int, default=50, help="warm-up runs (default 50, the check's default)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1, as device cpu)")
    ap.add_argument("--truth-blocks", type=int, default=30,
                    help="blocks of the long interleaved run that measures the true slow-downs (default 30)")
    ap.add_argument("--reliable", type=float, default=0.95,
                    help="detection rate that counts as reliable (default 0.95)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "check_noise.json")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    import torch

    from edgeprune.export.onnx import export_onnx
    from edgeprune.models.zoo import resnet20
    from edgeprune.pruning.cost import model_cost
    from edgeprune.backends.onnxrt.runner import OnnxRuntimeRunner

    threshold = parse_threshold(METRICS[0], args.threshold)
    sizes = [_parse_size(s) for s in args.sizes.split(",") if s.strip()]
    runner = OnnxRuntimeRunner(threads=args.threads)
    why = runner.available()
    if why:
        print(f"check_noise: {why}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = resnet20(in_channels=1).eval()
    work = Path(tempfile.mkdtemp(prefix="check-noise-"))
    shapes = {"base": BASE_SHAPE, **{f"{h}x{w}": (1, h, w) for h, w in sizes}}
    paths, macs = {}, {}
    for name, shape in shapes.items():
        print(f"exporting resnet20 at {'x'.join(map(str, shape))}", file=sys.stderr)
        paths[name] = work / f"resnet20-{name}.onnx"
        export_onnx(model, shape, 1, paths[name])
        macs[name] = model_cost(model, shape).macs
    deployed = {name: runner.prepare(p, work) for name, p in paths.items()}

    # 1. the truth: a long run per candidate, paired with the baseline exactly as the check does it (a fresh pair
    # of sessions per block pair; with more models in one run the ratios come out a few percent different)
    names = list(paths)
    truth = {}
    base_p50 = []
    for name in names[1:]:
        print(f"measuring the true slow-down of {name}: paired with the baseline, {args.truth_blocks} block pairs of "
              f"{args.iters} runs", file=sys.stderr)
        cand, base = measure_pairs(runner, [deployed[name], deployed["base"]], args.warmup, args.iters,
                                   args.truth_blocks)
        pr = median_ratio(cand.block_medians, base.block_medians)
        base_p50.append(base.p50)
        truth[name] = {"shape": list(shapes[name]), "macs_ratio": macs[name] / macs["base"], "true_ratio": pr.ratio,
                       "true_low": pr.low, "true_high": pr.high, "p50_ms": cand.p50, "baseline_p50_ms": base.p50}
    base_ms = statistics.median(base_p50) if base_p50 else float("nan")
    print(f"\nbaseline resnet20 1x32x32: p50 {base_ms:.4f} ms ({args.threads} thread(s)); threshold {threshold.spec}",
          file=sys.stderr)
    print(f"{'candidate':>10} {'MACs':>8} {'true slow-down [95% CI]':>28}")
    for name, t in truth.items():
        print(f"{name:>10} {t['macs_ratio'] - 1:>+8.1%} {t['true_ratio'] - 1:>+10.1%} "
              f"[{t['true_low'] - 1:+.1%}, {t['true_high'] - 1:+.1%}]")

    # 2. the check, --runs times per pair, pairs interleaved run by run
    pairs = ["same"] + names[1:]
    records: dict[str, list[dict]] = {p: [] for p in pairs}
    for run in range(args.runs):
        for pair in pairs:
            cand = paths["base"] if pair == "same" else paths[pair]
            res = remeasure_latency(runner, cand, paths["base"], threshold, args.warmup, args.iters, args.blocks)
            first = res["rounds"][0]
            r1 = first["ratio"]
            records[pair].append({
                "verdict": res["verdict"], "rounds": len(res["rounds"]),
                "ratio": res["rounds"][-1]["ratio"]["ratio"], "low": res["rounds"][-1]["ratio"]["low"],
                "high": res["rounds"][-1]["ratio"]["high"],
                "first": {"ratio": r1["ratio"], "low": r1["low"], "high": r1["high"], "limit": first["limit_ratio"]},
                "strict": r1["low"] > first["limit_ratio"], "point": r1["ratio"] > first["limit_ratio"],
            })
        done = ", ".join(f"{p} {sum(r['verdict'] == 'regression' for r in records[p])}/{run + 1}" for p in pairs)
        print(f"run {run + 1}/{args.runs}: regressions flagged: {done}", file=sys.stderr)

    # 3. summary. A candidate whose true slow-down is within its own interval of the limit is "at the threshold":
    # either verdict is right, so it counts neither as a detection nor as a false alarm.
    limit = 1 + threshold.value if threshold.kind == "relative" else None
    summary = {}
    print(f"\n{args.runs} check runs per pair, threshold {threshold.spec}. expected: flag = a regression verdict is a "
          "detection; pass = it is a false alarm; either = the true slow-down is at the threshold")
    print(f"{'pair':>10} {'true':>7} {'expect':>7} {'flagged':>8} {'rate [95% CI]':>21} {'strict':>7} {'point':>6} "
          f"{'2 rounds':>8} {'measured ratio median (min-max)':>32}")
    for pair in pairs:
        recs = records[pair]
        t = truth.get(pair, {"true_ratio": 1.0, "true_low": 1.0, "true_high": 1.0})
        if limit is None:
            expect = "either"
        elif t["true_low"] > limit:
            expect = "flag"
        elif t["true_high"] < limit:
            expect = "pass"
        else:
            expect = "either"
        n_flag = sum(r["verdict"] == "regression" for r in recs)
        ratios = [r["ratio"] for r in recs]
        lo, hi = _wilson(n_flag, len(recs))
        summary[pair] = {
            "true_ratio": t["true_ratio"], "expect": expect, "runs": len(recs), "flagged": n_flag,
            "flag_rate": n_flag / len(recs), "flag_rate_ci95": [lo, hi],
            "strict_rule_flagged": sum(r["strict"] for r in recs), "point_rule_flagged": sum(r["point"] for r in recs),
            "second_round": sum(r["rounds"] > 1 for r in recs),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            # the final interval contains the true ratio (1.0 for an artifact against itself)
            "interval_covers_truth": sum(r["low"] <= t["true_ratio"] <= r["high"] for r in recs),
            "first_interval_covers_truth": sum(r["first"]["low"] <= t["true_ratio"] <= r["first"]["high"]
                                               for r in recs),
        }
        print(f"{pair:>10} {t['true_ratio'] - 1:>+7.1%} {expect:>7} {n_flag:>4}/{len(recs):<3} "
              f"{n_flag / len(recs):>6.0%} [{lo:>4.0%}, {hi:>4.0%}] {summary[pair]['strict_rule_flagged']:>7} "
              f"{summary[pair]['point_rule_flagged']:>6} {summary[pair]['second_round']:>8} "
              f"{statistics.median(ratios):>16.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    rates = {}
    for rule, key in (("check", "flagged"), ("strict", "strict_rule_flagged"), ("point", "point_rule_flagged")):
        fa = sum(s[key] for s in summary.values() if s["expect"] == "pass")
        det = sum(s[key] for s in summary.values() if s["expect"] == "flag")
        rates[rule] = {"false_alarms": fa, "false_alarm_trials": sum(s["runs"] for s in summary.values()
                                                                      if s["expect"] == "pass"),
                       "detections": det, "detection_trials": sum(s["runs"] for s in summary.values()
                                                                  if s["expect"] == "flag")}
    reliable = sorted((s["true_ratio"], p) for p, s in summary.items()
                      if s["expect"] != "pass" and s["true_ratio"] > 1 and s["flag_rate"] >= args.reliable)
    missed = sorted((s["true_ratio"], p) for p, s in summary.items()
                    if s["expect"] != "pass" and s["true_ratio"] > 1 and s["flag_rate"] < args.reliable)
    smallest = reliable[0] if reliable else None
    if smallest and any(m[0] > smallest[0] for m in missed):
        # a bigger slow-down was flagged less reliably: the smallest one above every miss
        above = [r for r in reliable if r[0] > max(m[0] for m in missed)]
        smallest = above[0] if above else None
    print()
    for rule, r in rates.items():
        print(f"{rule:>6} rule: false alarms {r['false_alarms']}/{r['false_alarm_trials']}, detections "
              f"{r['detections']}/{r['detection_trials']}" + ("  (the strict and point rules judge the first round)"
                                                               if rule == "point" else ""))
    same = summary["same"]
    print(f"self-comparison: the final 95% interval contains 1.0 in {same['interval_covers_truth']}/{same['runs']} "
          f"runs (the first round's in {same['first_interval_covers_truth']}/{same['runs']})")
    if smallest:
        lo = summary[smallest[1]]["flag_rate_ci95"][0]
        print(f"smallest true slow-down flagged in >= {args.reliable:.0%} of runs: {smallest[0] - 1:+.1%} "
              f"({smallest[1]}), threshold {threshold.spec} (its flag rate's 95% lower bound with {args.runs} runs: "
              f"{lo:.0%})")
    else:
        print(f"no candidate over the threshold was flagged in >= {args.reliable:.0%} of runs")
    elapsed = time.perf_counter() - t0
    print(f"elapsed {elapsed:.0f} s", file=sys.stderr)

    out = {
        "benchmark": "check_noise", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "host": {"machine": platform.machine(), "cpu": detect_host().cpu_model, "python": platform.python_version()},
        "runner": runner.describe(), "threshold": threshold.to_dict(),
        "rule": RULE,
        "baseline": {"shape": list(BASE_SHAPE), "p50_ms": base_ms, "macs": macs["base"]},
        "truth": truth, "summary": summary, "rates": rates,
        "smallest_reliable_slowdown": None if not smallest else {"pair": smallest[1], "true_ratio": smallest[0]},
        "records": records, "elapsed_s": round(elapsed, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    h, _, w = text.strip().lower().partition("x")
    return int(h), int(w or h)


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a rate k/n (sensible at 0/n and n/n, unlike k/n +- 2 sd)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


if __name__ == "__main__":
    sys.exit(main())
