"""Reading what trtexec prints and writes: the performance summary, --exportTimes / --exportOutput JSON, the
echoed settings, device and version, and the error line of a failed run (pure).

Per-run times come from --exportTimes (a JSON list, one object per timed inference, keys "startEnqMs",
"endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs", "endD2hMs", "h2dMs",
"computeMs", "d2hMs", "latencyMs"; before 8.x the transfer keys were "startInMs"/"inMs"/"outMs"), so they
feed the same block statistics as every other runner.
"""
from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from ...errors import EdgepruneError
from .plan import parse_trt_version
from .trtexec_cli import ECHOED

# The lines of trtexec's "=== Performance summary ===" (8.x-10.x) -> (key in the result, unit). Each is required
# but "End-to-End Host Latency", which releases before 8.5 printed. Every stats line has min/max/mean/median; its
# percentiles are whatever --percentile asked for (90, 95, 99 by default).
SUMMARY_LINES = {"Throughput": ("throughput_qps", "qps"), "Latency": ("latency", "ms"),
                 "End-to-End Host Latency": ("end_to_end", "ms"), "Enqueue Time": ("enqueue", "ms"),
                 "H2D Latency": ("h2d", "ms"), "GPU Compute Time": ("gpu_compute", "ms"),
                 "D2H Latency": ("d2h", "ms"), "Total Host Walltime": ("total_host_walltime_s", "s"),
                 "Total GPU Compute Time": ("total_gpu_compute_s", "s")}
OPTIONAL_LINES = frozenset({"End-to-End Host Latency"})
STATS_REQUIRED = ("min", "max", "mean", "median")
_OLD_KEYS = {"h2dMs": "inMs", "d2hMs": "outMs", "startH2dMs": "startInMs", "endH2dMs": "endInMs",
             "startD2hMs": "startOutMs", "endD2hMs": "endOutMs"}


def parse_trtexec_summary(text: str, require_complete: bool = True) -> dict[str, Any]:
    """The "=== Performance summary ===" block: throughput (qps), and per metric min/max/mean/median/pNN in ms.

    Keys: throughput_qps, latency, gpu_compute, enqueue, h2d, d2h (and end_to_end from older releases), each a
    dict {"min", "max", "mean", "median", "p90", "p95", "p99", ...}; total_host_walltime_s; total_gpu_compute_s.
    Lines wrapped, or joined into one (as a paste or a log collector leaves them), are read all the same. A
    summary that lacks a line, or whose line stops short (trtexec killed, a paste cut), is incomplete: an
    EdgepruneError naming what is missing, or with `require_complete=False` the parts read plus
    "incomplete": [what is missing], never a partial result that looks whole.
    """
    start = text.find("=== Performance summary ===")
    if start < 0:
        raise EdgepruneError("trtexec printed no '=== Performance summary ===' (did the inference run?)")
    region = _LOG_PREFIX.sub(" ", text[start + len("=== Performance summary ==="):])
    end = _SUMMARY_END.search(region)
    region = " ".join((region[:end.start()] if end else region).split())
    found = list(_SUMMARY_KEY.finditer(region))
    problems: list[str] = []
    if found and region[:found[0].start()].strip():
        problems.append(f"unreadable text before the first line: {region[:found[0].start()].strip()[:60]!r}")
    out: dict[str, Any] = {}
    for m, nxt in zip(found, found[1:] + [None]):
        label = m.group(1)
        key, unit = SUMMARY_LINES[label]
        body = region[m.end():nxt.start() if nxt else len(region)].strip()
        if key in out:
            problems.append(f"{label} appears twice (two summaries joined?)")
            continue
        value, problem = _summary_value(label, body, unit)
        if value is not None:
            out[key] = value
        if problem:
            problems.append(problem)
    labels = {m.group(1) for m in found}
    missing = [label for label in SUMMARY_LINES if label not in labels and label not in OPTIONAL_LINES]
    if missing:
        problems.append("no " + ", ".join(missing) + (" line" if len(missing) == 1 else " lines"))
    if problems:
        if require_complete:
            raise EdgepruneError("trtexec's performance summary is incomplete (cut short, or lines joined): "
                                 + "; ".join(problems))
        out["incomplete"] = problems
    return out


def _summary_value(label: str, body: str, unit: str) -> tuple[Any, str | None]:
    """(value, None), or (what could be read, why the line is incomplete)."""
    if unit != "ms":
        m = re.fullmatch(rf"({_NUM})\s*{unit}", body)
        if m:
            return float(m.group(1)), None
        return None, f"the {label} line is cut or garbled: {body[:60]!r}" if body else f"the {label} line is empty"
    stats: dict[str, float] = {}
    pos = 0
    for m in _STAT.finditer(body):
        if body[pos:m.start()].strip(" ,"):
            break
        name, pct, value = m.group(1), m.group(2), m.group(3)
        stats[f"p{float(pct):g}" if pct else name] = float(value)
        pos = m.end()
    rest = body[pos:].strip(" ,")
    lacking = [name for name in STATS_REQUIRED if name not in stats]
    if rest or lacking or body.rstrip().endswith(","):
        read = ", ".join(stats) or "nothing"
        why = f"the {label} line stops after {read}"
        if rest:
            why += f" (then {rest[:40]!r})"
        if lacking:
            why += f"; it lacks {', '.join(lacking)}"
        return stats or None, why
    return stats, None


