"""The build's decisions as pure functions of a report record and the budgets: which constraints an attempt
meets, its constrained cost, whether it is worth fine-tuning, and its one-line summary. No model, no runtime:
each is tested on hand-made records (tests/test_constraints.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Budgets:
    """What the build must meet, resolved against the unpruned model once it is measured."""

    latency_kind: str | None = None        # "relative" | "absolute" | None (no latency budget)
    percentile: str = "p50"
    target_ms: float | None = None
    target_ratio: float | None = None
    memory_budget_mb: float | None = None
    memory_metric: str = "weights"         # "weights" | "peak"
    max_accuracy_drop: float | None = None
    base_accuracy: float | None = None
    base_memory_mb: float | None = None

    def bound_targets(self) -> dict[str, float]:
        """Budgets that need pruning deep enough, as target ratios to the unpruned model."""
        out = {}
        if self.target_ratio is not None:
            out["latency"] = self.target_ratio
        if self.memory_budget_mb is not None:
            out["memory"] = self.memory_budget_mb / self.base_memory_mb
        return out


def memory_mb(record: dict[str, Any], metric: str, runner: str = "this runner") -> float:
    mem = record["memory"]
    if metric == "peak":
        if mem.get("peak_mb") is None:
            raise ConfigError(f"runner {runner} cannot measure peak memory: use --memory-metric weights")
        return float(mem["peak_mb"])
    return mem["weights_bytes"] / 2**20


def checks(record: dict[str, Any], budgets: Budgets, paired_ratio: float | None) -> dict[str, bool]:
    """Each constraint given, met or not. `paired_ratio` is the attempt's latency ratio measured side by side
    with the unpruned model (None for the baseline, which is judged on its own latency)."""
    out = {}
    if budgets.latency_kind is not None:
        if paired_ratio is None:
            out["latency"] = record["latency_ms"] <= budgets.target_ms
        elif budgets.latency_kind == "relative":
            out["latency"] = paired_ratio <= budgets.target_ratio
        else:
            out["latency"] = record["latency"][budgets.percentile] <= budgets.target_ms
    if budgets.memory_budget_mb is not None:
        out["memory"] = memory_mb(record, budgets.memory_metric) <= budgets.memory_budget_mb
    if budgets.max_accuracy_drop is not None:
        out["accuracy"] = (record["accuracy"] is not None
                           and budgets.base_accuracy - record["accuracy"] <= budgets.max_accuracy_drop + 1e-9)
    if record.get("precision_parity"):  # a reduced-precision graph ships only within its tolerance of fp32
        out["precision_parity"] = bool(record["precision_parity"]["ok"])
    return out


def cost(record: dict[str, Any], budgets: Budgets, start: dict[str, float] | None = None) -> float:
    """The constrained cost relative to the unpruned model, scaled so it meets the policy's target exactly
    when every bound meets its own: max_i(value_i / target_i) / max_i(start_i / target_i). 0 with no bound.

    `start`: each bound's value for the unpruned model in the precision searched (the int8 unpruned model takes
    0.5x the fp32 latency, say); 1.0 each for fp32. A search in that precision then starts from cost 1.0."""
    targets = budgets.bound_targets()
    if not targets:
        return 0.0
    return max(values(record, budgets)[k] / t for k, t in targets.items()) / scale(budgets, start)


def values(record: dict[str, Any], budgets: Budgets) -> dict[str, float]:
    """Each bound's value for `record`, relative to the unpruned fp32 model."""
    return {"latency": record["latency_ratio"]["ratio"] if record["latency_ratio"] else 1.0,
            "memory": (memory_mb(record, budgets.memory_metric) / budgets.base_memory_mb
                       if budgets.memory_budget_mb is not None else 1.0)}


def scale(budgets: Budgets, start: dict[str, float] | None = None) -> float:
    """max_i(start_i / target_i): the policy's target cost is its inverse."""
    start = start or {}
    return max(start.get(k, 1.0) / t for k, t in budgets.bound_targets().items())


def bounds_met(record_checks: dict[str, bool], budgets: Budgets) -> bool:
    return all(record_checks[k] for k in budgets.bound_targets())


def worth_finetuning(record_checks: dict[str, bool]) -> bool:
    """Fine-tune an attempt that meets every latency/memory bound, or every attempt when accuracy alone is
    the constraint (the accuracy-critical search needs each attempt's recovered accuracy): an attempt over its
    latency or memory budget can never ship."""
    # accuracy and a reduced-precision graph's parity are read again after fine-tuning, which changes both
    return all(ok for name, ok in record_checks.items() if name not in ("accuracy", "precision_parity"))


def failed_constraints(records: list[dict[str, Any]]) -> list[str]:
    return sorted({k for r in records for k, ok in r["checks"].items() if not ok})


def failed_names(records: list[dict[str, Any]]) -> list[str]:
    """The failed constraints in words, e.g. ['latency budget', 'reduced-precision parity with fp32']."""
    return [("reduced-precision parity with fp32" if k == "precision_parity" else f"{k} budget")
            for k in failed_constraints(records)]


def summary(rec: dict[str, Any]) -> str:
    text = (f"ratio {rec['ratio']:.3f}"
            + (f" {rec['precision']}" if rec.get("precision", "fp32") != "fp32" else "")
            + f", {rec['macs'] / 1e6:.1f} MMACs, {rec['latency_ms']:.3f} ms"
            + (f" ({rec['latency_ratio']['ratio']:.3f}x of baseline)" if rec["latency_ratio"] else "")
            + f", {rec['memory']['weights_bytes'] / 2**20:.2f} MB weights"
            + (f", acc {rec['accuracy']:.2f}%" if rec["accuracy"] is not None else ""))
    record_checks = rec.get("checks")
    if record_checks and rec["kind"] == "attempt":
        failed = [k for k, ok in record_checks.items() if not ok]
        text += " meets budget" if not failed else f" fails {', '.join(failed)}"
    return text
