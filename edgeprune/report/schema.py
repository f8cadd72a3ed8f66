"""The report.json schema version: written by the build (pipeline/loop.py), read by `check` and `report`.

One number for every reader and writer; docs/report-schema.md describes the fields. Bump it when a field a reader
relies on changes meaning or moves, so an old report is refused instead of misread.
"""
from __future__ import annotations

SCHEMA_VERSION = 2

# Version history and how an older report is read (migrate()):
#   1 -> 2: precision joined the search. Every iteration and `final` gained `precision`, `quantization` and
#           `precision_parity`; the report gained `precision` (searched, dropped with why, settings). A version 1
#           report had one precision for the whole build, the runner's (a TensorRT fp16 build, say, or fp32 on
#           ONNX Runtime): it is read as version 2 with that precision on every iteration and no quantization.
MIGRATIONS = {1: "every iteration and the final attempt get the runner's precision; no quantization section"}


def runner_precision(report: dict) -> str:
    """The one precision of a version 1 build: the runner's build option, else the device's default."""
    runner = report.get("runner") if isinstance(report.get("runner"), dict) else {}
    if runner.get("precision"):
        return str(runner["precision"])
    if isinstance(runner.get("build_options"), dict) and runner["build_options"].get("precision"):
        return str(runner["build_options"]["precision"])
    if "fp16" in runner:
        return "fp16" if runner["fp16"] else "fp32"
    device = report.get("device") if isinstance(report.get("device"), dict) else {}
    return str(device.get("default_precision") or "fp32")


def migrate(report: dict) -> dict:
    """An older report as this version reads it (a copy; the file is not touched). A version this edgeprune does
    not know is returned unchanged, for the caller to refuse."""
    if not isinstance(report, dict) or report.get("schema_version") != 1:
        return report
    out = dict(report)
    fp32 = {"precision": runner_precision(report), "quantization": None, "precision_parity": None}
    if isinstance(out.get("iterations"), list):
        out["iterations"] = [{**fp32, **it} if isinstance(it, dict) else it for it in out["iterations"]]
    if isinstance(out.get("final"), dict):
        out["final"] = {**fp32, **out["final"]}
    out.setdefault("precision", None)
    out["schema_version"] = SCHEMA_VERSION
    out["migrated_from"] = 1
    return out
