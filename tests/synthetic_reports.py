"""Synthetic but schema-valid report.json dicts (docs/report-schema.md, schema_version 1) for check/report tests."""
from __future__ import annotations

import copy
import json
import shutil
import statistics
from pathlib import Path
from typing import Any


def latency(block_medians: list[float], p90_factor: float = 1.15, runs_per_block: int = 200) -> dict[str, Any]:
    med = statistics.median(block_medians)
    return {"n": runs_per_block * len(block_medians), "warmup": 50, "blocks": len(block_medians), "mean": med * 1.02,
            "p50": med, "p90": med * p90_factor, "p99": med * 1.4, "min": min(block_medians) * 0.95, "mad": med * 0.02,
            "block_medians": list(block_medians),
            "spread": (max(block_medians) - min(block_medians)) / med if len(block_medians) > 1 else 0.0,
            "batch_size": 1, "runtime": "onnxruntime", "threads": 1,
            "versions": {"onnxruntime": "1.31.1", "numpy": "2.4.6"}, "extra": {}}


def blocks_around(center: float, spread: float, n: int = 6) -> list[float]:
    """n block medians centred on `center` whose (max - min) / median is `spread`."""
    if n == 1 or spread == 0:
        return [center] * n
    step = spread * center / (n - 1)
    return [center - spread * center / 2 + i * step for i in range(n)]


def _iteration(index: int, ratio: float, widths: dict[str, int], macs: int, params: int, lat_ms: float,
               spread: float, accuracy: float | None, weights: int | None, selected: bool,
               baseline_ms: float, budget_met: bool | None) -> dict[str, Any]:
    lat = latency(blocks_around(lat_ms, spread))
    it = {"index": index, "kind": "baseline" if index == 0 else "attempt", "ratio": ratio,
          "step_reason": "unpruned baseline" if index == 0 else "first guess", "widths": widths, "params": params,
          "macs": macs, "param_bytes": params * 4, "latency_ms": lat["p50"], "latency": lat, "latency_ratio": None,
          "baseline_latency_paired": None, "remeasured": None, "budget_met": budget_met,
          "memory": {"weights_bytes": weights, "peak_mb": 12.5, "peak_source": "synthetic"},
          "accuracy": accuracy, "accuracy_source": "onnx artifact (val split)" if accuracy is not None else
          "the model has 1000 outputs but digits has 10 classes: accuracy and fine-tuning are skipped",
          "parity": {"max_abs": 1e-6, "max_rel": 1e-4, "samples": 64, "top1_agreement": 1.0, "atol": 1e-3,
                     "rtol": 1e-3, "ok": True},
          "export": {"exporter": "torch.onnx (dynamo)", "opset": 18, "nodes": 20, "ops": {"Conv": 10}},
          "recovery": {"bn_recalibration": index > 0, "finetune_epochs": 5 if index else 0},
          "selected": selected, "elapsed_s": 1.0 + index}
    if index:
        r = lat_ms / baseline_ms
        it["latency_ratio"] = {"ratio": r, "low": r * 0.97, "high": r * 1.03, "pairs": 6}
        it["baseline_latency_paired"] = latency(blocks_around(baseline_ms, spread))
    return it


