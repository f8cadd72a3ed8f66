"""The build's artifacts: the shipped attempt's model.onnx (+ .data), model.pt, whatever the runner ships beside
them (a TensorRT engine and its sidecar), report.json and report.md, written into the staging directory."""
from __future__ import annotations

import platform
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..files import write_json
from ..report.schema import SCHEMA_VERSION
from . import constraints, stages
from .attempt import BuildState


@dataclass
class BuildResult:
    out: Path
    report: dict[str, Any]
    budget_met: bool
    stop_reason: str
    artifacts: dict[str, Path] = field(default_factory=dict)


def write_artifacts(state: BuildState, out: Path, final_idx: int, budget_met: bool, stop_reason: str,
                    policy: str) -> BuildResult:
    from ..report.markdown import render_report

    cfg = state.config
    state.progress.stage("artifacts", f"writing {cfg.out}")
    shipped = state.exports[final_idx].export.path
    shutil.copyfile(shipped, out / "model.onnx")
    external = shipped.with_name(shipped.name + ".data")  # weights of a model over the 2 GiB protobuf cap
    if external.exists():
        shutil.copyfile(external, out / external.name)
    stages.save_model_pt(out / "model.pt", state.models[final_idx], state.prep.model,
                         state.iterations[final_idx]["widths"])
    artifacts = ["model.onnx", *(["model.onnx.data"] if external.exists() else []), "model.pt"]
    for name, src in state.prof.runner.shipped(state.exports[final_idx].deployed).items():
        shutil.copyfile(src, out / name)
        artifacts.append(name)
    base, fin = state.iterations[0], state.iterations[final_idx]
    confirmation = None
    if final_idx:  # the shipped bytes themselves, timed once more against the baseline
        state.progress.stage("measure", "the shipped artifact, interleaved with the baseline")
        cand, ref, ratio = state.against_baseline(state.exports[final_idx].deployed)
        confirmation = {"latency_ms": cand.percentile(cfg.percentile),
                        "baseline_latency_ms": ref.percentile(cfg.percentile), "latency_ratio": ratio.to_dict()}
    if fin["memory"]["peak_mb"] is None:
        measured = state.prof.runner.memory(state.exports[final_idx].deployed)
        if measured.get("peak_mb") is not None:
            fin["memory"] = {**fin["memory"], **{k: v for k, v in measured.items() if v is not None}}
    b = state.budgets
    speedup = (1.0 / fin["latency_ratio"]["ratio"]) if fin["latency_ratio"] else 1.0
    macs_reduction = base["macs"] / fin["macs"]
    final = {
        "index": final_idx, "budget_met": budget_met, "ratio": fin["ratio"], "params": fin["params"],
        "macs": fin["macs"], "latency_ms": fin["latency_ms"], "percentile": cfg.percentile,
        "baseline_latency_ms": (fin["baseline_latency_paired"] or fin["latency"])[cfg.percentile],
        "latency_ratio": 1.0 / speedup, "target_ms": b.target_ms, "target_ratio": b.target_ratio,
        "speedup": speedup, "macs_reduction": macs_reduction,
        "params_reduction": base["params"] / fin["params"], "speedup_per_macs_reduction": speedup / macs_reduction,
        "accuracy": fin["accuracy"], "baseline_accuracy": base["accuracy"],
        "accuracy_drop": None if fin["accuracy"] is None else base["accuracy"] - fin["accuracy"],
        "memory": fin["memory"], "parity": fin["parity"], "latency_confirmation": confirmation,
        "precision": fin.get("precision", "fp32"), "quantization": fin.get("quantization"),
        "precision_parity": fin.get("precision_parity"),
    }
    prof, prep = state.prof, state.prep
    report = {
        "schema_version": SCHEMA_VERSION,
        "tool": {"name": "edgeprune", "version": __version__},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "budget_met": budget_met, "stop_reason": stop_reason, "policy": policy,
        "budget": None if cfg.budget is None else {
            "spec": str(cfg.budget), "kind": cfg.budget.kind, "value": cfg.budget.value,
            "percentile": cfg.percentile, "target_ms": b.target_ms, "target_ratio": b.target_ratio},
        "constraints": constraints_report(state, fin),
        "allocation": state.allocator.describe(),
        "config": cfg.to_dict(), "device": prof.device.to_dict(), "host": prof.host.to_dict(),
        "runner": {**prof.runner.describe(), **({"fallback": prof.fallback} if prof.fallback else {})},
        "telemetry": prof.runner.telemetry(),
        "versions": versions(),
        "model": {"name": prep.model.name, "source": prep.model.source,
                  "input_shape": list(prep.model.input_shape), "num_classes": prep.model.num_classes,
                  "training": prep.training or None},
        "data": prep.data.describe(), "precision": state.precision_report or None,
        "iterations": state.iterations, "final": final,
        "elapsed_s": round(time.perf_counter() - state.t0, 2),
    }
    write_json(out / "report.json", report)
    (out / "report.md").write_text(render_report(report))
    report["manifest"] = {"schema_version": SCHEMA_VERSION, "tool": report["tool"], "device": cfg.device,
                          "versions": report["versions"], "budget_met": budget_met, "created": report["created"]}
    return BuildResult(out, report, budget_met, stop_reason,
                       {n: out / n for n in (*artifacts, "report.json", "report.md")})


def constraints_report(state: BuildState, fin: dict[str, Any]) -> dict[str, Any]:
    cfg, b, out = state.config, state.budgets, {}
    if cfg.budget is not None:
        out["latency"] = {"budget": str(cfg.budget), "percentile": cfg.percentile, "target_ms": b.target_ms,
                          "final_ratio": fin["latency_ratio"]["ratio"] if fin["latency_ratio"] else 1.0,
                          "met": fin["checks"].get("latency")}
    if cfg.memory_budget_mb is not None:
        out["memory"] = {"budget_mb": cfg.memory_budget_mb, "metric": cfg.memory_metric,
                         "measured_as": "ONNX initializer bytes (the weights the runtime loads)"
                         if cfg.memory_metric == "weights" else fin["memory"]["peak_source"],
                         "baseline_mb": b.base_memory_mb,
                         "final_mb": constraints.memory_mb(fin, cfg.memory_metric, state.prof.runner.name),
                         "met": fin["checks"].get("memory")}
    if cfg.max_accuracy_drop is not None:
        out["accuracy"] = {"max_drop": cfg.max_accuracy_drop, "baseline": state.iterations[0]["accuracy"],
                           "final": fin["accuracy"], "met": fin["checks"].get("accuracy")}
    return out


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime
    import torch_pruning

    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_pruning": torch_pruning.__version__,
           "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except Exception:
        pass
    return out
