"""What `check` judges and how much worse each metric may get: the metrics, their thresholds and the options.

Options come from defaults, then a YAML file (keys = option names, dashes or underscores), then CLI flags.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError


@dataclass(frozen=True)
class Metric:
    name: str  # JUnit testcase name, JSON key
    label: str
    unit: str  # "ms" | "points" | "bytes" | "MACs"
    option: str  # the threshold's option / YAML key
    default: str
    higher_is_better: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("latency_p50", "latency p50", "ms", "max_latency_increase", "10%"),
    Metric("latency_p90", "latency p90", "ms", "max_latency_p90_increase", "20%"),
    Metric("accuracy", "accuracy (top-1)", "points", "max_accuracy_drop", "0.5", higher_is_better=True),
    Metric("weights_size", "weights size", "bytes", "max_size_increase", "5%"),
    Metric("macs", "MACs", "MACs", "max_macs_increase", "5%"),
)
DEFAULTS: dict[str, Any] = {"remeasure": False, "allow_mismatch": False, "warmup": 50, "iters": 200, "blocks": 10}


@dataclass(frozen=True)
class Threshold:
    """How much worse a metric may get: `relative` (fraction of the baseline), `absolute` (metric units), `off`."""

    kind: str
    value: float
    spec: str

    def allowed(self, baseline: float) -> float:
        """The largest allowed worsening, in the metric's units (infinite when off)."""
        if self.kind == "off":
            return math.inf
        return self.value * abs(baseline) if self.kind == "relative" else self.value

    def to_dict(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "value": self.value}


def parse_threshold(metric: Metric, text: Any) -> Threshold:
    """'10%' (of the baseline), '0.05ms' / '0.5' points / '10KB' / '1M' MACs (absolute), 'off'."""
    spec = str(text).strip()
    if text is False or spec.lower() in ("off", "none", "false", "disabled"):
        return Threshold("off", math.inf, "off")
    m = re.fullmatch(_NUM + r"\s*(%|[a-zA-Zµ]*)", spec)
    units = _UNITS[metric.unit]
    unit = m.group(2).lower() if m and m.group(2) != "%" else (m.group(2) if m else None)
    if m and metric.unit == "points" and unit == "%":
        raise ConfigError(f"--{dash(metric.option)} {spec!r}: accuracy thresholds are in points (accuracy is "
                          "already a percentage): write 0.5 for half a point")
    if not m or unit not in units:
        raise ConfigError(f"--{dash(metric.option)} {spec!r} is malformed: write {_UNIT_HINT[metric.unit]}, "
                          "or off")
    value = float(m.group(1))
    if unit == "%":
        return Threshold("relative", value / 100.0, spec)
    if metric.unit in ("bytes", "MACs") and unit == "" and 0 < value < 1:
        raise ConfigError(f"--{dash(metric.option)} {spec!r}: a bare number is a count of {metric.unit}; "
                          f"write {value * 100:g}% for a fraction")
    return Threshold("absolute", value * units[unit], spec)


@dataclass(frozen=True)
class CheckOptions:
    thresholds: dict[str, Threshold]  # by metric name
    remeasure: bool = False
    allow_mismatch: bool = False
    warmup: int = 50
    iters: int = 200
    blocks: int = 10

    @classmethod
    def from_sources(cls, config_file: str | Path | None = None, **flags: Any) -> "CheckOptions":
        """Defaults, then the YAML file (keys = the option names, dashes or underscores), then flags not None."""
        merged: dict[str, Any] = {**DEFAULTS, **{m.option: m.default for m in METRICS}}
        known = set(merged)
        if config_file:
            merged.update(_load_check_yaml(Path(config_file), known))
        unknown = sorted(set(flags) - known)
        if unknown:
            raise ConfigError(f"unknown check option(s) {', '.join(unknown)}")
        merged.update({k: v for k, v in flags.items() if v is not None})
        thresholds = {m.name: parse_threshold(m, merged[m.option]) for m in METRICS}
        ints = {}
        for key, low in (("warmup", 0), ("iters", 1), ("blocks", 2)):
            try:
                ints[key] = int(merged[key])
                if isinstance(merged[key], bool) or ints[key] != float(merged[key]):
                    raise ValueError
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"{key} must be a whole number, got {merged[key]!r}") from None
            if ints[key] < low:
                raise ConfigError(f"{key} must be at least {low}, got {ints[key]}")
        return cls(thresholds, bool(merged["remeasure"]), bool(merged["allow_mismatch"]), **ints)


def dash(option: str) -> str:
    """An option's name as a CLI flag spells it."""
    return option.replace("_", "-")


_NUM = r"([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"
_UNITS = {
    "ms": {"%": None, "ms": 1.0, "us": 1e-3, "µs": 1e-3, "s": 1e3},
    "points": {"": 1.0, "pt": 1.0, "pts": 1.0, "point": 1.0, "points": 1.0},
    "bytes": {"%": None, "": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0 ** 2,
              "gib": 1024.0 ** 3},
    "MACs": {"%": None, "": 1.0, "k": 1e3, "m": 1e6, "g": 1e9},
}
_UNIT_HINT = {"ms": "10% or 0.05ms", "points": "0.5 (points; accuracy is already a percentage)",
              "bytes": "5%, 4096 (bytes), 10KB or 1MiB", "MACs": "5%, 1000000 or 1M"}


def _load_check_yaml(path: Path, known: set[str]) -> dict[str, Any]:
    from ..config import load_yaml_mapping

    raw = load_yaml_mapping(path, "check config")
    clean = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(clean) - known)
    if unknown:
        raise ConfigError(f"check config {path}: unknown key(s) {', '.join(unknown)}: known keys are "
                          f"{', '.join(sorted(known))}")
    return clean
