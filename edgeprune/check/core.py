"""Regression check: a new build's report.json against a baseline's, metric by metric, aware of timing noise.

Exit codes (CHECK_EXIT): 0 every metric within its threshold, 1 at least one regression, 2 the two cannot be
compared (a missing or malformed report, another schema_version, another device / runtime / precision / batch size
/ input shape without `allow_mismatch`). A report that cannot be read is never a pass.

Latency is judged in one of two ways:

* From the stored reports (default). Each report's p50 is the median of its block medians, and `latency.spread`
  ((max - min) / median of the block medians) is what that run's noise looked like. A latency increase is a
  regression only when it exceeds the threshold AND the larger of the two recorded spreads: an increase that
  one report's own blocks could show between themselves is not evidence. Stored numbers from two runs (maybe two
  hosts) share no drift, so this is the weaker mode; CI should re-measure.
* `remeasure`: both artifacts' model.onnx are timed here in one run, interleaved block by block (A B A B ...,
  first position rotating), and the p50 verdict uses the paired ratio new/baseline (median of per-block ratios)
  with its 95% bootstrap interval [low, high]. With L = 1 + threshold (an absolute threshold in ms is divided by
  the re-measured baseline p50):
    1. low > L                      -> regression: slower than allowed even at the optimistic end;
    2. high <= L                    -> pass: within the threshold even at the pessimistic end;
    3. otherwise the interval straddles L: measure once more with twice the blocks, then
       regression iff ratio > L and low > 1 (the estimate is over the threshold and the slow-down is real).
  Why not "regression iff low > L" alone: that tests "slower than L by more than the noise", so a real slow-down
  just over the threshold passes most of the time (detection reaches ~100% only about two interval half-widths
  above L). Why not "ratio > L" alone: with noise comparable to the threshold, an unchanged model would fail
  whenever a burst of slow blocks hits one side. The rule keeps the confident cases immediate, spends a second,
  longer measurement only on the ambiguous ones, and then judges at the threshold itself (about 50% detection at
  exactly L, as a threshold should mean) while requiring that the slow-down be significant (low > 1), which keeps
  false alarms on an unchanged model rare. benchmarks/check_noise.py measures both rates.
  p90 (over all timed runs, not robust to a slow block) is judged on the same run by the stored-mode rule
  (its ratio over the threshold and over the larger spread of the two re-measurements).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence
from xml.etree import ElementTree as ET

from .. import __version__
from ..errors import ConfigError, EdgepruneError
from ..backends.base.stats import PairedRatio, paired_ratio

log = logging.getLogger(__name__)

# The report.json schema this check reads (docs/report-schema.md; pipeline/loop.py writes it). Kept here so the
# check does not import the build loop (and torch); tests/test_check.py asserts the two agree.
SCHEMA_VERSION = 1
CHECK_EXIT = {"pass": 0, "regression": 1, "cannot-compare": 2}
ORT_RUNNERS = ("onnxruntime", "onnxruntime-cuda")


class CannotCompare(EdgepruneError):
    """The two reports cannot be compared: exit code 2, never a pass."""

    exit_code = 2


# -- metrics and thresholds --------------------------------------------------------------------------------------

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
METRIC_BY_OPTION = {m.option: m for m in METRICS}
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


def parse_threshold(metric: Metric, text: Any) -> Threshold:
    """'10%' (of the baseline), '0.05ms' / '0.5' points / '10KB' / '1M' MACs (absolute), 'off'."""
    spec = str(text).strip()
    if text is False or spec.lower() in ("off", "none", "false", "disabled"):
        return Threshold("off", math.inf, "off")
    m = re.fullmatch(_NUM + r"\s*(%|[a-zA-Zµ]*)", spec)
    units = _UNITS[metric.unit]
    unit = m.group(2).lower() if m and m.group(2) != "%" else (m.group(2) if m else None)
    if m and metric.unit == "points" and unit == "%":
        raise ConfigError(f"--{_dash(metric.option)} {spec!r}: accuracy thresholds are in points (accuracy is "
                          "already a percentage): write 0.5 for half a point")
    if not m or unit not in units:
        raise ConfigError(f"--{_dash(metric.option)} {spec!r} is malformed: write {_UNIT_HINT[metric.unit]}, "
                          "or off")
    value = float(m.group(1))
    if unit == "%":
        return Threshold("relative", value / 100.0, spec)
    if metric.unit in ("bytes", "MACs") and unit == "" and 0 < value < 1:
        raise ConfigError(f"--{_dash(metric.option)} {spec!r}: a bare number is a count of {metric.unit}; "
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
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be a whole number, got {merged[key]!r}") from None
            if ints[key] < low:
                raise ConfigError(f"{key} must be at least {low}, got {ints[key]}")
        return cls(thresholds, bool(merged["remeasure"]), bool(merged["allow_mismatch"]), **ints)


def _load_check_yaml(path: Path, known: set[str]) -> dict[str, Any]:
    from ..config import load_yaml_mapping

    raw = load_yaml_mapping(path, "check config")
    clean = {str(k).replace("-", "_"): v for k, v in raw.items()}
    unknown = sorted(set(clean) - known)
    if unknown:
        raise ConfigError(f"check config {path}: unknown key(s) {', '.join(unknown)}: known keys are "
                          f"{', '.join(sorted(known))}")
    return clean


# -- loading reports ---------------------------------------------------------------------------------------------

@dataclass
class LoadedReport:
    role: str  # "NEW" | "BASELINE"
    path: Path  # the report.json
    data: dict[str, Any]

    @property
    def directory(self) -> Path:
        return self.path.parent

    @property
    def final_iteration(self) -> dict[str, Any]:
        return self.data["iterations"][self.data["final"]["index"]]

    @property
    def latency(self) -> dict[str, Any]:
        return self.final_iteration["latency"]


def resolve_report_path(path: str | Path) -> Path:
    p = Path(path)
    return p / "report.json" if p.is_dir() else p


def load_report(path: str | Path, role: str) -> LoadedReport:
    """Read and validate one report.json (or the one in an artifact directory); CannotCompare when unusable."""
    p = resolve_report_path(path)
    where = f"{role} report {p}"
    if not p.is_file():
        hint = " (an artifact directory must contain report.json)" if Path(path).is_dir() else ""
        raise CannotCompare(f"cannot compare: {where} does not exist{hint}")
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise CannotCompare(f"cannot compare: {where} cannot be read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise CannotCompare(f"cannot compare: {where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CannotCompare(f"cannot compare: {where} is malformed: it must hold a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CannotCompare(f"cannot compare: {where} has schema_version {version!r}, this edgeprune reads "
                            f"schema_version {SCHEMA_VERSION}: rebuild it, or compare with the edgeprune that wrote it")
    _validate(data, where)
    return LoadedReport(role, p, data)


_NUMBER = (int, float)


def _validate(r: dict[str, Any], where: str) -> None:
    def need(keys: str, types: tuple[type, ...], nullable: bool = False, root: Any = r) -> Any:
        node: Any = root
        for key in keys.split("."):
            if not isinstance(node, dict) or key not in node:
                raise CannotCompare(f"cannot compare: {where} is malformed: {keys} is missing")
            node = node[key]
        if node is None and nullable:
            return None
        if not isinstance(node, types) or isinstance(node, bool) and bool not in types:
            raise CannotCompare(f"cannot compare: {where} is malformed: {keys} is {type(node).__name__}, "
                                f"expected {'/'.join(t.__name__ for t in types)}")
        return node

    need("device.name", (str,))
    need("runner.runner", (str,))
    shape = need("model.input_shape", (list,))
    if not all(isinstance(s, int) for s in shape):
        raise CannotCompare(f"cannot compare: {where} is malformed: model.input_shape must be a list of integers")
    need("config.batch_size", (int,))
    iterations = need("iterations", (list,))
    index = need("final.index", (int,))
    if not 0 <= index < len(iterations) or not isinstance(iterations[index], dict):
        raise CannotCompare(f"cannot compare: {where} is malformed: final.index {index} is not an iteration")
    it = iterations[index]
    for key in ("latency.p50", "latency.p90"):
        value = need(key, _NUMBER, root=it)
        if not value > 0:
            raise CannotCompare(f"cannot compare: {where} is malformed: iterations[{index}].{key} is {value}")
    need("latency.block_medians", (list,), root=it)
    need("final.macs", _NUMBER)
    need("final.accuracy", _NUMBER, nullable=True)
    need("final.memory.weights_bytes", _NUMBER, nullable=True)


# -- what may be compared ----------------------------------------------------------------------------------------

def identity(r: dict[str, Any]) -> dict[str, str]:
    """What must match for two reports' numbers to mean the same thing."""
    runner = r.get("runner") or {}
    providers = ", ".join(runner.get("providers") or [])
    threads = runner.get("threads")
    runtime = runner.get("runner", "?") + (f" ({providers})" if providers else "") + (
        f", {threads} thread{'s' if threads != 1 else ''}" if threads else ", default threads")
    if isinstance(runner.get("remote"), dict):  # measured on another machine over SSH: that machine counts
        runtime += f", on {runner['remote'].get('target')}"
    return {"device": str(r["device"]["name"]), "runtime": runtime, "precision": precision(r),
            "batch size": str(r["config"]["batch_size"]),
            "input shape": "x".join(str(s) for s in r["model"]["input_shape"])}


