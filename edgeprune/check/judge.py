"""The comparison itself: load and validate both reports, refuse what cannot be compared, judge each metric.

`run_check` returns a result dict (see result_skeleton) with `verdict` and `exit_code`, or raises CannotCompare
(exit code 2). A report that cannot be read is never a pass. Latency is judged from the stored reports (each
report's p50 with its recorded spread) or, with `remeasure`, by timing both model.onnx here (remeasure.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..errors import EdgepruneError
from ..report.manifest import UnsafeArtifact, modified_files
from ..report.schema import SCHEMA_VERSION, migrate, runner_precision
from .remeasure import ORT_RUNNERS, ort_runner_for, remeasure_latency
from .render import format_worsening, summary_line
from .thresholds import METRICS, CheckOptions, Metric, Threshold

CHECK_EXIT = {"pass": 0, "regression": 1, "cannot-compare": 2}
RunnerFactory = Callable[[dict[str, Any]], Any]


class CannotCompare(EdgepruneError):
    """The two reports cannot be compared: exit code 2, never a pass."""

    exit_code = 2


def run_check(new_path: str | Path, base_path: str | Path, options: CheckOptions,
              runner_factory: RunnerFactory | None = None) -> dict[str, Any]:
    """Compare NEW against BASELINE; the result dict (see result_skeleton) with `verdict` and `exit_code`.
    Raises CannotCompare (exit code 2) when they cannot be compared."""
    new, base = load_report(new_path, "NEW"), load_report(base_path, "BASELINE")
    try:
        return _judge(new, base, new_path, base_path, options, runner_factory)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        # a field of a type validation did not foresee: the reports cannot be read as reports, never a verdict
        raise CannotCompare(f"cannot compare: a report is malformed ({type(exc).__name__}: {str(exc)[:200]})") \
            from exc


def _judge(new: LoadedReport, base: LoadedReport, new_path: str | Path, base_path: str | Path,
           options: CheckOptions, runner_factory: RunnerFactory | None) -> dict[str, Any]:
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
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise CannotCompare(f"cannot compare: {where} cannot be read ({exc})") from None
    except RecursionError:
        raise CannotCompare(f"cannot compare: {where} is nested too deeply to be a report") from None
    except json.JSONDecodeError as exc:
        raise CannotCompare(f"cannot compare: {where} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise CannotCompare(f"cannot compare: {where} is malformed: it must hold a JSON object")
    data = migrate(data)  # an older schema this edgeprune knows how to read (report/schema.py says how)
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CannotCompare(f"cannot compare: {where} has schema_version {version!r}, this edgeprune reads "
                            f"schema_version {SCHEMA_VERSION}: rebuild it, or compare with the edgeprune that wrote it")
    _validate(data, where)
    _verify_manifest(p.parent, where)
    return LoadedReport(role, p, data)


def _verify_manifest(directory: Path, where: str) -> None:
    """The artifact's files (report.json, model.onnx, ...) must still be what its manifest.json recorded."""
    try:
        modified = modified_files(directory)
    except UnsafeArtifact as exc:
        raise CannotCompare(f"cannot compare: {where}: {exc.message}") from None
    if modified:
        raise CannotCompare(f"cannot compare: {where}: changed since the build, the sha256 in "
                            f"{directory / 'manifest.json'} no longer matches: {', '.join(modified)}")


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
        finite(node, keys)
        return node

    def finite(value: Any, keys: str) -> None:
        # Python's json reads NaN / Infinity; no comparison with them means anything, so none may pass
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, float) and not math.isfinite(v):
                raise CannotCompare(f"cannot compare: {where} is malformed: {keys} is "
                                    f"{'NaN' if math.isnan(v) else 'Infinity'}, not a figure")

    for key in ("device", "runner", "model", "config", "versions", "host", "data", "tool"):
        if r.get(key) is not None and not isinstance(r[key], dict):
            raise CannotCompare(f"cannot compare: {where} is malformed: {key} is {type(r[key]).__name__}, "
                                "expected an object")

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
    medians = need("latency.block_medians", (list,), root=it)
    if not all(isinstance(m, _NUMBER) and not isinstance(m, bool) for m in medians):
        raise CannotCompare(f"cannot compare: {where} is malformed: latency.block_medians must be numbers")
    if it["latency"].get("spread") is not None:
        need("latency.spread", _NUMBER, root=it)
    need("final.macs", _NUMBER)
    need("final.accuracy", _NUMBER, nullable=True)
    need("final.memory.weights_bytes", _NUMBER, nullable=True)


# -- what may be compared ----------------------------------------------------------------------------------------

def identity(r: dict[str, Any]) -> dict[str, str]:
    """What must match for two reports' numbers to mean the same thing."""
    runner = r.get("runner") or {}
    providers = ", ".join(runner.get("providers") or [])
    threads = runner.get("threads")
    runtime = str(runner.get("runner", "?")) + (f" ({providers})" if providers else "") + (
        f", {threads} thread{'s' if threads != 1 else ''}" if threads else ", default threads")
    if isinstance(runner.get("remote"), dict):  # measured on another machine over SSH: that machine counts
        runtime += f", on {runner['remote'].get('target')}"
    return {"device": str(r["device"]["name"]), "runtime": runtime, "precision": precision(r),
            "batch size": str(r["config"]["batch_size"]),
            "input shape": "x".join(str(s) for s in r["model"]["input_shape"])}


def precision(r: dict[str, Any]) -> str:
    """What the shipped artifact carries (the precision stage's choice, schema 2), else the runner's."""
    final = r.get("final") if isinstance(r.get("final"), dict) else {}
    return str(final.get("precision") or runner_precision(r))


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
    try:
        out = remeasure_latency(runner, paths[0], paths[1], options.thresholds["latency_p50"], options.warmup,
                                options.iters, options.blocks)
        out["runner"] = runner.describe()
    except Exception as exc:  # e.g. onnxruntime's InvalidProtobuf on a corrupt model.onnx: nothing was timed
        message = (exc.message if isinstance(exc, EdgepruneError) else f"{type(exc).__name__}: {exc}")
        raise CannotCompare(f"cannot compare: --remeasure could not load and time {paths[0]} against {paths[1]} "
                            f"({message.splitlines()[0][:300] if message else 'no message'})") from exc
    return out


# -- the metric rows ---------------------------------------------------------------------------------------------

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
        row.update(status="regression", detail=f"{format_worsening(metric, worse, base)} worse, more than the "
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
        out.update(status="regression", detail=f"{format_worsening(metric, increase, base)} slower, more than the "
                                               f"{threshold.spec} allowed and than {noise_name} ({noise:.1%})")
    elif increase > allowed:
        out.update(status="pass", detail=f"{format_worsening(metric, increase, base)} slower: over the "
                                         f"{threshold.spec} threshold but within {noise_name} ({noise:.1%}); "
                                         "--remeasure decides")
    else:
        out.update(status="pass", detail="within threshold" if increase > 0 else "not slower")
    return out


def _spread(latency: dict[str, Any]) -> float:
    if isinstance(latency.get("spread"), _NUMBER):
        return float(latency["spread"])
    b = sorted(latency.get("block_medians") or [])
    return (b[-1] - b[0]) / b[len(b) // 2] if len(b) > 1 and b[len(b) // 2] > 0 else 0.0
