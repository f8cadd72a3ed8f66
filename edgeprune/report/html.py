"""report.html (self-contained: plots embedded as base64 PNG) and report.md, re-rendered from report.json.

`write_reports(out_dir)` is what `edgeprune report OUT_DIR` runs. It rewrites report.md, writes report.html and
records both files' new hashes in manifest.json, so verify_manifest keeps passing; a file that already did not
match the manifest before is reported back, never re-hashed into agreement.
"""
from __future__ import annotations

import base64
import html
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..files import MANIFEST, atomic_write_text, file_hashes, write_json
from . import plots
from .manifest import UnsafeArtifact, inside, modified_files
from .markdown import (accuracy_row_label, count_text, num_text, precision_lines, render_report,
                       score_text, user_metric, verdict_text)
from .schema import migrate

log = logging.getLogger(__name__)

REPORT_FILES = ("report.md", "report.html")


@dataclass
class Written:
    directory: Path
    files: list[str]
    manifest_updated: bool
    # files that already differed from manifest.json before this run (left as they are, listed so it is not silent)
    modified_before: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def write_reports(out_dir: str | Path) -> Written:
    out = Path(out_dir)
    report = load_build_report(out)
    try:
        md = render_report(report)
        page = render_html(report)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError, RecursionError) as exc:
        raise ConfigError(f"{out / 'report.json'} is malformed ({type(exc).__name__}: {exc}): cannot render it") \
            from None
    try:
        modified = modified_files(out)  # refuses names that lead outside `out` before reading any
    except UnsafeArtifact as exc:
        raise ConfigError(exc.message) from None
    has_manifest = modified is not None
    modified_before = [f for f in modified or [] if f not in REPORT_FILES]
    warnings: list[str] = []
    if has_manifest:
        if modified_before:
            warnings.append("these files already differed from manifest.json and were left so: "
                            + ", ".join(modified_before))
    else:
        warnings.append("no manifest.json in the directory: wrote the reports without one")
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    if has_manifest:
        update_manifest(out, list(REPORT_FILES), by="edgeprune report")
    return Written(out, list(REPORT_FILES), has_manifest, modified_before, warnings)