def precision(r: dict[str, Any]) -> str:
    runner = r.get("runner") or {}
    if runner.get("precision"):
        return str(runner["precision"])
    if isinstance(runner.get("build_options"), dict) and runner["build_options"].get("precision"):
        return str(runner["build_options"]["precision"])
    if "fp16" in runner:
        return "fp16" if runner["fp16"] else "fp32"
    return str((r.get("device") or {}).get("default_precision") or "fp32")


def mismatches(new: dict[str, Any], base: dict[str, Any]) -> list[str]:
    a, b = identity(new), identity(base)
    return [f"{k}: new {a[k]} vs baseline {b[k]}" for k in a if a[k] != b[k]]


def _warnings(new: LoadedReport, base: LoadedReport, remeasure: bool) -> list[str]:
    out = []
    nv, bv = new.data.get("versions") or {}, base.data.get("versions") or {}
    changed = [f"{k} {bv.get(k)} -> {nv.get(k)}" for k in sorted(set(nv) | set(bv)) if nv.get(k) != bv.get(k)]
    if changed:
        out.append("versions differ: " + ", ".join(changed))
    nh, bh = new.data.get("host") or {}, base.data.get("host") or {}
    host_keys = ("cpu_model", "cpu_cores", "gpu", "jetson_model")
    if not remeasure and any(nh.get(k) != bh.get(k) for k in host_keys):
        out.append(f"the stored latencies come from different hosts ({bh.get('cpu_model')} vs {nh.get('cpu_model')}): "
                   "use --remeasure to time both artifacts here")
    nd, bd = new.data.get("data") or {}, base.data.get("data") or {}
    if (nd.get("name"), nd.get("val")) != (bd.get("name"), bd.get("val")):
        out.append(f"accuracy was evaluated on different data ({bd.get('name')}, {bd.get('val')} images vs "
                   f"{nd.get('name')}, {nd.get('val')} images)")
    return out


