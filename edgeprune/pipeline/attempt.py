"""One attempt: prune -> recover -> export -> measure side by side with the unpruned model -> accuracy of the
deployed artifact -> its record in the report. The state every attempt of a build shares is a BuildState."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ..backends.base.stats import LatencyStats, PairedRatio, paired_ratio, within_noise
from ..backends.onnxrt.runner import onnx_weight_bytes
from ..config import BuildConfig
from ..pruning.allocation import Allocator
from ..pruning.cost import model_cost
from ..pruning.prune import prune_model
from . import constraints, precision, stages
from .policies import Step


class Progress(Protocol):
    def stage(self, name: str, detail: str = "") -> None: ...

    def iteration(self, record: dict[str, Any]) -> None: ...


@dataclass
class BuildState:
    config: BuildConfig
    progress: Progress
    work: Path
    prof: stages.Profile
    prep: stages.Prepared
    multiple: int
    full_widths: dict[str, int] = field(default_factory=dict)
    allocator: Allocator | None = None
    budgets: constraints.Budgets = field(default_factory=constraints.Budgets)
    iterations: list[dict[str, Any]] = field(default_factory=list)
    models: dict[int, torch.nn.Module] = field(default_factory=dict)
    exports: dict[int, stages.Exported] = field(default_factory=dict)
    precisions: dict[str, precision.PrecisionSettings] = field(default_factory=dict)  # searched, with settings
    precision_report: dict[str, Any] = field(default_factory=dict)  # what report.json says of the precisions
    checkpoint: Any = None  # resume.Checkpoint: every finished attempt is saved there
    t0: float = field(default_factory=time.perf_counter)
    _calibration: list | None = None
    _validation: list | None = None

    @property
    def calibration(self) -> list:
        """int8 calibration images (training split), read once per build."""
        if self._calibration is None:
            self._calibration = precision.calibration_set(self)
        return self._calibration

    @property
    def validation(self) -> list:
        """Validation images for the reduced-precision parity gate, read once per build."""
        if self._validation is None:
            self._validation = precision.validation_set(self)
        return self._validation

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros(1, *self.prep.model.input_shape)

    def measure_args(self) -> tuple[int, int, int]:
        """(warmup, timed runs per block, blocks) of one measurement."""
        return max(10, self.config.measure_iters // 4), self.config.measure_iters, self.config.measure_blocks

    def against_baseline(self, deployed, iters_scale: float = 1.0, blocks_scale: float = 1.0,
                         min_iters: int = 1, min_blocks: int = 1) -> tuple[LatencyStats, LatencyStats, PairedRatio]:
        """The one way a candidate is timed: in blocks interleaved with the unpruned model's (A B A B ...), in
        one run, compared as the paired ratio of block medians, so the machine's drift cancels out."""
        warmup, iters, blocks = self.measure_args()
        cand, base = self.prof.runner.measure_interleaved(
            [deployed, self.exports[0].deployed], warmup, max(min_iters, int(iters * iters_scale)),
            max(min_blocks, int(blocks * blocks_scale)))
        return cand, base, paired_ratio(cand, base)

    def export(self, model: torch.nn.Module, index: int, tag: str = "", prec: str = "fp32",
               fix: bool = True) -> stages.Exported:
        """The fp32 ONNX (gated on parity with PyTorch) and, for a reduced precision, the ONNX that carries it
        (gated on parity with the fp32 one): what the runner is given."""
        path = self.work / f"iter{index:02d}{tag}" / "model.onnx"  # a new path: runners cache sessions by path
        path.parent.mkdir(parents=True, exist_ok=True)
        exported = stages.export_stage(model, self.prep, self.config.batch_size, path, self.prof.runner)
        if prec == "fp32":
            return exported
        self.progress.stage("precision", f"iteration {index}: {prec}")
        return precision.convert(self, exported, self.precisions[prec], fix)

    def signature(self, ratio: float) -> tuple[int, ...]:
        return tuple(self.allocator.widths(ratio).values())

    def stage_callback(self, name: str, prefix: str = "") -> Callable[[str], None]:
        return lambda msg: self.progress.stage(name, prefix + msg)