def make_report(latency_ms: float = 0.40, spread: float = 0.02, accuracy: float | None = 97.0,
                macs: int = 20_000_000, weights_bytes: int | None = 300_000, device: str = "cpu",
                runner: str = "onnxruntime", threads: int | None = 1, batch_size: int = 1,
                input_shape: tuple[int, int, int] = (1, 32, 32), budget: str = "0.5x", **top: Any) -> dict[str, Any]:
    """A two-iteration build (unpruned baseline + one shipped attempt); the shipped attempt has the given figures."""
    base_ms = 0.80
    full = {"conv1": 16, "layer1.0.conv1": 16, "layer2.0.conv1": 32, "layer2.0.shortcut.0": 32,
            "layer3.0.conv1": 64, "layer3.0.shortcut.0": 64}
    pruned = {k: max(8, v // 2) for k, v in full.items()}
    relative = budget.endswith("x")
    value = float(budget.rstrip("xms"))
    target_ms = value * base_ms if relative else value
    met = latency_ms <= target_ms
    iterations = [
        _iteration(0, 0.0, full, 41_000_000, 272_000, base_ms, spread, 98.0 if accuracy is not None else None,
                   1_085_640 if weights_bytes is not None else None, False, base_ms, base_ms <= target_ms),
        _iteration(1, 0.45, pruned, macs, 80_000, latency_ms, spread, accuracy, weights_bytes, True, base_ms, met),
    ]
    report = {
        "schema_version": 1, "tool": {"name": "edgeprune", "version": "0.1.0"},
        "created": "2026-01-01T00:00:00+00:00", "budget_met": met, "stop_reason": "budget met",
        "policy": "latency-sensitive",
        "budget": {"spec": budget, "kind": "relative" if relative else "absolute", "value": value, "percentile": "p50",
                   "target_ms": target_ms, "target_ratio": target_ms / base_ms},
        "config": {"model": "resnet20", "weights": None, "input_shape": None, "data": "digits", "device": device,
                   "latency_budget": budget, "percentile": "p50", "batch_size": batch_size, "threads": threads,
                   "criterion": "l1", "finetune_epochs": 5, "train_epochs": 10, "max_iterations": 6,
                   "measure_blocks": 6, "measure_iters": 200, "seed": 0, "out": "out", "overwrite": True},
        "device": {"name": device, "description": "synthetic", "kind": "host", "runner": runner,
                   "precisions": ["fp32"], "default_precision": "fp32", "channel_multiple": 8,
                   "providers": ["CPUExecutionProvider"], "fallback_runners": [], "memory_mb": None,
                   "threads": threads, "jetson_model": None, "compute_capability": None, "dla_cores": 0},
        "host": {"hostname": "ci", "machine": "x86_64", "cpu_model": "Synthetic CPU", "cpu_cores": 2,
                 "memory_mb": 8000, "python": "3.11.7", "onnxruntime": "1.31.1",
                 "ort_providers": ["CPUExecutionProvider"], "torch": "2.15.0", "cuda": None, "gpu": None,
                 "tensorrt": None, "trtexec": None, "jetson_model": None, "extra": {}},
        "runner": {"runner": runner, "onnxruntime": "1.31.1", "providers": ["CPUExecutionProvider"],
                   "threads": threads},
        "versions": {"python": "3.11.7", "torch": "2.15.0", "torch_pruning": "1.6.1", "onnx": "1.23.2",
                     "onnxruntime": "1.31.1", "numpy": "2.4.6"},
        "model": {"name": "resnet20", "source": "zoo", "input_shape": list(input_shape), "num_classes": 10,
                  "training": None},
        "data": {"name": "digits", "train": 1437, "val": 360, "classes": 10, "input_shape": list(input_shape)},
        "iterations": iterations,
        "final": {"index": 1, "budget_met": met, "ratio": 0.45, "params": 80_000, "macs": macs,
                  "latency_ms": latency_ms, "percentile": "p50", "baseline_latency_ms": base_ms,
                  "latency_ratio": latency_ms / base_ms, "target_ms": target_ms,
                  "target_ratio": target_ms / base_ms, "speedup": base_ms / latency_ms,
                  "macs_reduction": 41_000_000 / macs, "params_reduction": 272_000 / 80_000,
                  "speedup_per_macs_reduction": (base_ms / latency_ms) / (41_000_000 / macs),
                  "accuracy": accuracy, "baseline_accuracy": iterations[0]["accuracy"],
                  "accuracy_drop": None if accuracy is None else 98.0 - accuracy,
                  "memory": iterations[1]["memory"], "parity": iterations[1]["parity"]},
        "elapsed_s": 12.0,
    }
    report.update(top)
    return copy.deepcopy(report)


def write_artifact(directory: Path, report: dict[str, Any], onnx: Path | None = None) -> Path:
    """An artifact directory: report.json, and model.onnx copied from `onnx` when given."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2))
    if onnx is not None:
        shutil.copyfile(onnx, directory / "model.onnx")
    return directory