# -- the check ---------------------------------------------------------------------------------------------------

RunnerFactory = Callable[[dict[str, Any]], Any]


def run_check(new_path: str | Path, base_path: str | Path, options: CheckOptions,
              runner_factory: RunnerFactory | None = None) -> dict[str, Any]:
    """Compare NEW against BASELINE; the result dict (see result_skeleton) with `verdict` and `exit_code`.
    Raises CannotCompare (exit code 2) when they cannot be compared."""
    new, base = load_report(new_path, "NEW"), load_report(base_path, "BASELINE")
    result = result_skeleton(new_path, base_path)
    result["new"], result["baseline"] = _describe(new), _describe(base)
    diffs = mismatches(new.data, base.data)
    if diffs and not options.allow_mismatch:
        raise CannotCompare("cannot compare: the reports differ in " + "; ".join(diffs)
                            + " (pass --allow-mismatch to compare anyway)")
    result["mismatches"] = diffs
    result["warnings"] = (["compared despite mismatches (--allow-mismatch): " + "; ".join(diffs)] if diffs else [])
    result["warnings"] += _warnings(new, base, options.remeasure)
    result["thresholds"] = {m.name: options.thresholds[m.name].to_dict() for m in METRICS}

    measured = None
    if options.remeasure:
        measured = _remeasure(new, base, options, runner_factory)
        result["mode"] = "remeasured"
        result["remeasure"] = measured
    metrics = [
        _latency_metric(METRICS[0], new, base, options.thresholds["latency_p50"], measured),
        _latency_metric(METRICS[1], new, base, options.thresholds["latency_p90"], measured),
        _plain_metric(METRICS[2], new.data["final"]["accuracy"], base.data["final"]["accuracy"],
                      options.thresholds["accuracy"]),
        _plain_metric(METRICS[3], new.data["final"]["memory"]["weights_bytes"],
                      base.data["final"]["memory"]["weights_bytes"], options.thresholds["weights_size"]),
        _plain_metric(METRICS[4], new.data["final"]["macs"], base.data["final"]["macs"], options.thresholds["macs"]),
    ]
    result["metrics"] = metrics
    statuses = {m["status"] for m in metrics}
    verdict = "regression" if "regression" in statuses else "cannot-compare" if "error" in statuses else "pass"
    result["verdict"], result["exit_code"] = verdict, CHECK_EXIT[verdict]
    result["summary"] = summary_line(result)
    return result


