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
from ..errors import BudgetNotMet, ConfigError
from ..profiling.cost import model_cost
from ..profiling.stats import LatencyStats, paired_ratio, within_noise
from ..pruning.prune import prunable_widths, prune_model, round_width
from . import stages
from .artifacts import StagedOutput, write_json
from .policy import Attempt, LatencySensitivePolicy, Step, Stop, choose_final

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
    if config.budget is None:
        raise ConfigError("the latency-sensitive policy needs a budget: --latency-budget 0.5x or 2.5ms")
    staged = StagedOutput(Path(config.out), overwrite=config.overwrite)
    work = Path(tempfile.mkdtemp(prefix="edgeprune-work-"))
    try:
        result = _Build(config, progress, staged.path, work).run()
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
        self.progress.stage("profile", f"device {cfg.device}")
        self.prof = stages.profile_stage(cfg)
        self.progress.stage("model", f"{cfg.model} on {cfg.data}")
        self.prep = stages.model_stage(cfg, lambda msg: self.progress.stage("train", msg))
        shape = self.prep.model.input_shape
        self.example = torch.zeros(1, *shape)
        base = self.prep.model.module
        self.full_widths = prunable_widths(base, self.example)
        if not self.full_widths:
            raise ConfigError(f"model {cfg.model} has no layer that structural pruning can shrink")

        self.progress.stage("baseline", "export, parity, measure, accuracy")
        self.models[0] = base
        self.exports[0] = self._export(base, 0)
        base_stats = self.prof.runner.measure(self.exports[0].deployed, *self._measure_args())
        self.base_latency = base_stats.percentile(cfg.percentile)
        budget = cfg.budget
        self.target_ms = budget.target_ms(self.base_latency)
        self.target_ratio = self.target_ms / self.base_latency
        baseline = self._record(0, 0.0, "unpruned baseline", base, base_stats, None, {"bn_recalibration": False})
        baseline["budget_met"] = self.base_latency <= self.target_ms

        policy = LatencySensitivePolicy(self.target_ratio, cfg.max_iterations, signature=self._signature)
        attempts: list[Attempt] = []
        step = policy.first_step()
        while isinstance(step, Step):
            record = self._attempt(len(attempts) + 1, step)
            attempts.append(Attempt(record["ratio"], record["latency_ratio"]["ratio"], record["budget_met"],
                                    self._signature(record["ratio"]), record["accuracy"],
                                    deepest=self._signature(record["ratio"]) == self._signature(policy.max_ratio)))
            step = policy.next_step(attempts)
        assert isinstance(step, Stop)
        if not attempts:  # the unpruned model meets the budget
            final_idx, budget_met = 0, bool(baseline["budget_met"])
        else:
            resolution = 100.0 / len(self.prep.data.val)
            chosen = choose_final(attempts, resolution)
            budget_met = chosen is not None
            if chosen is None:  # keep the fastest attempt, marked as not meeting the budget
                chosen = min(range(len(attempts)), key=lambda i: attempts[i].latency_ratio)
            final_idx = chosen + 1
        self.iterations[final_idx]["selected"] = True
        return self._write(final_idx, budget_met, step.reason)

    # -- one attempt -------------------------------------------------------------------------------------
    def _attempt(self, index: int, step: Step) -> dict[str, Any]:
        cfg = self.config
        self.progress.stage("prune", f"iteration {index}: ratio {step.ratio:.3f} ({step.reason})")
        pruned = prune_model(self.prep.model.module, self.example, step.ratio, self.prof.device.channel_multiple,
                             cfg.criterion, batches=self.prep.data.labeled_batches())
        model = pruned.model
        recovery = stages.recover_stage(model, self.prep.data, cfg.finetune_epochs, cfg.seed + index,
                                        self.prep.accuracy_available is None,
                                        lambda msg: self.progress.stage("recover", f"iteration {index}: {msg}"))
        self.progress.stage("export", f"iteration {index}")
        self.models[index] = model
        self.exports[index] = self._export(model, index)
        self.progress.stage("measure", f"iteration {index}, interleaved with the baseline")
        cand, base = self.prof.runner.measure_interleaved([self.exports[index].deployed, self.exports[0].deployed],
                                                          *self._measure_args())
        ratio = paired_ratio(cand, base)
        remeasured = None
        if within_noise(ratio.ratio, self.target_ratio, cand):
            self.progress.stage("measure", f"iteration {index}: within noise of the budget, measuring again")
            remeasured = {"first_ratio": ratio.ratio, "first_p": cand.percentile(cfg.percentile)}
            warmup, iters, blocks = self._measure_args()
            cand, base = self.prof.runner.measure_interleaved(
                [self.exports[index].deployed, self.exports[0].deployed], warmup, iters, blocks * 2)
            ratio = paired_ratio(cand, base)
        record = self._record(index, step.ratio, step.reason, model, cand, (base, ratio), recovery,
                              widths=pruned.widths_after)
        record["remeasured"] = remeasured
        self.progress.iteration(record)
        return record

    def _met(self, stats: LatencyStats, ratio: float | None) -> bool:
        if self.config.budget.kind == "relative" and ratio is not None:
            return ratio <= self.target_ratio
        return stats.percentile(self.config.percentile) <= self.target_ms

    def _export(self, model: torch.nn.Module, index: int) -> stages.Exported:
        path = self.work / f"iter{index:02d}" / "model.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        return stages.export_stage(model, self.prep, self.config.batch_size, path, self.prof.runner)

    def _measure_args(self) -> tuple[int, int, int]:
        return max(10, self.config.measure_iters // 4), self.config.measure_iters, self.config.measure_blocks

    def _signature(self, ratio: float) -> tuple[int, ...]:
        m = self.prof.device.channel_multiple
        return tuple(round_width(n, ratio, m) for n in self.full_widths.values())

    def _record(self, index, ratio, reason, model, stats, paired, recovery, widths=None) -> dict[str, Any]:
        cfg = self.config
        cost = model_cost(model, self.prep.model.input_shape)
        exported = self.exports[index]
        acc = None
        if self.prep.accuracy_available is None:
            acc = stages.accuracy_stage(self.prof.runner, exported.deployed, self.prep.data)
        memory = self.prof.runner.memory(exported.deployed)
        latency = stats.percentile(cfg.percentile)
        rec: dict[str, Any] = {
            "index": index, "kind": "baseline" if index == 0 else "attempt", "ratio": round(ratio, 4),
            "step_reason": reason, "widths": widths or dict(self.full_widths), "params": cost.params,
            "macs": cost.macs, "param_bytes": cost.param_bytes, "latency_ms": latency,
            "latency": stats.to_dict(), "latency_ratio": None, "baseline_latency_paired": None,
            "budget_met": None, "memory": memory, "accuracy": acc, "accuracy_source": "onnx artifact (val split)"
            if acc is not None else self.prep.accuracy_available, "parity": exported.parity.to_dict(),
            "export": {k: v for k, v in exported.export.to_dict().items() if k != "path"},
            "recovery": recovery, "selected": False, "elapsed_s": round(time.perf_counter() - self.t0, 2),
        }
        if paired is not None:
            base_stats, ratio_obj = paired
            rec["latency_ratio"] = ratio_obj.to_dict()
            rec["baseline_latency_paired"] = base_stats.to_dict()
            rec["budget_met"] = self._met(stats, ratio_obj.ratio)
        rec["summary"] = (f"ratio {ratio:.3f}, {cost.macs / 1e6:.1f} MMACs, {latency:.3f} ms "
                          + (f"({rec['latency_ratio']['ratio']:.3f}x of baseline) " if paired else "")
                          + (f"acc {acc:.2f}% " if acc is not None else "")
                          + ("" if paired is None else ("meets budget" if rec["budget_met"] else "over budget")))
        self.iterations.append(rec)
        return rec

    # -- artifacts -----------------------------------------------------------------------------------------
    def _write(self, final_idx: int, budget_met: bool, stop_reason: str) -> BuildResult:
        from ..reporting.markdown import render_report

        cfg = self.config
        self.progress.stage("artifacts", f"writing {cfg.out}")
        out = self.stage_dir
        final_model = self.models[final_idx]
        shutil.copyfile(self.exports[final_idx].export.path, out / "model.onnx")
        torch.save({"model": final_model, "name": self.prep.model.name, "input_shape": self.prep.model.input_shape,
                    "num_classes": self.prep.model.num_classes, "widths": self.iterations[final_idx]["widths"],
                    "edgeprune_version": __version__}, out / "model.pt")
        base, fin = self.iterations[0], self.iterations[final_idx]
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
            "memory": fin["memory"], "parity": fin["parity"],
        }
        report = {
            "schema_version": SCHEMA_VERSION,
            "tool": {"name": "edgeprune", "version": __version__},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "budget_met": budget_met, "stop_reason": stop_reason, "policy": "latency-sensitive",
            "budget": {"spec": str(cfg.budget), "kind": cfg.budget.kind, "value": cfg.budget.value,
                       "percentile": cfg.percentile, "target_ms": self.target_ms, "target_ratio": self.target_ratio},
            "config": cfg.to_dict(), "device": self.prof.device.to_dict(), "host": self.prof.host.to_dict(),
            "runner": self.prof.runner.describe(), "versions": versions(),
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
                           {n: out / n for n in ("model.onnx", "model.pt", "report.json", "report.md")})


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