def parse_export_times(records: list[dict[str, Any]] | str, metric: str = "latencyMs",
                       skip_before_ms: float | None = None) -> list[float]:
    """Per-inference milliseconds of `metric` from an --exportTimes JSON list (loaded, or its text).

    Older trtexec names ("inMs", "outMs", "startInMs"...) are accepted; a missing interval is derived from its
    start/end timestamps. Records whose compute started before `skip_before_ms` are warm-up: releases before
    8.6 wrote those too, and trtexec itself counts a run as warm-up when it starts inside --warmUp.
    """
    if isinstance(records, (str, bytes)):
        records = json.loads(records)
    if not isinstance(records, list):
        raise EdgepruneError("trtexec --exportTimes output is not a JSON list")
    out = []
    for rec in records:
        if skip_before_ms is not None and _get(rec, "startComputeMs") is not None \
                and _get(rec, "startComputeMs") < skip_before_ms:
            continue
        value = _interval(rec, metric)
        if value is None:
            raise EdgepruneError(f"trtexec --exportTimes record has no {metric} (keys: {', '.join(sorted(rec))})")
        out.append(value)
    if not out:
        raise EdgepruneError("trtexec --exportTimes holds no timed runs after warm-up")
    return out


def parse_trtexec_settings(text: str) -> dict[str, bool]:
    """The CUDA Graph / Spin-wait / Data transfers state trtexec echoes under "=== Inference Options ===."""
    out = {}
    for key, label in ECHOED.items():
        m = re.search(rf"\b{re.escape(label)}:\s*(Enabled|Disabled)", text)
        if m:
            out[key] = m.group(1) == "Enabled"
    return out


def parse_trtexec_device(text: str) -> dict[str, str]:
    out = {}
    m = re.search(r"Selected Device:\s*(.+)", text)
    if m:
        out["gpu"] = m.group(1).strip()
    m = re.search(r"Compute Capability:\s*([\d.]+)", text)
    if m:
        out["compute_capability"] = m.group(1)
    return out


def parse_trtexec_version(text: str) -> tuple[int, int, int] | None:
    """From the banner "&&&& RUNNING TensorRT.trtexec [TensorRT v100600] ...", or a "TensorRT version:" line."""
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if m:
        return parse_trt_version("v" + m.group(1))
    m = re.search(r"TensorRT version:\s*([\d.]+)", text)
    return parse_trt_version(m.group(1)) if m else None


def parse_help_flags(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"(?<![\w-])(--[A-Za-z][A-Za-z0-9]*)", text))


def parse_export_output(records: list[dict[str, Any]]) -> np.ndarray:
    """The first output tensor of an --exportOutput JSON list ({"name", "dimensions": "1x10", "values"})."""
    if not records:
        raise EdgepruneError("trtexec --exportOutput wrote no tensors")
    first = records[0]
    dims = [int(d) for d in str(first["dimensions"]).split("x") if d]
    return np.asarray(first["values"], dtype=np.float32).reshape(dims)


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan"
_STAT = re.compile(rf"(min|max|mean|median|percentile\(([\d.]+)%\))\s*=\s*({_NUM})\s*ms\b")
# trtexec's "[01/10/2024-21:52:50] [I] " line prefixes, wherever a paste left them.
_LOG_PREFIX = re.compile(r"\[\d{2}/\d{2}/\d{4}-\d{2}:\d{2}:\d{2}\]|\[[VIWEF]\]")
# What follows the summary: the next section, the metric explanations, a "* ..." advice line, the result line.
_SUMMARY_END = re.compile(r"===|Explanations of the performance metrics|&&&&|(?:^|\s)\*\s")
# Longest labels first, so "H2D Latency" is not read as "Latency".
_SUMMARY_KEY = re.compile("(" + "|".join(re.escape(k) for k in sorted(SUMMARY_LINES, key=len, reverse=True))
                          + r")\s*:")


def _get(rec: dict[str, Any], key: str) -> float | None:
    if key in rec:
        return float(rec[key])
    old = _OLD_KEYS.get(key)
    return float(rec[old]) if old and old in rec else None


def _interval(rec: dict[str, Any], metric: str) -> float | None:
    value = _get(rec, metric)
    if value is not None:
        return value
    spans = {"computeMs": ("startComputeMs", "endComputeMs"), "h2dMs": ("startH2dMs", "endH2dMs"),
             "d2hMs": ("startD2hMs", "endD2hMs"), "enqMs": ("startEnqMs", "endEnqMs")}
    if metric in spans:
        a, b = (_get(rec, k) for k in spans[metric])
        return None if a is None or b is None else b - a
    if metric == "latencyMs":
        parts = [_interval(rec, k) for k in ("h2dMs", "computeMs", "d2hMs")]
        return None if any(p is None for p in parts) else float(sum(parts))
    return None


def trtexec_error_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and "&&&&" not in line]
    tagged = [line for line in lines if "[E]" in line]
    worded = [line for line in lines if "rror" in line]
    return (tagged or worded or lines or ["no output"])[-1][:400]


__all__ = ["parse_export_output", "parse_export_times", "parse_help_flags", "parse_trtexec_device",
           "parse_trtexec_settings", "parse_trtexec_summary", "parse_trtexec_version", "trtexec_error_line"]