def result_skeleton(new_path: str | Path, base_path: str | Path) -> dict[str, Any]:
    return {"check_schema_version": 1, "tool": {"name": "edgeprune", "version": __version__},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "verdict": None, "exit_code": None, "summary": "",
            "new_path": str(resolve_report_path(new_path)), "baseline_path": str(resolve_report_path(base_path)),
            "new": None, "baseline": None, "mode": "stored", "thresholds": {}, "metrics": [], "mismatches": [],
            "warnings": [], "remeasure": None, "error": None}


def cannot_compare_result(new_path: str | Path, base_path: str | Path, message: str) -> dict[str, Any]:
    result = result_skeleton(new_path, base_path)
    result.update(verdict="cannot-compare", exit_code=CHECK_EXIT["cannot-compare"], error=message, summary=message)
    return result


def _describe(r: LoadedReport) -> dict[str, Any]:
    d = r.data
    return {"path": str(r.path), "created": d.get("created"), "tool_version": (d.get("tool") or {}).get("version"),
            "model": (d.get("model") or {}).get("name"), **identity(d),
            "host": (d.get("host") or {}).get("cpu_model"), "final_index": d["final"]["index"]}


def _change(new: float, base: float) -> tuple[float, float | None]:
    return new - base, ((new - base) / abs(base) if base else None)


def _metric_row(metric: Metric, new: float | None, base: float | None, threshold: Threshold) -> dict[str, Any]:
    change, rel = _change(new, base) if new is not None and base is not None else (None, None)
    return {"name": metric.name, "label": metric.label, "unit": metric.unit, "baseline": base, "new": new,
            "change": change, "change_rel": rel, "threshold": threshold.spec,
            "allowed": None if base is None or threshold.kind == "off" else threshold.allowed(base),
            "status": None, "detail": "", "source": "stored reports"}


