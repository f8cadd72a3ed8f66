"""The build loop: profile -> baseline -> (prune -> recover -> export -> measure -> evaluate) until the policy
stops -> artifacts. Stages are in stages.py; this module only orchestrates and records."""
from __future__ import annotations

import logging
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from .. import __version__
from ..config import BuildConfig
from ..errors import BudgetNotMet, ConfigError, ParityError
from ..export.onnx import export_onnx
from ..pruning.cost import model_cost
from ..backends.onnxrt.runner import onnx_weight_bytes
from ..backends.base.stats import LatencyStats, paired_ratio, within_noise
from ..pruning.prune import DEEPEST_RATIO, prunable_widths, prune_model
from . import stages
from ..files import StagedOutput, write_json
from ..pruning.allocation import Allocator
from ..pruning.recover import accuracy_torch, recalibrate_bn
from .policies import (AccuracyCriticalPolicy, Attempt, LatencySensitivePolicy, Step, Stop, choose_fastest,
                     choose_final)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1


class Progress(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...

    def iteration(self, record: dict[str, Any]) -> None: ...


class _LogProgress:
    def stage(self, name: str, detail: str = "") -> None:
        log.info("%s %s", name, detail)

    def iteration(self, record: dict[str, Any]) -> None:
        log.info("iteration %s: %s", record["index"], record.get("summary", ""))


@dataclass
class BuildResult:
    out: Path
    report: dict[str, Any]
    budget_met: bool
    stop_reason: str
    artifacts: dict[str, Path] = field(default_factory=dict)


def build(config: BuildConfig | None = None, progress: Progress | None = None, **overrides: Any) -> BuildResult:
    """Run the whole build. Returns the result when the budget is met; raises BudgetNotMet (after writing the
    best attempt, marked as not meeting the budget) when it is not; any other error leaves no artifacts."""
    config = (config or BuildConfig()).replace(**overrides) if overrides else (config or BuildConfig())
    progress = progress or _LogProgress()
    staged = StagedOutput(Path(config.out), overwrite=config.overwrite)
    work = Path(tempfile.mkdtemp(prefix="edgeprune-work-"))
    builder = _Build(config, progress, staged.path, work)
    try:
        try:
            result = builder.run()
        finally:
            builder.close()  # a remote session ends here, success or not
        result.out = staged.commit(result.report["manifest"])
    except BaseException:
        staged.discard()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not result.budget_met:
        err = BudgetNotMet(f"latency budget not met ({result.stop_reason}); the best attempt is in {result.out}, "
                           "marked budget_met: false: relax the budget or allow more iterations")
        err.result = result
        raise err
    return result


class _Build:
    def __init__(self, config: BuildConfig, progress: Progress, stage_dir: Path, work: Path):
        self.config, self.progress, self.stage_dir, self.work = config, progress, stage_dir, work
        self.iterations: list[dict[str, Any]] = []
        self.models: dict[int, torch.nn.Module] = {}
        self.exports: dict[int, stages.Exported] = {}
        self.t0 = time.perf_counter()

    def run(self) -> BuildResult:
        cfg = self.config
        self.progress.stage("profile", f"device {cfg.device}" + (f" on {cfg.remote} over SSH" if cfg.remote else ""))
        self.prof = stages.profile_stage(cfg, self.work)
        self.multiple = cfg.channel_multiple or self.prof.device.channel_multiple
        self.progress.stage("model", f"{cfg.model} on {cfg.data}")
        self.prep = stages.model_stage(cfg, lambda msg: self.progress.stage("train", msg))
        shape = self.prep.model.input_shape
        self.example = torch.zeros(1, *shape)
        base = self.prep.model.module
        self.full_widths = prunable_widths(base, self.example)  # raises, naming why, when nothing can be pruned

        self.progress.stage("baseline", "export, parity, measure, accuracy")
        self.models[0] = base
        self.exports[0] = self._export(base, 0)
        base_stats = self.prof.runner.measure(self.exports[0].deployed, *self._measure_args())
        self.base_latency = base_stats.percentile(cfg.percentile)
        budget = cfg.budget
        self.target_ms = budget.target_ms(self.base_latency) if budget else None
        self.target_ratio = self.target_ms / self.base_latency if budget else None
        baseline = self._record(0, 0.0, "unpruned baseline", base, base_stats, None, {"bn_recalibration": False})
        self.base_memory = self._memory_mb(baseline)
        self._check_accuracy_constraint(baseline)
        baseline["checks"] = self._checks(baseline, None)
        baseline["budget_met"] = all(baseline["checks"].values())
        self.allocator = self._allocator()

        policy_name = cfg.effective_policy
        bound_targets = self._bound_targets()
        if policy_name == "accuracy-critical" and not bound_targets:
            policy = AccuracyCriticalPolicy(cfg.max_accuracy_drop, baseline["accuracy"], cfg.max_iterations,
                                            signature=self._signature, max_ratio=DEEPEST_RATIO)
        else:
            policy = LatencySensitivePolicy(1.0 / max(1.0 / t for t in bound_targets.values()), cfg.max_iterations,
                                            signature=self._signature, max_ratio=DEEPEST_RATIO,
                                            initial_k=2.0 if set(bound_targets) == {"memory"} else 1.5)
        searched: list[Attempt] = []
        step = policy.first_step()
        while isinstance(step, Step):
            record = self._attempt(len(searched) + 1, step)
            sig = self._signature(step.ratio)  # the exact ratio: the report rounds it
            deepest = sig == self._signature(policy.max_ratio)
            if isinstance(policy, AccuracyCriticalPolicy):
                searched.append(Attempt(step.ratio, record["latency_ratio"]["ratio"], record["budget_met"],
                                        sig, record["accuracy"], deepest))
            else:
                bounds_met = all(record["checks"][k] for k in bound_targets)
                searched.append(Attempt(step.ratio, self._cost(record, bound_targets), bounds_met, sig,
                                        record["accuracy"], deepest))
            step = policy.next_step(searched)
        assert isinstance(step, Stop)
        final_idx, budget_met, reason = self._choose(baseline, policy, step)
        self.iterations[final_idx]["selected"] = True
        return self._write(final_idx, budget_met, reason, policy_name)

    def close(self) -> None:
        close = getattr(getattr(self, "prof", None), "runner", None)
        close = getattr(close, "close", None)
        if callable(close):
            close()

    def _choose(self, baseline: dict, policy, stop: Stop) -> tuple[int, bool, str]:
        """The attempt to ship: meeting every constraint, best by the policy's objective; else the closest."""
        attempts = self.iterations[1:]
        if not attempts:
            return 0, bool(baseline["budget_met"]), stop.reason
        full = [Attempt(r["ratio"], r["latency_ratio"]["ratio"], r["budget_met"], None, r["accuracy"])
                for r in attempts]
        if isinstance(policy, AccuracyCriticalPolicy):
            chosen = choose_fastest(full)
        else:
            chosen = choose_final(full, 100.0 / len(self.prep.data.val))
        if chosen is not None:
            return chosen + 1, True, stop.reason
        failed = sorted({k for r in attempts for k, ok in r["checks"].items() if not ok})
        if isinstance(policy, AccuracyCriticalPolicy):  # closest: the smallest accuracy drop
            chosen = max(range(len(attempts)), key=lambda i: (attempts[i]["accuracy"] or 0.0, -attempts[i]["ratio"]))
        else:  # closest: the lowest constrained cost
            targets = self._bound_targets()
            chosen = min(range(len(attempts)), key=lambda i: self._cost(attempts[i], targets) if targets else 0)
        return chosen + 1, False, f"{stop.reason}; no attempt meets every constraint (failed: {', '.join(failed)})"

    def _constraints_report(self, fin: dict) -> dict[str, Any]:
        cfg, out = self.config, {}
        if cfg.budget is not None:
            out["latency"] = {"budget": str(cfg.budget), "percentile": cfg.percentile, "target_ms": self.target_ms,
                              "final_ratio": fin["latency_ratio"]["ratio"] if fin["latency_ratio"] else 1.0,
                              "met": fin["checks"].get("latency")}
        if cfg.memory_budget_mb is not None:
            out["memory"] = {"budget_mb": cfg.memory_budget_mb, "metric": cfg.memory_metric,
                             "measured_as": "ONNX initializer bytes (the weights the runtime loads)"
                             if cfg.memory_metric == "weights" else fin["memory"]["peak_source"],
                             "baseline_mb": self.base_memory, "final_mb": self._memory_mb(fin),
                             "met": fin["checks"].get("memory")}
        if cfg.max_accuracy_drop is not None:
            base = self.iterations[0]["accuracy"]
            out["accuracy"] = {"max_drop": cfg.max_accuracy_drop, "baseline": base, "final": fin["accuracy"],
                               "met": fin["checks"].get("accuracy")}
        return out

    def _bound_targets(self) -> dict[str, float]:
        """Budgets that need pruning deep enough, as target ratios to the unpruned model."""
        out = {}
        if self.target_ratio is not None:
            out["latency"] = self.target_ratio
        if self.config.memory_budget_mb is not None:
            out["memory"] = self.config.memory_budget_mb / self.base_memory
        return out

    def _cost(self, record: dict, targets: dict[str, float]) -> float:
        """The constrained cost relative to the unpruned model, scaled so it meets the policy's target exactly
        when every bound meets its own: max_i(value_i / target_i) / max_i(1 / target_i)."""
        values = {"latency": record["latency_ratio"]["ratio"] if record["latency_ratio"] else 1.0,
                  "memory": self._memory_mb(record) / self.base_memory}
        s = max(values[k] / t for k, t in targets.items())
        s0 = max(1.0 / t for t in targets.values())
        return s / s0

    def _memory_mb(self, record: dict) -> float:
        mem = record["memory"]
        if self.config.memory_metric == "peak":
            if mem.get("peak_mb") is None:
                raise ConfigError(f"runner {self.prof.runner.name} cannot measure peak memory: use "
                                  "--memory-metric weights")
            return float(mem["peak_mb"])
        return mem["weights_bytes"] / 2**20

    def _checks(self, record: dict, ratio: float | None) -> dict[str, bool]:
        cfg, out = self.config, {}
        if cfg.budget is not None:
            out["latency"] = (self._met(LatencyStats.from_dict(record["latency"]), ratio) if ratio is not None
                              else record["latency_ms"] <= self.target_ms)
        if cfg.memory_budget_mb is not None:
            out["memory"] = self._memory_mb(record) <= cfg.memory_budget_mb
        if cfg.max_accuracy_drop is not None:
            base = self.iterations[0]["accuracy"]
            out["accuracy"] = record["accuracy"] is not None and base - record["accuracy"] <= cfg.max_accuracy_drop + 1e-9
        return out

    def _check_accuracy_constraint(self, baseline: dict) -> None:
        cfg = self.config
        if cfg.max_accuracy_drop is None:
            return
        if self.prep.accuracy_available is not None:
            raise ConfigError(f"an accuracy tolerance needs labeled data the model can be scored on: "
                              f"{self.prep.accuracy_available}")
        torch_acc = accuracy_torch(self.prep.model.module, self.prep.data)
        baseline["accuracy_torch"] = torch_acc
        if torch_acc - baseline["accuracy"] > cfg.max_accuracy_drop:
            raise ParityError(f"the unpruned model's ONNX artifact already scores {baseline['accuracy']:.2f}% "
                              f"against {torch_acc:.2f}% in PyTorch, beyond the {cfg.max_accuracy_drop:g}-point "
                              "tolerance: the export is broken; report the model and versions")

    def _allocator(self) -> Allocator:
        cfg = self.config
        data = self.prep.data
        can_score = self.prep.accuracy_available is None
        return Allocator(self.prep.model.module, self.example, self.multiple, cfg.allocation,
                         cfg.criterion, batches=data.labeled_batches(),
                         evaluate=(lambda m: accuracy_torch(m, data)) if can_score else None,
                         recalibrate=lambda m: recalibrate_bn(m, data.calibration_batches()),
                         measure=self._latency_probe if cfg.allocation == "latency" else None)

    def _latency_probe(self, widths: dict[str, int]) -> float:
        """Candidate / baseline latency of the model pruned to `widths` (no recovery: timing needs none), timed
        interleaved with the baseline on the target runtime, with a quarter of a build's usual runs."""
        self._probes = getattr(self, "_probes", 0) + 1
        self.progress.stage("allocate", f"latency probe {self._probes} of {len(self.full_widths)}")
        pruned = prune_model(self.prep.model.module, self.example, 0.0, self.multiple, "l1", widths=widths)
        path = self.work / f"probe{self._probes:03d}" / "model.onnx"
        path.parent.mkdir(parents=True)
        export_onnx(pruned.model, self.prep.model.input_shape, self.config.batch_size, path)
        deployed = self.prof.runner.prepare(path, path.parent)
        warmup, iters, blocks = self._measure_args()
        cand, base = self.prof.runner.measure_interleaved([deployed, self.exports[0].deployed], warmup,
                                                          max(20, iters // 4), max(3, blocks // 2))
        shutil.rmtree(path.parent, ignore_errors=True)
        return paired_ratio(cand, base).ratio

    # -- one attempt -------------------------------------------------------------------------------------
    def _attempt(self, index: int, step: Step) -> dict[str, Any]:
        cfg = self.config
        self.progress.stage("prune", f"iteration {index}: ratio {step.ratio:.3f} ({step.reason})")
        pruned = prune_model(self.prep.model.module, self.example, 0.0, self.multiple,
                             cfg.criterion, widths=self.allocator.widths(step.ratio),
                             batches=self.prep.data.labeled_batches())
        model = pruned.model
        # BN recalibration now; fine-tuning only once the attempt is known to be worth it (below)
        recovery = stages.recover_stage(model, self.prep.data, 0, cfg.seed + index, False,
                                        bn_recalibration=cfg.bn_recalibration)
        self.progress.stage("export", f"iteration {index}")
        self.models[index] = model
        self.exports[index] = self._export(model, index)
        self.progress.stage("measure", f"iteration {index}, interleaved with the baseline")
        cand, base = self.prof.runner.measure_interleaved([self.exports[index].deployed, self.exports[0].deployed],
                                                          *self._measure_args())
        ratio = paired_ratio(cand, base)
        remeasured = None
        if self.target_ratio is not None and within_noise(ratio.ratio, self.target_ratio, cand):
            self.progress.stage("measure", f"iteration {index}: within noise of the budget, measuring again")
            remeasured = {"first_ratio": ratio.ratio, "first_p": cand.percentile(cfg.percentile)}
            warmup, iters, blocks = self._measure_args()
            cand, base = self.prof.runner.measure_interleaved(
                [self.exports[index].deployed, self.exports[0].deployed], warmup, iters, blocks * 2)
            ratio = paired_ratio(cand, base)
        record = self._record(index, step.ratio, step.reason, model, cand, (base, ratio), recovery,
                              widths=pruned.widths_after, evaluate=False)
        if self._worth_finetuning(record):
            # Fine-tuning changes weight values, not the graph: the latency measured above stands for it, and
            # the shipped artifact is timed again at the end. An attempt over its latency or memory budget can
            # never ship, so it is not fine-tuned (its accuracy is after BN recalibration only, and says so).
            recovery = stages.recover_stage(model, self.prep.data, cfg.finetune_epochs, cfg.seed + index,
                                            self.prep.accuracy_available is None,
                                            lambda msg: self.progress.stage("recover", f"iteration {index}: {msg}"),
                                            bn_recalibration=False,
                                            teacher=self.prep.model.module if cfg.distill else None)
            recovery["bn_recalibration"] = cfg.bn_recalibration
            self.progress.stage("export", f"iteration {index}, fine-tuned")
            self.exports[index] = self._export(model, index, "finetuned")
            self.iterations.pop()
            record = self._record(index, step.ratio, step.reason, model, cand, (base, ratio), recovery,
                                  widths=pruned.widths_after, memory=record["memory"])  # same graph, same bytes
        else:
            self._evaluate(record)
            if cfg.finetune_epochs > 0 and self.prep.accuracy_available is None:
                record["recovery"]["note"] = "not fine-tuned: over a latency or memory budget, so it cannot ship"
        record["remeasured"] = remeasured
        record["checks"] = self._checks(record, record["latency_ratio"]["ratio"])
        record["budget_met"] = all(record["checks"].values())
        record["summary"] = self._summary(record)
        self.progress.iteration(record)
        return record

    def _met(self, stats: LatencyStats, ratio: float | None) -> bool:
        if self.config.budget.kind == "relative" and ratio is not None:
            return ratio <= self.target_ratio
        return stats.percentile(self.config.percentile) <= self.target_ms

    def _worth_finetuning(self, record: dict[str, Any]) -> bool:
        """Fine-tune an attempt that meets every latency/memory bound, or every attempt when accuracy alone is
        the constraint (the accuracy-critical search needs each attempt's recovered accuracy)."""
        if self.config.finetune_epochs <= 0 or self.prep.accuracy_available is not None:
            return False
        checks = self._checks(record, record["latency_ratio"]["ratio"])
        return all(ok for name, ok in checks.items() if name != "accuracy")

    def _export(self, model: torch.nn.Module, index: int, tag: str = "") -> stages.Exported:
        path = self.work / f"iter{index:02d}{tag}" / "model.onnx"  # a new path: runners cache sessions by path
        path.parent.mkdir(parents=True, exist_ok=True)
        return stages.export_stage(model, self.prep, self.config.batch_size, path, self.prof.runner)

    def _measure_args(self) -> tuple[int, int, int]:
        return max(10, self.config.measure_iters // 4), self.config.measure_iters, self.config.measure_blocks

    def _signature(self, ratio: float) -> tuple[int, ...]:
        return tuple(self.allocator.widths(ratio).values())

    def _record(self, index, ratio, reason, model, stats, paired, recovery, widths=None, memory=None,
                evaluate=True) -> dict[str, Any]:
        """The iteration's entry in the report. `memory` reuses what was measured for the same graph;
        `evaluate=False` leaves the accuracy for `_evaluate` (an attempt that is about to be fine-tuned)."""
        cfg = self.config
        cost = model_cost(model, self.prep.model.input_shape)
        exported = self.exports[index]
        memory = memory if memory is not None else self._memory(index, exported)
        latency = stats.percentile(cfg.percentile)
        rec: dict[str, Any] = {
            "index": index, "kind": "baseline" if index == 0 else "attempt", "ratio": round(ratio, 4),
            "step_reason": reason, "widths": widths or dict(self.full_widths), "params": cost.params,
            "macs": cost.macs, "param_bytes": cost.param_bytes, "latency_ms": latency,
            "latency": stats.to_dict(), "latency_ratio": None, "baseline_latency_paired": None,
            "budget_met": None, "memory": memory, "accuracy": None, "accuracy_source": self.prep.accuracy_available,
            "parity": exported.parity.to_dict(),
            "export": {k: v for k, v in exported.export.to_dict().items() if k != "path"},
            "recovery": recovery, "selected": False, "elapsed_s": round(time.perf_counter() - self.t0, 2),
        }
        if paired is not None:
            base_stats, ratio_obj = paired
            rec["latency_ratio"] = ratio_obj.to_dict()
            rec["baseline_latency_paired"] = base_stats.to_dict()
        if evaluate:
            self._evaluate(rec)
        rec["summary"] = self._summary(rec)
        self.iterations.append(rec)
        return rec

    def _memory(self, index: int, exported: stages.Exported) -> dict[str, Any]:
        if index == 0 or self.config.memory_metric == "peak":
            memory = self.prof.runner.memory(exported.deployed)
        else:  # the runtime's peak takes a fresh process: measured for the baseline and the shipped artifact
            memory = {"weights_bytes": None, "peak_mb": None,
                      "peak_source": "not measured for this attempt (only for the baseline and the shipped one)"}
        if memory.get("weights_bytes") is None:  # also for a runner that cannot read weights: count the ONNX's
            memory = {**memory, "weights_bytes": onnx_weight_bytes(exported.export.path)}
        return memory

    def _evaluate(self, rec: dict[str, Any]) -> None:
        """Top-1 accuracy of the iteration's ONNX artifact, when the data can score the model."""
        if self.prep.accuracy_available is None:
            exported = self.exports[rec["index"]]
            rec["accuracy"] = stages.accuracy_stage(self.prof.runner, exported.deployed, self.prep.data)
            rec["accuracy_source"] = "onnx artifact (val split)"

    def _summary(self, rec: dict[str, Any]) -> str:
        text = (f"ratio {rec['ratio']:.3f}, {rec['macs'] / 1e6:.1f} MMACs, {rec['latency_ms']:.3f} ms"
                + (f" ({rec['latency_ratio']['ratio']:.3f}x of baseline)" if rec["latency_ratio"] else "")
                + f", {rec['memory']['weights_bytes'] / 2**20:.2f} MB weights"
                + (f", acc {rec['accuracy']:.2f}%" if rec["accuracy"] is not None else ""))
        checks = rec.get("checks")
        if checks and rec["kind"] == "attempt":
            failed = [k for k, ok in checks.items() if not ok]
            text += " meets budget" if not failed else f" fails {', '.join(failed)}"
        return text

    # -- artifacts -----------------------------------------------------------------------------------------
    def _write(self, final_idx: int, budget_met: bool, stop_reason: str, policy: str) -> BuildResult:
        from ..report.markdown import render_report

        cfg = self.config
        self.progress.stage("artifacts", f"writing {cfg.out}")
        out = self.stage_dir
        shipped = self.exports[final_idx].export.path
        shutil.copyfile(shipped, out / "model.onnx")
        external = shipped.with_name(shipped.name + ".data")  # weights of a model over the 2 GiB protobuf cap
        if external.exists():
            shutil.copyfile(external, out / external.name)
        stages.save_model_pt(out / "model.pt", self.models[final_idx], self.prep.model,
                             self.iterations[final_idx]["widths"])
        artifacts = ["model.onnx", *(["model.onnx.data"] if external.exists() else []), "model.pt",
                     *self._copy_shipped(final_idx, out)]
        base, fin = self.iterations[0], self.iterations[final_idx]
        confirmation = None
        if final_idx:  # the shipped bytes themselves, timed once more against the baseline
            self.progress.stage("measure", "the shipped artifact, interleaved with the baseline")
            cand, ref = self.prof.runner.measure_interleaved(
                [self.exports[final_idx].deployed, self.exports[0].deployed], *self._measure_args())
            confirmation = {"latency_ms": cand.percentile(cfg.percentile),
                            "baseline_latency_ms": ref.percentile(cfg.percentile),
                            "latency_ratio": paired_ratio(cand, ref).to_dict()}
        if fin["memory"]["peak_mb"] is None:
            measured = self.prof.runner.memory(self.exports[final_idx].deployed)
            if measured.get("peak_mb") is not None:
                fin["memory"] = {**fin["memory"], **{k: v for k, v in measured.items() if v is not None}}
        speedup = (1.0 / fin["latency_ratio"]["ratio"]) if fin["latency_ratio"] else 1.0
        macs_reduction = base["macs"] / fin["macs"]
        final = {
            "index": final_idx, "budget_met": budget_met, "ratio": fin["ratio"], "params": fin["params"],
            "macs": fin["macs"], "latency_ms": fin["latency_ms"], "percentile": cfg.percentile,
            "baseline_latency_ms": (fin["baseline_latency_paired"] or fin["latency"])[cfg.percentile],
            "latency_ratio": 1.0 / speedup, "target_ms": self.target_ms, "target_ratio": self.target_ratio,
            "speedup": speedup, "macs_reduction": macs_reduction,
            "params_reduction": base["params"] / fin["params"], "speedup_per_macs_reduction": speedup / macs_reduction,
            "accuracy": fin["accuracy"], "baseline_accuracy": base["accuracy"],
            "accuracy_drop": None if fin["accuracy"] is None else base["accuracy"] - fin["accuracy"],
            "memory": fin["memory"], "parity": fin["parity"], "latency_confirmation": confirmation,
        }
        report = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "edgeprune", "version": __version__},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_met": budget_met, "stop_reason": stop_reason, "policy": policy,
            "budget": None if cfg.budget is None else {
                "spec": str(cfg.budget), "kind": cfg.budget.kind, "value": cfg.budget.value,
                "percentile": cfg.percentile, "target_ms": self.target_ms, "target_ratio": self.target_ratio},
            "constraints": self._constraints_report(fin),
            "allocation": self.allocator.describe(),
            "config": cfg.to_dict(), "device": self.prof.device.to_dict(), "host": self.prof.host.to_dict(),
            "runner": {**self.prof.runner.describe(),
                       **({"fallback": self.prof.fallback} if self.prof.fallback else {})},
            "telemetry": self.prof.runner.telemetry(),
            "versions": versions(),
            "model": {"name": self.prep.model.name, "source": self.prep.model.source,
                      "input_shape": list(self.prep.model.input_shape), "num_classes": self.prep.model.num_classes,
                      "training": self.prep.training or None},
            "data": self.prep.data.describe(), "iterations": self.iterations, "final": final,
            "elapsed_s": round(time.perf_counter() - self.t0, 2),
        }
        write_json(out / "report.json", report)
        (out / "report.md").write_text(render_report(report))
        report["manifest"] = {"schema_version": SCHEMA_VERSION, "tool": report["tool"], "device": cfg.device,
                              "versions": report["versions"], "budget_met": budget_met, "created": report["created"]}
        return BuildResult(out, report, budget_met, stop_reason,
                           {n: out / n for n in (*artifacts, "report.json", "report.md")})

    def _copy_shipped(self, index: int, out: Path) -> list[str]:
        """What the runner ships beside model.onnx (a TensorRT engine and its sidecar), built here or far away."""
        names = []
        for name, src in self.prof.runner.shipped(self.exports[index].deployed).items():
            shutil.copyfile(src, out / name)
            names.append(name)
        return names


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
