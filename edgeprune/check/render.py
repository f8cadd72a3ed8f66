"""What a check result looks like to people and to CI: the summary line, markdown, JUnit XML, and the files.

The result dict comes from judge.run_check (or judge.cannot_compare_result); nothing here decides a verdict.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence
from xml.etree import ElementTree as ET

from ..errors import ConfigError
from .thresholds import Metric


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


def format_worsening(metric: Metric, amount: float, base: float) -> str:
    """How much worse `amount` is, in words for a detail line: points, or a fraction of the baseline."""
    if metric.unit == "points":
        return f"{amount:.2f} points"
    return f"{amount / abs(base):+.1%}" if base else format_value(metric.unit, amount)


def _short_change(row: dict[str, Any]) -> str:
    if row["unit"] == "points" or row["change_rel"] is None:
        return format_change(row)
    if row.get("paired_ratio"):
        return f"{row['paired_ratio']['ratio'] - 1:+.1%} (paired)"
    return f"{row['change_rel']:+.1%}"


def _si(value: float, suffix: str, step: float, prefixes: Sequence[str]) -> str:
    v, i = float(value), 0
    while abs(v) >= step and i < len(prefixes) - 1:
        v, i = v / step, i + 1
    return f"{v:.0f} {prefixes[i]}{suffix}".strip() if i == 0 else f"{v:.2f} {prefixes[i]}{suffix}".strip()


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _write_text(path: Path, text: str) -> None:
    try:
        if path.parent and not path.parent.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror or exc})") from None