def _plain_metric(metric: Metric, new: float | None, base: float | None, threshold: Threshold) -> dict[str, Any]:
    """Accuracy, size, MACs: deterministic for a given artifact, so judged on the threshold alone."""
    row = _metric_row(metric, new, base, threshold)
    if new is None and base is None:
        row.update(status="skipped", detail="recorded in neither report")
        return row
    if new is None or base is None:
        which = "new" if new is None else "baseline"
        row.update(status="error", detail=f"the {which} report has no {metric.label} (the other has): "
                                          "cannot tell whether it regressed")
        return row
    worse = base - new if metric.higher_is_better else new - base
    allowed = threshold.allowed(base)
    if threshold.kind == "off":
        row.update(status="pass", detail="not judged (threshold off)")
    elif worse > allowed:
        row.update(status="regression", detail=f"{_fmt_change(metric, worse, base)} worse, more than the "
                                               f"{threshold.spec} allowed")
    else:
        row["status"] = "pass"
        row["detail"] = "within threshold" if worse > 0 else "not worse"
    return row


def _latency_metric(metric: Metric, new: LoadedReport, base: LoadedReport, threshold: Threshold,
                    measured: dict[str, Any] | None) -> dict[str, Any]:
    key = "p50" if metric.name == "latency_p50" else "p90"
    stored = {"new": new.latency[key], "baseline": base.latency[key],
              "new_spread": _spread(new.latency), "baseline_spread": _spread(base.latency)}
    if measured is None:
        row = _metric_row(metric, stored["new"], stored["baseline"], threshold)
        row.update(_judge_spread(metric, stored["new"], stored["baseline"], threshold,
                                 max(stored["new_spread"], stored["baseline_spread"]), "the recorded spread"))
        return row
    final = measured["rounds"][-1]
    n, b = final["new"][key], final["baseline"][key]
    row = _metric_row(metric, n, b, threshold)
    row["source"] = f"re-measured here, interleaved ({final['blocks']} blocks x {measured['iters']} runs)"
    row["stored"] = stored
    if key == "p50":
        row["paired_ratio"] = final["ratio"]
        row["limit_ratio"] = measured["limit_ratio"]
        row["status"] = measured["verdict"]
        row["detail"] = measured["detail"]
    else:
        noise = max(_spread(final["new"]), _spread(final["baseline"]))
        row.update(_judge_spread(metric, n, b, threshold, noise, "the spread of the re-measurement"))
    return row


def _judge_spread(metric: Metric, new: float, base: float, threshold: Threshold, noise: float,
                  noise_name: str) -> dict[str, Any]:
    increase = new - base
    allowed = threshold.allowed(base)
    out: dict[str, Any] = {"noise": noise}
    if threshold.kind == "off":
        out.update(status="pass", detail="not judged (threshold off)")
    elif increase > allowed and increase > noise * base:
        out.update(status="regression", detail=f"{_fmt_change(metric, increase, base)} slower, more than the "
                                               f"{threshold.spec} allowed and than {noise_name} ({noise:.1%})")
    elif increase > allowed:
        out.update(status="pass", detail=f"{_fmt_change(metric, increase, base)} slower: over the {threshold.spec} "
                                         f"threshold but within {noise_name} ({noise:.1%}); --remeasure decides")
    else:
        out.update(status="pass", detail="within threshold" if increase > 0 else "not slower")
    return out