def load_build_report(out: Path) -> dict[str, Any]:
    path = out / "report.json"
    if not out.is_dir():
        raise ConfigError(f"{out} is not a directory: give the output directory of `edgeprune build`")
    if not path.is_file():
        raise ConfigError(f"{out} has no report.json: give the output directory of `edgeprune build`")
    try:
        report = json.loads(inside(out, "report.json").read_text(encoding="utf-8"))
    except UnsafeArtifact as exc:
        raise ConfigError(exc.message) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise ConfigError(f"{path} cannot be read ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(report, dict) or not isinstance(report.get("iterations"), list) or not report["iterations"]:
        raise ConfigError(f"{path} is malformed: it has no iterations")
    return migrate(report)


def update_manifest(out: Path, files: list[str], by: str) -> None:
    """Record new hashes for `files` (only those) in manifest.json, and note who rewrote them and when."""
    manifest = json.loads((out / MANIFEST).read_text())
    others = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - set(files)
    manifest.setdefault("files", {}).update(file_hashes(out, exclude=others | {MANIFEST}))
    manifest.setdefault("rewritten", []).append(
        {"by": by, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "files": sorted(files)})
    write_json(out / MANIFEST, manifest)


def render_html(r: dict[str, Any]) -> str:
    f = r["final"]
    b = {"percentile": f["percentile"]}
    base = r["iterations"][0]
    metric = user_metric(r)
    title = f"edgeprune build: {r['model']['name']} on {r['device']['name']}"
    met = bool(r.get("budget_met"))
    verdict = verdict_text(r)
    summary = [
        ("", "unpruned", "shipped", "change"),
        (f"{b['percentile']} latency (ms), side by side", f"{f['baseline_latency_ms']:.3f}", f"{f['latency_ms']:.3f}",
         f"{f['speedup']:.2f}x faster"),
        ("MACs", count_text(base["macs"]), count_text(f["macs"]), f"{f['macs_reduction']:.2f}x fewer"),
        ("parameters", count_text(base["params"]), count_text(f["params"]), f"{f['params_reduction']:.2f}x fewer"),
        (accuracy_row_label(metric), score_text(metric, base.get("accuracy")), score_text(metric, f.get("accuracy")),
         "" if f.get("accuracy_drop") is None else f"{-f['accuracy_drop']:+.2f} points"),
        ("weights (bytes)", _int(base["memory"].get("weights_bytes")), _int(f["memory"].get("weights_bytes")), ""),
        ("runtime peak memory (MB)", num_text(base["memory"].get("peak_mb")), num_text(f["memory"].get("peak_mb")), ""),
    ]
    iter_rows = [("#", "ratio", "precision", "MMACs", "params", "latency (ms)", "vs unpruned fp32 [95% CI]",
                  "accuracy", "budget", "note")]
    for it in r["iterations"]:
        lr = it.get("latency_ratio")
        vs = "1.000" if not lr else f"{lr['ratio']:.3f} [{lr['low']:.3f}, {lr['high']:.3f}]"
        budget_met = it.get("budget_met")
        note = ("shipped: " if it.get("selected") else "") + str(it.get("step_reason", ""))
        if it.get("remeasured"):
            note += " (re-measured: first verdict was within noise)"
        if it.get("dropped"):
            note += f"; {it.get('precision')} dropped: {it['dropped']}"
        iter_rows.append((str(it["index"]), f"{it.get('ratio', 0.0):.3f}", str(it.get("precision", "fp32")),
                          f"{it['macs'] / 1e6:.2f}",
                          count_text(it["params"]),
                          f"{it['latency_ms']:.3f}", vs, score_text(metric, it.get("accuracy")),
                          "-" if budget_met is None else ("met" if budget_met else "over"), note))
    lat = r["iterations"][f["index"]]["latency"]
    runner = r.get("runner") or {}
    host = r.get("host") or {}
    measured = [
        f"Runner: {runner.get('runner')} {runner.get('onnxruntime', '')}, providers "
        f"{', '.join(runner.get('providers') or [])}, threads {runner.get('threads')}, batch {lat.get('batch_size')}.",
        f"{lat['blocks']} blocks of {lat['n'] // max(lat['blocks'], 1)} timed runs after {lat['warmup']} warm-up runs, "
        "each attempt interleaved block by block with the unpruned model; latency is the median of block medians, "
        "and the ratio to the unpruned model the median of per-block ratios (95% bootstrap interval).",
        f"Memory: {f['memory'].get('peak_source')}.",
        f"Accuracy: top-1 of the ONNX artifact on {r['data']['val']} held-out {r['data']['name']} images "
        f"(trained/fine-tuned on {r['data']['train']}).",
        f"Host: {host.get('cpu_model')} ({host.get('cpu_cores')} cores); versions: "
        + ", ".join(f"{k} {v}" for k, v in (r.get("versions") or {}).items()) + ".",
    ]
    figures = []
    for key, (caption, fn) in plots.ALL_PLOTS.items():
        png = base64.b64encode(fn(r)).decode("ascii")
        figures.append(f'<figure id="{key}"><img src="data:image/png;base64,{png}" alt="{_e(caption)}">'
                       f"<figcaption>{_e(caption)}</figcaption></figure>")
    parts = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">', f"<title>{_e(title)}</title>",
        f"<style>{_CSS}</style>", "</head>", "<body>", f"<h1>{_e(title)}</h1>",
        f'<p class="verdict {"met" if met else "over"}">{_e(verdict)}</p>',
        _table(summary, numeric_from=1),
        f"<p>Speed-up per MACs reduction: {f['speedup_per_macs_reduction']:.2f}. Parity of the shipped ONNX with "
        f"PyTorch: max abs error {f['parity']['max_abs']:.2e} over {f['parity']['samples']} validation images.</p>",
        "<h2>Plots</h2>", *figures,
        *(["<h2>Precision</h2>", *(f"<p>{_e(_plain(line))}</p>" for line in precision_lines(r)[2:] if line)]
          if r.get("precision") else []),
        "<h2>Iterations</h2>", _table(iter_rows, numeric_from=1, numeric_to=8),
        "<h2>How it was measured</h2>", "<ul>", *(f"<li>{_e(line)}</li>" for line in measured), "</ul>",
        f'<p class="foot">Rendered from report.json (schema_version {_e(r.get("schema_version"))}, written '
        f"{_e(r.get('created'))} by edgeprune {_e((r.get('tool') or {}).get('version'))}).</p>",
        "</body>", "</html>", "",
    ]
    return "\n".join(parts)


_CSS = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;"
    "color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:.9em}"
    "th,td{border:1px solid #ddd;padding:.3em .6em;text-align:left}"
    "td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}"
    "th{background:#f4f4f4}"
    ".verdict{font-weight:600;padding:.5em .8em;border-radius:4px}"
    ".verdict.met{background:#e6f4e6}.verdict.over{background:#fbe7e7}"
    "figure{margin:1.5em 0}figure img{max-width:100%;height:auto}figcaption{color:#555;font-size:.9em}"
    ".foot{color:#777;font-size:.8em}"
)


def _table(rows: list[tuple[str, ...]], numeric_from: int = 1, numeric_to: int | None = None) -> str:
    def cls(i: int) -> str:
        return ' class="n"' if i >= numeric_from and (numeric_to is None or i < numeric_to) else ""

    head, *body = rows
    out = ["<table>", "<tr>" + "".join(f"<th{cls(i)}>{_e(c)}</th>" for i, c in enumerate(head)) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _plain(markdown_line: str) -> str:
    """A report.md line as plain text: no list dash, bold or code marks."""
    return markdown_line.lstrip("- ").replace("**", "").replace("`", "")


def _e(x: Any) -> str:
    return html.escape(str(x))


def _int(x: float | None) -> str:
    return "n/a" if x is None else f"{int(x):,}"
