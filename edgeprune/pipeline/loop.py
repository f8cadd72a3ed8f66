"""The build loop, top to bottom: profile the target -> load the model and data -> the unpruned baseline ->
attempts proposed by the policy until it stops -> the chosen attempt's artifacts. One way, no climbing back:
an attempt is attempt.py, the decisions are constraints.py and policies/, the writing is artifacts.py."""
from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any


from ..backends.base.stats import LatencyStats
from ..config import BuildConfig
from ..errors import BudgetNotMet, ConfigError, ParityError
from ..export.onnx import export_onnx
from ..export.quantize import QuantizationFailed
from ..files import StagedOutput, work_dir
from ..pruning.allocation import Allocator
from ..pruning.prune import DEEPEST_RATIO, prunable_widths, prune_model
from ..pruning.recover import recalibrate_bn
from ..training import Trainer, distributed
from ..registry import POLICIES
from . import constraints, precision, stages
from .artifacts import BuildResult, write_artifacts
from .attempt import BuildState, Progress, attempt, make_record
from .resume import Checkpoint
from .policies import Measured, Policy, Step, Stop

log = logging.getLogger(__name__)

__all__ = ["BuildResult", "Progress", "build"]


class _LogProgress:
    def stage(self, name: str, detail: str = "") -> None:
        log.info("%s %s", name, detail)

    def iteration(self, record: dict[str, Any]) -> None:
        log.info("iteration %s: %s", record["index"], record.get("summary", ""))


def build(config: BuildConfig | None = None, progress: Progress | None = None, train_fn: Any = None,
          eval_fn: Any = None, **overrides: Any) -> BuildResult | None:
    """Run the whole build. Returns the result when the budget is met; raises BudgetNotMet (after writing the
    best attempt, marked as not meeting the budget) when it is not; any other error leaves no artifacts.
    `train_fn(model, epochs) -> model` fine-tunes each pruned model in the caller's own loop, `eval_fn(model or
    deployed session) -> float` is the caller's metric (training/trainer.py). Under torchrun, rank 0 builds and
    returns the result; the other ranks fine-tune beside it (training/distributed.py) and return None."""
    config = (config or BuildConfig()).replace(**overrides) if overrides else (config or BuildConfig())
    trainer = Trainer.from_config(config, train_fn, eval_fn)  # a train device that is not here fails now
    config = config.replace(extra={**config.extra, "trainer": trainer})
    with distributed.session(config, user_loop=trainer.train_fn is not None) as group:
        if group is not None and not group.leader:
            distributed.follow(config, group)
            return None
        return _build(config, progress or _LogProgress())


def _build(config: BuildConfig, progress: Progress) -> BuildResult:
    checkpoint = Checkpoint.open(config)  # --resume: a missing or mismatched checkpoint fails here, first
    staged = StagedOutput(Path(config.out), overwrite=config.overwrite, force=config.force)
    work = work_dir()  # named with this pid: a later build sweeps it if this one is killed
    prof = None
    try:
        try:
            progress.stage("profile", f"device {config.device}"
                           + (f" on {config.remote} over SSH" if config.remote else ""))
            prof = stages.profile_stage(config, work)
            checkpoint.bind(prof)
            result = _run(config, progress, prof, staged.path, work, checkpoint)
        finally:
            if prof is not None:
                prof.runner.close()  # a remote session ends here, success or not
        result.out = staged.commit(result.report["manifest"])
        checkpoint.finish()  # the build is whole: nothing left to resume
    except BaseException as exc:
        staged.discard()
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):  # only an interrupted build is resumed
            checkpoint.finish()
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not result.budget_met:
        missed = ", ".join(constraints.failed_names(
            [result.report["iterations"][result.report["final"]["index"]]])) or "budget"
        err = BudgetNotMet(f"{missed} not met ({result.stop_reason}); the best attempt is in {result.out}, "
                           "marked budget_met: false: relax the budget or allow more iterations")
        err.result = result
        raise err
    return result


