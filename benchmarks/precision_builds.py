"""Whole builds for benchmarks/precision.py --builds: `--precision auto` against fp32 only, same config and seed.

- ResNet-56 trained on digits at 0.35x and 0.25x latency budgets, one build per (budget, precision, seed): is auto
  at least as accurate as fp32, and does it meet a budget fp32 cannot?
- torchvision MobileNetV3-small (random weights, 3x64x64, latency only) with auto: which precision ships, and the
  int8 / fp16 figures of the unpruned model that decided it.
- The default build (ResNet-20 on digits, 0.5x) with auto: what ships, and its wall time with a warm cache.
Every figure is read from the build's own report.json.
"""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import edgeprune
from edgeprune import BuildConfig
from edgeprune.errors import BudgetNotMet


def one_build(config: BuildConfig) -> dict:
    started = time.perf_counter()
    try:
        report = edgeprune.build(config).report
    except BudgetNotMet as exc:
        report = exc.result.report
    wall = time.perf_counter() - started
    f, p = report["final"], report.get("precision") or {}
    probes = {it["precision"]: {"latency_ratio": round(it["latency_ratio"]["ratio"], 3),
                                "accuracy": it["accuracy"],
                                "parity_top1": (it.get("precision_parity") or {}).get("top1_agreement")}
              for it in report["iterations"] if it["index"] > 0 and it["ratio"] == 0.0}
    return {"model": config.model, "budget": config.latency_budget, "seed": config.seed,
            "precision": config.precision or "device default", "budget_met": report["budget_met"],
            "shipped_precision": f.get("precision", "fp32"), "shipped_ratio": f["ratio"],
            "latency_ratio": round(f["latency_ratio"], 3), "accuracy": f["accuracy"],
            "baseline_accuracy": f["baseline_accuracy"], "attempts": len(report["iterations"]) - 1,
            "unpruned_in_reduced_precision": probes, "dropped": p.get("dropped") or {},
            "stop_reason": report["stop_reason"], "wall_s": round(wall, 1), "by_precision": by_precision(report)}


def by_precision(report: dict) -> dict:
    """Every attempt of the build, grouped by precision: (pruning ratio, latency ratio, accuracy, budget met), and the
    most accurate attempt that met the budget. In an auto build, its fp32 group is the search an fp32-only build runs
    (same steps, same fine-tuning seeds) on the same measurements: comparing the auto build's choice with its own best
    fp32 attempt takes the run-to-run noise of two separate builds out of the comparison."""
    out: dict = {}
    for it in report["iterations"]:
        if it["index"] == 0:
            continue
        group = out.setdefault(it.get("precision", "fp32"), {"attempts": [], "best_met": None})
        row = [it["ratio"], round(it["latency_ratio"]["ratio"], 3), it["accuracy"], bool(it["budget_met"])]
        group["attempts"].append(row)
        if row[3] and row[2] is not None and (group["best_met"] is None or row[2] > group["best_met"][2]):
            group["best_met"] = row
    return out


def cases(seeds: list[int], multiple: int | None, others: bool, repeat_fp32: bool = False) -> list[BuildConfig]:
    out = []
    for budget in ("0.35x", "0.25x"):
        for seed in seeds:
            for precision in ("fp32", "auto") + (("fp32",) if repeat_fp32 else ()):
                out.append(BuildConfig(model="resnet56", latency_budget=budget, seed=seed, precision=precision,
                                       channel_multiple=multiple))
    if not others:
        return out
    out.append(BuildConfig(model="torchvision:mobilenet_v3_small", input_shape=(3, 64, 64), precision="auto",
                           max_iterations=3))
    out.append(BuildConfig(precision="auto"))  # the default build, auto precision
    return out


def run_builds(args) -> None:
    rows = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeprune-precision-builds-") as tmp:
        for i, config in enumerate(cases(args.seeds, args.channel_multiple, args.channel_multiple is None,
                                         args.repeat_fp32)):
            config = config.replace(out=str(Path(tmp) / f"out{i}"))
            try:
                rows.append(one_build(config))
            except Exception as exc:  # recorded, not hidden: the other builds still run
                print(f"{config.model} {config.latency_budget} seed {config.seed} {config.precision}: "
                      f"{type(exc).__name__}: {exc}", flush=True)
                rows.append({"model": config.model, "budget": config.latency_budget, "seed": config.seed,
                             "precision": config.precision, "error": f"{type(exc).__name__}: {exc}"})
                continue
            print(row_line(rows[-1]), flush=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {"benchmark": "precision"}
    key = "device channel multiple" if args.channel_multiple is None else f"channel multiple {args.channel_multiple}"
    builds = previous.get("builds") if isinstance(previous.get("builds"), dict) and "rows" not in previous["builds"] \
        else {}
    builds[key] = {"rows": rows, "seconds": round(time.time() - started, 1), "summary": summary(rows),
                   "command": "PYTHONPATH=. .venv/bin/python benchmarks/precision.py --builds --seeds "
                              + " ".join(map(str, args.seeds))
                              + (f" --channel-multiple {args.channel_multiple}" if args.channel_multiple else "")
                              + (" --repeat-fp32" if args.repeat_fp32 else "")}
    previous["builds"] = builds
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(previous, indent=1) + "\n")
    print("\n".join(summary(rows)))
    print(f"\nwrote {args.out}")


def row_line(r: dict) -> str:
    acc = "n/a" if r["accuracy"] is None else f"{r['accuracy']:.2f}%"
    return (f"{r['model']:32} {str(r['budget']):6} seed {r['seed']} {r['precision']:5} -> {r['shipped_precision']:5} "
            f"ratio {r['shipped_ratio']:.3f} {r['latency_ratio']:.3f}x {'met ' if r['budget_met'] else 'MISS'} "
            f"acc {acc} ({r['attempts']} attempts, {r['wall_s']} s)")


def summary(rows: list[dict]) -> list[str]:
    lines = []
    for budget in ("0.35x", "0.25x"):
        pairs = {}
        for r in rows:
            if r["model"] == "resnet56" and r["budget"] == budget:
                runs = pairs.setdefault(r["seed"], {})
                runs["fp32 again" if r["precision"] == "fp32" and "fp32" in runs else r["precision"]] = r
        for seed, pr in sorted(pairs.items()):
            if {"fp32", "auto"} <= set(pr):
                a, f = pr["auto"], pr["fp32"]
                own = ((a.get("by_precision") or {}).get("fp32") or {}).get("best_met")
                line = (f"resnet56 {budget} seed {seed}: auto {a['shipped_precision']} "
                        f"{'met' if a['budget_met'] else 'missed'} acc {a['accuracy']:.2f}, fp32-only build "
                        f"{'met' if f['budget_met'] else 'missed'} acc {f['accuracy']:.2f}; within auto: fp32 best "
                        + ("none met" if own is None else f"{own[2]:.2f}"))
                for p, g in (a.get("by_precision") or {}).items():
                    if p != "fp32":
                        best = g["best_met"]
                        line += f", {p} best " + ("none met" if best is None else f"{best[2]:.2f} at ratio {best[0]}")
                if "fp32 again" in pr:  # the same fp32-only build run twice: how far apart noise alone puts them
                    again = pr["fp32 again"]
                    line += (f"; fp32-only again {'met' if again['budget_met'] else 'missed'} "
                             f"acc {again['accuracy']:.2f}")
                lines.append(line)
    return lines