def run_attempt(state: BuildState, index: int, step: Step, prec: str = "fp32") -> dict[str, Any]:
    """One (pruning ratio, precision) attempt; ratio 0 is the unpruned model in a reduced precision."""
    cfg, prep = state.config, state.prep
    state.progress.stage("prune", f"iteration {index}: ratio {step.ratio:.3f}"
                         + (f" in {prec}" if prec != "fp32" else "") + f" ({step.reason})")
    if step.ratio == 0.0:  # the unpruned model itself, in another precision
        model = prep.model.module
        pruned = None
    else:
        pruned = prune_model(prep.model.module, state.example, 0.0, state.multiple, cfg.criterion,
                             widths=state.allocator.widths(step.ratio), batches=prep.data.labeled_batches())
        model = pruned.model
    # BN recalibration now; fine-tuning only once the attempt is known to be worth it (below)
    recovery = (stages.recover_stage(model, prep.data, 0, cfg.seed + index, False,
                                     bn_recalibration=cfg.bn_recalibration)
                if pruned is not None else {"bn_recalibration": False, "note": "unpruned: nothing to recover"})
    widths = pruned.widths_after if pruned is not None else None
    can_train = prep.accuracy_available is None and pruned is not None
    state.progress.stage("export", f"iteration {index}")
    state.models[index] = model
    # before fine-tuning an int8 graph's parity only decides nothing: the cheap fixes wait for the tuned weights
    state.exports[index] = state.export(model, index, prec=prec, fix=not (can_train and cfg.finetune_epochs > 0))
    state.progress.stage("measure", f"iteration {index}, interleaved with the baseline")
    cand, base, ratio = state.against_baseline(state.exports[index].deployed)
    remeasured = None
    if state.budgets.target_ratio is not None and within_noise(ratio.ratio, state.budgets.target_ratio, cand):
        state.progress.stage("measure", f"iteration {index}: within noise of the budget, measuring again")
        remeasured = {"first_ratio": ratio.ratio, "first_p": cand.percentile(cfg.percentile)}
        cand, base, ratio = state.against_baseline(state.exports[index].deployed, blocks_scale=2)
    rec = make_record(state, index, step.ratio, step.reason, model, cand, (base, ratio), recovery,
                      widths=widths, evaluate_accuracy=False)
    if cfg.finetune_epochs > 0 and can_train and constraints.worth_finetuning(
            constraints.checks(rec, state.budgets, ratio.ratio)):
        # Fine-tuning changes weight values, not the graph: the latency measured above stands for it, and
        # the shipped artifact is timed again at the end. An attempt over its latency or memory budget can
        # never ship, so it is not fine-tuned (its accuracy is after BN recalibration only, and says so).
        recovery = stages.recover_stage(model, prep.data, cfg.finetune_epochs, cfg.seed + index, can_train,
                                        state.stage_callback("recover", f"iteration {index}: "),
                                        bn_recalibration=False,
                                        teacher=prep.model.module if cfg.distill else None,
                                        trainer=prep.trainer)
        recovery["bn_recalibration"] = cfg.bn_recalibration
        state.progress.stage("export", f"iteration {index}, fine-tuned")
        state.exports[index] = state.export(model, index, "finetuned", prec)
        state.iterations.pop()
        rec = make_record(state, index, step.ratio, step.reason, model, cand, (base, ratio), recovery,
                          widths=widths, memory=rec["memory"])  # same graph, same bytes
    else:
        evaluate(state, rec)
        if cfg.finetune_epochs > 0 and can_train:
            rec["recovery"]["note"] = "not fine-tuned: over a latency or memory budget, so it cannot ship"
    rec["remeasured"] = remeasured
    rec["checks"] = constraints.checks(rec, state.budgets, rec["latency_ratio"]["ratio"])
    rec["budget_met"] = all(rec["checks"].values())
    rec["summary"] = constraints.summary(rec)
    state.progress.iteration(rec)
    return rec


def attempt(state: BuildState, index: int, step: Step, prec: str = "fp32") -> dict[str, Any]:
    """run_attempt, or with --resume the checkpointed attempt restored; checkpointed once finished."""
    ckpt = state.checkpoint
    saved = ckpt.restorable(index, step.ratio, prec) if ckpt is not None and ckpt.same_machine else None
    if saved is not None:
        rec = restore_attempt(state, index, step, saved)
    else:
        rec = run_attempt(state, index, step, prec)
    if ckpt is not None:
        ckpt.save(state, index, step.ratio, rec, weights=step.ratio > 0)
    return rec