def _run(config: BuildConfig, progress: Progress, prof: stages.Profile, out: Path, work: Path,
         checkpoint: Checkpoint | None = None) -> BuildResult:
    progress.stage("model", f"{config.model} on {config.data}")
    prep = stages.model_stage(config, lambda msg: progress.stage("train", msg))
    state = BuildState(config, progress, work, prof, prep, config.channel_multiple or prof.device.channel_multiple,
                       checkpoint=checkpoint)
    base = prep.model.module
    state.full_widths = prunable_widths(base, state.example)  # raises, naming why, when nothing can be pruned

    searched, left_out = precision.requested(config.precision, prof.device, prof.runner)
    if "int8" in searched:
        state.calibration  # noqa: B018 -- read now: too few calibration images fails before any measuring
    baseline = _baseline(state)
    state.allocator = _allocator(state)
    if checkpoint is not None:
        checkpoint.save(state, 0, 0.0, baseline, weights=False)
    policy_name = config.effective_policy
    # Attempts are (pruning ratio, precision). fp32 is searched first, exactly as an fp32-only build searches it
    # (same attempts, same fine-tuning seeds), so `auto` chooses over a superset of what fp32 alone would ship.
    # Each reduced precision is then tried on the unpruned model; in `auto` one slower than fp32 there (or off in
    # parity) is dropped with its figures; one kept gets its own search, aimed from where its unpruned model
    # stands. The choice is over all of them.
    measured: list[Measured] = []
    dropped: dict[str, str] = {}
    stops: dict[str, Stop] = {}
    policy = None
    for prec in searched:
        start: dict[str, float] = {}
        if prec != "fp32":
            state.precisions[prec] = precision.first_settings(state, prec)
            try:
                record = attempt(state, len(measured) + 1, Step(0.0, f"the unpruned model in {prec}"), prec)
            except QuantizationFailed as exc:
                if config.precision != "auto":
                    raise
                dropped[prec] = exc.message
                state.progress.stage("precision", f"{prec} dropped: {exc.message}")
                continue
            start = constraints.values(record, state.budgets)
            why = precision.dropped_reason(prec, record, prof.runner.name) if config.precision == "auto" else None
            measured.append(_measured(state, record, 0.0, None, start, dropped=why is not None))
            if why:
                dropped[prec] = record["dropped"] = why
                state.progress.stage("precision", f"{prec} dropped: {why}")  # and in the report, with the figures
                continue
        policy = _policy(state, policy_name, baseline, start)
        history: list[Measured] = []
        step = policy.first_step()
        while isinstance(step, Step):
            record = attempt(state, len(measured) + 1, step, prec)
            history.append(_measured(state, record, step.ratio, policy, start))
            measured.append(history[-1])
            step = policy.next_step([policy.observe(m) for m in history])
        assert isinstance(step, Stop)
        stops[prec] = step
    final_idx, budget_met, reason = _choose(state, policy or _policy(state, policy_name, baseline, {}), measured,
                                            stops, dropped)
    state.iterations[final_idx]["selected"] = True
    state.precision_report = {
        "requested": config.precision or f"device default ({prof.device.default_precision})",
        "searched": [p for p in searched if p not in dropped], "dropped": dropped, "left_out": left_out,
        "settings": {p: dataclasses.asdict(s) for p, s in state.precisions.items()},
        "stops": {p: s.reason for p, s in stops.items()}}
    return write_artifacts(state, out, final_idx, budget_met, reason, policy_name)


def _baseline(state: BuildState) -> dict[str, Any]:
    """The unpruned model exported, checked, measured and scored; the budgets resolved against it."""
    cfg = state.config
    state.progress.stage("baseline", "export, parity, measure, accuracy")
    base = state.prep.model.module
    state.models[0] = base
    state.exports[0] = state.export(base, 0)
    saved = state.checkpoint.baseline() if state.checkpoint is not None else None
    if saved is not None:  # --resume on the same device and runtime: the budgets stay what they were
        state.progress.stage("resume", "the baseline's measurement restored from the checkpoint")
        stats = LatencyStats.from_dict(saved["latency"])
    else:
        stats = state.prof.runner.measure(state.exports[0].deployed, *state.measure_args())
    latency = stats.percentile(cfg.percentile)
    target_ms = cfg.budget.target_ms(latency) if cfg.budget else None
    state.budgets = constraints.Budgets(
        latency_kind=cfg.budget.kind if cfg.budget else None, percentile=cfg.percentile, target_ms=target_ms,
        target_ratio=target_ms / latency if cfg.budget else None, memory_budget_mb=cfg.memory_budget_mb,
        memory_metric=cfg.memory_metric, max_accuracy_drop=cfg.max_accuracy_drop)
    baseline = make_record(state, 0, 0.0, "unpruned baseline", base, stats, None, {"bn_recalibration": False})
    state.budgets = constraints.Budgets(**{
        **state.budgets.__dict__, "base_accuracy": baseline["accuracy"],
        "base_memory_mb": constraints.memory_mb(baseline, cfg.memory_metric, state.prof.runner.name)})
    _check_accuracy_constraint(state, baseline)
    baseline["checks"] = constraints.checks(baseline, state.budgets, None)
    baseline["budget_met"] = all(baseline["checks"].values())
    return baseline


def _policy(state: BuildState, name: str, baseline: dict[str, Any], start: dict[str, float]) -> Policy:
    """The policy of one precision's search; `start` is where its unpruned model stands (empty: fp32)."""
    cfg, targets = state.config, state.budgets.bound_targets()
    if name == "accuracy-critical" and not targets:
        return POLICIES.get(name)(cfg.max_accuracy_drop, baseline["accuracy"], cfg.max_iterations,
                                  signature=state.signature, max_ratio=DEEPEST_RATIO)
    # every bound at once: the search aims at the tightest one (constraints.cost scales the others to it)
    kind = "memory-constrained" if set(targets) == {"memory"} else "latency-sensitive"
    return POLICIES.get(kind)(1.0 / constraints.scale(state.budgets, start), cfg.max_iterations,
                              signature=state.signature, max_ratio=DEEPEST_RATIO)


