"""Issue-2 figures: the default build's wall time (cold and warm cache), and ResNet-56 on digits at a 0.5x
latency budget: iterations to meet it, where the final p50 lands, ONNX accuracy against the unpruned model, and
measured speed-up per MACs reduction. Runs the real CLI in subprocesses; prints a table, writes JSON.

    .venv/bin/python benchmarks/build_figures.py            # both parts (about 10 minutes on 2 cores)
    .venv/bin/python benchmarks/build_figures.py --only default
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EDGEPRUNE = [sys.executable, "-m", "edgeprune.cli"]


def run_build(args: list[str], cache: Path, out: Path) -> tuple[float, int, dict]:
    env = {**os.environ, "EDGEPRUNE_CACHE": str(cache)}
    t0 = time.perf_counter()
    proc = subprocess.run(EDGEPRUNE + ["build", "--quiet", "--out", str(out), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    if proc.returncode not in (0, 3):
        raise SystemExit(f"build failed ({proc.returncode}): {proc.stderr.strip()}")
    return wall, proc.returncode, report


def summarize(report: dict) -> dict:
    f, it = report["final"], report["iterations"]
    attempts = [i for i in it if i["kind"] == "attempt"]
    first_met = next((i["index"] for i in attempts if i["budget_met"]), None)
    return {
        "budget": report["budget"]["spec"], "budget_met": report["budget_met"], "stop_reason": report["stop_reason"],
        "measured_iterations": len(attempts), "first_meeting_iteration": first_met,
        "final_latency_ratio": f["latency_ratio"], "final_p50_ms": f["latency_ms"],
        "baseline_p50_ms_paired": f["baseline_latency_ms"],
        "lands_within_10pct_under": (report["budget"]["target_ratio"] * 0.9 <= f["latency_ratio"]
                                     <= report["budget"]["target_ratio"]),
        "speedup": f["speedup"], "macs_reduction": f["macs_reduction"], "params_reduction": f["params_reduction"],
        "speedup_per_macs_reduction": f["speedup_per_macs_reduction"],
        "baseline_accuracy_onnx": f["baseline_accuracy"], "final_accuracy_onnx": f["accuracy"],
        "accuracy_drop_points": f["accuracy_drop"], "widths": it[f["index"]]["widths"],
        "threads": report["runner"].get("threads"), "channel_multiple": report["device"]["channel_multiple"],
        "build_elapsed_s": report["elapsed_s"],
        "iterations": [{"index": i["index"], "ratio": i["ratio"], "macs": i["macs"], "latency_ms": i["latency_ms"],
                        "latency_ratio": i["latency_ratio"] and i["latency_ratio"]["ratio"],
                        "accuracy": i["accuracy"], "budget_met": i["budget_met"]} for i in it],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["default", "resnet56"])
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "build_figures.json"))
    args = ap.parse_args()
    results: dict = {"host": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "python": platform.python_version()}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in (None, "default"):
            cache = tmp / "cache"
            cold, rc_cold, rep = run_build([], cache, tmp / "out-cold")
            warm, rc_warm, rep_warm = run_build([], cache, tmp / "out-warm")
            results["default_build"] = {"cold_cache_wall_s": cold, "warm_cache_wall_s": warm,
                                        "exit_codes": [rc_cold, rc_warm], "cold": summarize(rep),
                                        "warm": summarize(rep_warm)}
        if args.only in (None, "resnet56"):
            wall, rc, rep = run_build(["--model", "resnet56", "--latency-budget", "0.5x", "--finetune-epochs", "10"],
                                      tmp / "cache56", tmp / "out56")
            results["resnet56_0.5x"] = {"wall_s": wall, "exit_code": rc, **summarize(rep)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwrote {args.json}")


def print_table(results: dict) -> None:
    rows = []
    if "default_build" in results:
        d = results["default_build"]
        rows += [("default build, cold cache (s)", f"{d['cold_cache_wall_s']:.1f}", "< 120"),
                 ("default build, warm cache (s)", f"{d['warm_cache_wall_s']:.1f}", "< 60"),
                 ("default: latency ratio / speed-up per MACs red.",
                  f"{d['warm']['final_latency_ratio']:.3f} / {d['warm']['speedup_per_macs_reduction']:.2f}", "")]
    if "resnet56_0.5x" in results:
        r = results["resnet56_0.5x"]
        rows += [("resnet56 0.5x: budget met", str(r["budget_met"]), "yes"),
                 ("resnet56 0.5x: first iteration meeting it", str(r["first_meeting_iteration"]), "<= 4"),
                 ("resnet56 0.5x: final latency ratio", f"{r['final_latency_ratio']:.3f}", "0.45-0.50"),
                 ("resnet56 0.5x: ONNX accuracy unpruned -> final",
                  f"{r['baseline_accuracy_onnx']:.2f} -> {r['final_accuracy_onnx']:.2f}", "drop <= 1 point"),
                 ("resnet56 0.5x: speed-up / MACs reduction",
                  f"{r['speedup']:.2f}x / {r['macs_reduction']:.2f}x = {r['speedup_per_macs_reduction']:.2f}", ">= 0.8")]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'measured':>24}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>24}  {target}")


if __name__ == "__main__":
    main()