def restore_attempt(state: BuildState, index: int, step: Step, saved: dict[str, Any]) -> dict[str, Any]:
    """A checkpointed attempt as if it had just run: its record, its pruned model and its ONNX, prepared."""
    from ..export.onnx import ExportResult, Parity

    state.progress.stage("resume", f"iteration {index}: restored from the checkpoint")
    weights, files = state.checkpoint.restore_files(index, state.work)
    rec = saved["record"]
    if step.ratio == 0.0:
        model = state.prep.model.module
    else:
        model = prune_model(state.prep.model.module, state.example, 0.0, state.multiple, state.config.criterion,
                            widths=state.allocator.widths(step.ratio)).model
        model.load_state_dict(weights)
    path = files[saved["onnx"]]
    exported = stages.Exported(ExportResult(path=path, **rec["export"]), Parity(**rec["parity"]),
                               state.prof.runner.prepare(path, path.parent), precision=rec["precision"],
                               quantization=rec["quantization"], precision_parity=rec["precision_parity"])
    state.models[index], state.exports[index] = model, exported
    state.iterations.append(rec)
    state.progress.iteration(rec)
    return rec


def make_record(state: BuildState, index: int, ratio: float, reason: str, model: torch.nn.Module,
                stats: LatencyStats, paired: tuple[LatencyStats, PairedRatio] | None, recovery: dict[str, Any],
                widths: dict[str, int] | None = None, memory: dict[str, Any] | None = None,
                evaluate_accuracy: bool = True) -> dict[str, Any]:
    """The iteration's entry in the report. `memory` reuses what was measured for the same graph;
    `evaluate_accuracy=False` leaves the accuracy for `evaluate()` (an attempt that is about to be fine-tuned)."""
    cfg = state.config
    exported = state.exports[index]
    cost = model_cost(model, state.prep.model.input_shape)
    memory = memory if memory is not None else measure_memory(state, index, exported)
    rec: dict[str, Any] = {
        "index": index, "kind": "baseline" if index == 0 else "attempt", "ratio": round(ratio, 4),
        "step_reason": reason, "widths": widths or dict(state.full_widths), "params": cost.params,
        "macs": cost.macs, "param_bytes": cost.param_bytes, "latency_ms": stats.percentile(cfg.percentile),
        "latency": stats.to_dict(), "latency_ratio": None, "baseline_latency_paired": None,
        "budget_met": None, "memory": memory, "accuracy": None, "accuracy_source": state.prep.accuracy_available,
        "parity": exported.parity.to_dict(),
        "export": {k: v for k, v in exported.export.to_dict().items() if k != "path"},
        "recovery": recovery, "selected": False, "elapsed_s": round(time.perf_counter() - state.t0, 2),
        "precision": exported.precision, "quantization": exported.quantization,
        "precision_parity": exported.precision_parity,
    }
    if paired is not None:
        base_stats, ratio_obj = paired
        rec["latency_ratio"] = ratio_obj.to_dict()
        rec["baseline_latency_paired"] = base_stats.to_dict()
    if evaluate_accuracy:
        evaluate(state, rec)
    rec["summary"] = constraints.summary(rec)
    state.iterations.append(rec)
    return rec


def measure_memory(state: BuildState, index: int, exported: stages.Exported) -> dict[str, Any]:
    if index == 0 or state.config.memory_metric == "peak":
        memory = state.prof.runner.memory(exported.deployed)
    else:  # the runtime's peak takes a fresh process: measured for the baseline and the shipped artifact
        memory = {"weights_bytes": None, "peak_mb": None,
                  "peak_source": "not measured for this attempt (only for the baseline and the shipped one)"}
    if memory.get("weights_bytes") is None:  # also for a runner that cannot read weights: count the ONNX's
        memory = {**memory, "weights_bytes": onnx_weight_bytes(exported.export.path)}
    return memory


def evaluate(state: BuildState, rec: dict[str, Any]) -> None:
    """Top-1 accuracy of the iteration's deployed artifact, when the data can score the model."""
    if state.prep.accuracy_available is None:
        exported = state.exports[rec["index"]]
        rec["accuracy"] = stages.accuracy_stage(state.prof.runner, exported.deployed, state.prep.data,
                                                trainer=state.prep.trainer)
        rec["accuracy_source"] = "onnx artifact (val split)"
        rec["accuracy_metric"] = state.prep.trainer.metric