def _spread(latency: dict[str, Any]) -> float:
    if isinstance(latency.get("spread"), _NUMBER):
        return float(latency["spread"])
    b = sorted(latency.get("block_medians") or [])
    return (b[-1] - b[0]) / b[len(b) // 2] if len(b) > 1 and b[len(b) // 2] > 0 else 0.0


# -- re-measuring ------------------------------------------------------------------------------------------------

def _remeasure(new: LoadedReport, base: LoadedReport, options: CheckOptions,
               runner_factory: RunnerFactory | None) -> dict[str, Any]:
    paths = []
    for r in (new, base):
        onnx = r.directory / "model.onnx"
        if not onnx.is_file():
            raise CannotCompare(f"cannot compare: --remeasure needs {r.role}'s model.onnx next to its report "
                                f"({onnx} does not exist)")
        paths.append(onnx)
    runner_info = new.data["runner"]
    if isinstance(runner_info.get("remote"), dict):
        raise CannotCompare(f"cannot compare: --remeasure times here, but these reports were measured on "
                            f"{runner_info['remote'].get('target')} over SSH: compare the stored reports (no "
                            "--remeasure) or re-measure there")
    if runner_info.get("runner") not in ORT_RUNNERS:
        raise CannotCompare(f"cannot compare: --remeasure times model.onnx with ONNX Runtime, but these reports were "
                            f"measured with {runner_info.get('runner')}: compare the stored reports (no --remeasure) "
                            "or re-measure on the device")
    runner = (runner_factory or ort_runner_for)(runner_info)
    why = runner.available()
    if why:
        raise CannotCompare(f"cannot compare: --remeasure cannot run here: {why}")
    out = remeasure_latency(runner, paths[0], paths[1], options.thresholds["latency_p50"], options.warmup,
                            options.iters, options.blocks)
    out["runner"] = runner.describe()
    return out


def ort_runner_for(runner_info: dict[str, Any]):
    """An ONNX Runtime runner with the providers and thread count a report recorded."""
    from ..backends.onnxrt.runner import OnnxRuntimeRunner

    providers = tuple(runner_info.get("providers") or ("CPUExecutionProvider",))
    return OnnxRuntimeRunner(providers=providers, threads=runner_info.get("threads"))


def remeasure_latency(runner: Any, new_onnx: Path, base_onnx: Path, threshold: Threshold, warmup: int = 50,
                      iters: int = 200, blocks: int = 10) -> dict[str, Any]:
    """Time both artifacts interleaved and judge the p50 ratio (rule in the module docstring): at most two rounds,
    the second with twice the blocks, only when the first interval straddles the limit."""
    with tempfile.TemporaryDirectory(prefix="edgeprune-check-") as work:
        deployed = [runner.prepare(Path(new_onnx), Path(work)), runner.prepare(Path(base_onnx), Path(work))]
        rounds: list[dict[str, Any]] = []
        for n_blocks, last in ((blocks, False), (2 * blocks, True)):
            new_stats, base_stats = runner.measure_interleaved(deployed, warmup, iters, n_blocks)
            ratio = paired_ratio(new_stats, base_stats)
            limit = 1.0 + threshold.allowed(base_stats.p50) / base_stats.p50
            verdict = decide_paired(ratio, limit, last)
            rounds.append({"blocks": n_blocks, "new": new_stats.to_dict(), "baseline": base_stats.to_dict(),
                           "ratio": ratio.to_dict(), "limit_ratio": limit, "verdict": verdict})
            if verdict != "uncertain":
                break
        release = getattr(runner, "release", None)
        if release:
            release()
    r = rounds[-1]["ratio"]
    limit = rounds[-1]["limit_ratio"]
    verdict = rounds[-1]["verdict"]
    lim = "no limit (threshold off)" if math.isinf(limit) else f"limit {limit:.3f}"
    how = (f"paired ratio {r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}], {lim}"
           + (f"; first round [{rounds[0]['ratio']['low']:.3f}, {rounds[0]['ratio']['high']:.3f}] straddled the "
              f"limit, so measured again with {rounds[-1]['blocks']} blocks" if len(rounds) > 1 else ""))
    detail = (f"{r['ratio'] - 1:+.1%} slower, more than allowed: {how}" if verdict == "regression" else how)
    return {"warmup": warmup, "iters": iters, "blocks": blocks, "threshold": threshold.to_dict(),
            "limit_ratio": limit, "rounds": rounds, "verdict": verdict, "detail": detail,
            "rule": "regression if low > limit; pass if high <= limit; else re-measure with twice the blocks and "
                    "flag iff ratio > limit and low > 1"}


def decide_paired(ratio: PairedRatio, limit: float, last: bool) -> str:
    """'regression' | 'pass' | 'uncertain' (only when not `last`) for a paired ratio new/baseline."""
    if ratio.low > limit:
        return "regression"
    if ratio.high <= limit:
        return "pass"
    if not last:
        return "uncertain"
    return "regression" if ratio.ratio > limit and ratio.low > 1.0 else "pass"


# -- output ------------------------------------------------------------------------------------------------------

def summary_line(result: dict[str, Any]) -> str:
    if result["verdict"] == "cannot-compare":
        return result.get("error") or "cannot compare"
    bad = [m for m in result["metrics"] if m["status"] == "regression"]
    err = [m for m in result["metrics"] if m["status"] == "error"]
    where = " (latency re-measured here)" if result["mode"] == "remeasured" else ""
    if bad:
        return "regression: " + ", ".join(f"{m['label']} {_short_change(m)}" for m in bad) + where
    if err:
        return "cannot compare: " + "; ".join(f"{m['label']}: {m['detail']}" for m in err)
    skipped = sum(m["status"] == "skipped" for m in result["metrics"])
    judged = len(result["metrics"]) - skipped
    return (f"pass: {judged} metrics within their thresholds" + (f" ({skipped} not recorded)" if skipped else "")
            + where)


def _short_change(row: dict[str, Any]) -> str:
    if row["unit"] == "points" or row["change_rel"] is None:
        return format_change(row)
    if row.get("paired_ratio"):
        return f"{row['paired_ratio']['ratio'] - 1:+.1%} (paired)"
    return f"{row['change_rel']:+.1%}"


def format_value(unit: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if unit == "ms":
        return f"{value:.4f} ms" if abs(value) < 1 else f"{value:.3f} ms"
    if unit == "points":
        return f"{value:.2f}%"
    if unit == "bytes":
        return _si(value, "B", 1024.0, ("", "Ki", "Mi", "Gi"))
    return _si(value, "", 1000.0, ("", "k", "M", "G"))


def format_change(row: dict[str, Any]) -> str:
    if row["change"] is None:
        return ""
    unit, ch = row["unit"], row["change"]
    if unit == "points":
        return f"{ch:+.2f} points"
    absolute = ("+" if ch >= 0 else "-") + format_value(unit, abs(ch))
    return absolute + (f" ({row['change_rel']:+.1%})" if row["change_rel"] is not None else "")


def _fmt_change(metric: Metric, amount: float, base: float) -> str:
    if metric.unit == "points":
        return f"{amount:.2f} points"
    return f"{amount / abs(base):+.1%}" if base else format_value(metric.unit, amount)


def _si(value: float, suffix: str, step: float, prefixes: Sequence[str]) -> str:
    v, i = float(value), 0
    while abs(v) >= step and i < len(prefixes) - 1:
        v, i = v / step, i + 1
    return f"{v:.0f} {prefixes[i]}{suffix}".strip() if i == 0 else f"{v:.2f} {prefixes[i]}{suffix}".strip()


def render_markdown(result: dict[str, Any]) -> str:
    head = {"pass": "PASS", "regression": "REGRESSION", "cannot-compare": "CANNOT COMPARE"}[result["verdict"]]
    lines = [f"### edgeprune check: {head}", ""]
    if result["verdict"] == "cannot-compare" and not result["metrics"]:
        lines += [f"`{result['new_path']}` vs baseline `{result['baseline_path']}`", "",
                  f"**{_md(result['error'] or 'cannot compare')}**", ""]
        return "\n".join(lines)
    n = result["new"]
    mode = ("latency re-measured on this machine, both artifacts interleaved"
            if result["mode"] == "remeasured" else "latency from the stored reports")
    lines += [f"`{result['new_path']}` vs baseline `{result['baseline_path']}`: {n['model']} on {n['device']}, "
              f"{n['runtime']}, {n['precision']}, batch {n['batch size']}, input {n['input shape']}; {mode}.", "",
              "| metric | baseline | new | change | threshold | verdict |", "|---|---:|---:|---:|---:|---|"]
    for m in result["metrics"]:
        verdict = {"regression": "**REGRESSION**", "error": "**cannot compare**"}.get(m["status"], m["status"])
        lines.append(f"| {m['label']} | {format_value(m['unit'], m['baseline'])} | {format_value(m['unit'], m['new'])}"
                     f" | {format_change(m)} | {m['threshold']} | {verdict}: {_md(m['detail'])} |")
    lines.append("")
    lines.append(f"**{_md(result['summary'])}**")
    if result["warnings"]:
        lines += [""] + [f"- note: {_md(w)}" for w in result["warnings"]]
    rem = result.get("remeasure")
    if rem:
        lines += ["", "<details><summary>re-measurement</summary>", "",
                  f"Runner {rem['runner'].get('runner')} {rem['runner'].get('onnxruntime', '')}, threads "
                  f"{rem['runner'].get('threads')}; {rem['warmup']} warm-up runs, blocks of {rem['iters']} runs. "
                  f"Rule: {_md(rem['rule'])}.", "",
                  "| round | blocks | new p50 (ms) | baseline p50 (ms) | ratio [95% CI] | limit | verdict |",
                  "|---:|---:|---:|---:|---:|---:|---|"]
        for i, rd in enumerate(rem["rounds"], 1):
            r = rd["ratio"]
            lines.append(f"| {i} | {rd['blocks']} | {rd['new']['p50']:.4f} | {rd['baseline']['p50']:.4f} | "
                         f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}] | {rd['limit_ratio']:.3f} | "
                         f"{rd['verdict']} |")
        lines += ["", "</details>"]
    lines.append("")
    return "\n".join(lines)


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_junit(result: dict[str, Any]) -> str:
    """JUnit XML: one testcase per metric; <failure> for a regression, <error> where it cannot compare."""
    suite = ET.Element("testsuite", name="edgeprune check", timestamp=result["created"])
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    cases: list[tuple[str, str, str, str]] = []  # (name, status, message, details)
    if result["verdict"] == "cannot-compare" and not result["metrics"]:
        cases.append(("compare", "error", result["error"] or "cannot compare", result["error"] or ""))
    for m in result["metrics"]:
        details = (f"{m['label']}: baseline {format_value(m['unit'], m['baseline'])}, new "
                   f"{format_value(m['unit'], m['new'])}, change {format_change(m) or 'n/a'}, threshold "
                   f"{m['threshold']}; {m['source']}. {m['detail']}")
        cases.append((m["name"], m["status"], m["detail"], details))
    for name, status, message, details in cases:
        case = ET.SubElement(suite, "testcase", classname="edgeprune.check", name=name, time="0")
        counts["tests"] += 1
        if status == "regression":
            ET.SubElement(case, "failure", message=message, type="regression").text = details
            counts["failures"] += 1
        elif status == "error":
            ET.SubElement(case, "error", message=message, type="cannot-compare").text = details
            counts["errors"] += 1
        elif status == "skipped":
            ET.SubElement(case, "skipped", message=message)
            counts["skipped"] += 1
        else:
            ET.SubElement(case, "system-out").text = details
    for k, v in counts.items():
        suite.set(k, str(v))
    out = ET.SubElement(suite, "system-out")
    out.text = "\n".join([result["summary"], *(f"note: {w}" for w in result["warnings"])])
    root = ET.Element("testsuites", name="edgeprune", **{k: suite.get(k) for k in counts})
    root.append(suite)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_outputs(result: dict[str, Any], junit: str | Path | None = None, markdown: str | Path | None = None,
                  step_summary: str | Path | None = None) -> None:
    """Write the JUnit XML and markdown files; append the markdown to GitHub's step summary when given."""
    if junit:
        _write_text(Path(junit), render_junit(result))
    if markdown:
        md = render_markdown(result)
        _write_text(Path(markdown), md)
        if step_summary:
            with open(step_summary, "a", encoding="utf-8") as fh:
                fh.write(md + "\n")


def step_summary_path() -> str | None:
    return os.environ.get("GITHUB_STEP_SUMMARY") or None


def _write_text(path: Path, text: str) -> None:
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc})") from None


def _dash(option: str) -> str:
    return option.replace("_", "-")


__all__ = ["CannotCompare", "CheckOptions", "METRICS", "Threshold", "decide_paired", "load_report", "mismatches",
           "parse_threshold", "remeasure_latency", "render_junit", "render_markdown", "run_check", "write_outputs"]