def _measured(state: BuildState, record: dict[str, Any], ratio: float, policy: Policy | None,
              start: dict[str, float], dropped: bool = False) -> Measured:
    sig = state.signature(ratio)  # the exact ratio: the report rounds it
    return Measured(ratio, record["latency_ratio"]["ratio"], constraints.cost(record, state.budgets, start),
                    constraints.bounds_met(record["checks"], state.budgets), record["budget_met"] and not dropped,
                    record["accuracy"], sig, policy is not None and sig == state.signature(policy.max_ratio))


def _choose(state: BuildState, policy: Policy, measured: list[Measured], stops: dict[str, Stop],
            dropped: dict[str, str]) -> tuple[int, bool, str]:
    """The attempt to ship, over every precision: meeting every constraint, best by the policy's objective
    (latency ratios are all against the unpruned fp32 model); else the closest."""
    reason = "; ".join(f"{p}: {s.reason}" if len(stops) > 1 else s.reason for p, s in stops.items()) \
        or "every reduced precision was dropped: " + "; ".join(dropped.values())
    if not measured:
        return 0, bool(state.iterations[0]["budget_met"]), reason
    chosen = policy.choose(measured, 100.0 / len(state.prep.data.val))
    if chosen is not None:
        return chosen + 1, True, reason
    failed = constraints.failed_constraints(state.iterations[1:])
    kept = [i for i, m in enumerate(measured) if not (state.iterations[i + 1].get("dropped"))] or \
        list(range(len(measured)))
    closest = kept[policy.closest([measured[i] for i in kept])]
    return (closest + 1, False,
            f"{reason}; no attempt meets every constraint (failed: {', '.join(failed) or 'none'})")


def _check_accuracy_constraint(state: BuildState, baseline: dict[str, Any]) -> None:
    cfg, prep = state.config, state.prep
    if cfg.max_accuracy_drop is None:
        return
    if prep.accuracy_available is not None:
        raise ConfigError(f"an accuracy tolerance needs labeled data the model can be scored on: "
                          f"{prep.accuracy_available}")
    torch_acc = prep.trainer.accuracy_torch(prep.model.module, prep.data)
    baseline["accuracy_torch"] = torch_acc
    if torch_acc - baseline["accuracy"] > cfg.max_accuracy_drop:
        raise ParityError(f"the unpruned model's ONNX artifact already scores {baseline['accuracy']:.2f}% "
                          f"against {torch_acc:.2f}% in PyTorch, beyond the {cfg.max_accuracy_drop:g}-point "
                          "tolerance: the export is broken; report the model and versions")


def _allocator(state: BuildState) -> Allocator:
    cfg, data = state.config, state.prep.data
    saved = state.checkpoint.allocator() if state.checkpoint is not None else None
    if saved is not None and cfg.allocation in ("sensitivity", "latency"):  # measured before: reused on resume
        alloc = Allocator(state.prep.model.module, state.example, state.multiple, "uniform", cfg.criterion)
        alloc.allocation, alloc.scales = cfg.allocation, {k: float(v) for k, v in saved["scales"].items()}
        alloc.sensitivity, alloc.latency_saving = saved.get("sensitivity") or {}, saved.get("latency_saving") or {}
        return alloc
    can_score = state.prep.accuracy_available is None
    return Allocator(state.prep.model.module, state.example, state.multiple, cfg.allocation, cfg.criterion,
                     batches=data.labeled_batches(),
                     evaluate=(lambda m: state.prep.trainer.accuracy_torch(m, data)) if can_score else None,
                     recalibrate=lambda m: recalibrate_bn(m, data.calibration_batches()),
                     measure=_latency_probe(state) if cfg.allocation == "latency" else None)


def _latency_probe(state: BuildState):
    """Candidate / baseline latency of the model pruned to `widths` (no recovery: timing needs none), timed
    interleaved with the baseline on the target runtime, with a quarter of a build's usual runs."""
    probes = [0]

    def probe(widths: dict[str, int]) -> float:
        probes[0] += 1
        state.progress.stage("allocate", f"latency probe {probes[0]} of {len(state.full_widths)}")
        pruned = prune_model(state.prep.model.module, state.example, 0.0, state.multiple, "l1", widths=widths)
        path = state.work / f"probe{probes[0]:03d}" / "model.onnx"
        path.parent.mkdir(parents=True)
        export_onnx(pruned.model, state.prep.model.input_shape, state.config.batch_size, path)
        deployed = state.prof.runner.prepare(path, path.parent)
        _, _, ratio = state.against_baseline(deployed, iters_scale=0.25, blocks_scale=0.5, min_iters=20,
                                             min_blocks=3)
        shutil.rmtree(path.parent, ignore_errors=True)
        return ratio.ratio

    return probe
