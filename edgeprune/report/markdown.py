"""report.md: what was built, what was measured, and why the loop stopped."""
from __future__ import annotations

from typing import Any


def constraints_text(r: dict[str, Any]) -> str:
    """The constraints of a build in words, e.g. 'latency 0.5x on p50 (relative ...); accuracy within 0.5 points'."""
    parts = []
    b = r.get("budget")
    if b:
        parts.append(f"latency {b['spec']} on {b['percentile']}" + (
            f" ({b['target_ms']:.3f} ms)" if b["kind"] == "absolute"
            else ", relative to the unpruned model measured side by side"))
    c = r.get("constraints") or {}
    if "memory" in c:
        parts.append(f"memory at most {c['memory']['budget_mb']:g} MB of {c['memory']['metric']}")
    if "accuracy" in c:
        parts.append(f"accuracy within {c['accuracy']['max_drop']:g} points of the unpruned artifact")
    return "; ".join(parts)


def verdict_text(r: dict[str, Any]) -> str:
    return (f"Budget {'met' if r['budget_met'] else 'NOT met'} ({r.get('policy', 'latency-sensitive')}: "
            f"{constraints_text(r)}). Stop reason: {r['stop_reason']}.")


def render_report(r: dict[str, Any]) -> str:
    f = r["final"]
    base = r["iterations"][0]
    percentile = f["percentile"]
    metric = user_metric(r)
    lines = [
        f"# edgeprune build: {r['model']['name']} on {r['device']['name']}",
        "",
        f"**{verdict_text(r)}**",
        "",
        "| | unpruned | shipped | change |",
        "|---|---:|---:|---:|",
        f"| {percentile} latency (ms), measured side by side | {f['baseline_latency_ms']:.3f} | "
        f"{f['latency_ms']:.3f} | {f['speedup']:.2f}x faster |",
        f"| MACs | {count_text(base['macs'])} | {count_text(f['macs'])} | {f['macs_reduction']:.2f}x fewer |",
        f"| parameters | {count_text(base['params'])} | {count_text(f['params'])} | "
        f"{f['params_reduction']:.2f}x fewer |",
        f"| {accuracy_row_label(metric)} | {score_text(metric, base['accuracy'])} | "
        f"{score_text(metric, f['accuracy'])} | "
        f"{_drop(f['accuracy_drop'])} |",
        f"| weights (bytes) | {_bytes(base['memory']['weights_bytes'])} | {_bytes(f['memory']['weights_bytes'])} | |",
        f"| runtime peak memory (MB) | {num_text(base['memory']['peak_mb'])} | {num_text(f['memory']['peak_mb'])} | |",
        "",
        f"Speed-up per MACs reduction: {f['speedup_per_macs_reduction']:.2f}. "
        f"Parity of the shipped ONNX with PyTorch: max abs error {f['parity']['max_abs']:.2e} over "
        f"{f['parity']['samples']} validation images.",
        "",
        *precision_lines(r),
        "## Iterations",
        "",
        "| # | ratio | precision | MMACs | params | latency (ms) | vs unpruned fp32 | accuracy | budget | note |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for it in r["iterations"]:
        vs = "1.000" if it["latency_ratio"] is None else (
            f"{it['latency_ratio']['ratio']:.3f} [{it['latency_ratio']['low']:.3f}, {it['latency_ratio']['high']:.3f}]")
        met = "-" if it["budget_met"] is None else ("met" if it["budget_met"] else "over")
        note = ("**shipped** " if it["selected"] else "") + it["step_reason"]
        if it.get("remeasured"):
            note += " (re-measured: first verdict was within noise)"
        if it.get("dropped"):
            note += f"; **{it.get('precision')} dropped**: {it['dropped']}"
        lines.append(f"| {it['index']} | {it['ratio']:.3f} | {it.get('precision', 'fp32')} | {it['macs'] / 1e6:.2f} | "
                     f"{count_text(it['params'])} | "
                     f"{it['latency_ms']:.3f} | {vs} | {score_text(metric, it['accuracy'])} | {met} | {note} |")
    lat = r["iterations"][f["index"]]["latency"]
    lines += [
        "",
        "## How it was measured",
        "",
        f"- Runner: {r['runner'].get('runner')} {r['runner'].get('onnxruntime', '')}, "
        f"providers {', '.join(r['runner'].get('providers', []))}, threads {r['runner'].get('threads')}, "
        f"batch {lat['batch_size']}"
        + (f", on {r['runner']['remote'].get('target')} over SSH" if r["runner"].get("remote") else "") + ".",
        _telemetry_line(r.get("telemetry")),
        f"- {lat['blocks']} blocks of {lat['n'] // max(lat['blocks'], 1)} timed runs after {lat['warmup']} "
        "warm-up runs, each attempt interleaved block by block with the unpruned model; latency is the median of "
        "block medians, and the ratio to the unpruned model the median of per-block ratios (95% bootstrap "
        "interval in brackets).",
        f"- Memory: {f['memory']['peak_source']}.",
        (f"- Accuracy: {metric[len('user: '):]}'s score of the ONNX artifact (the user's metric, not "
         "edgeprune's top-1; drops are in its units)." if metric else
         f"- Accuracy: top-1 of the ONNX artifact on {r['data']['val']} held-out {r['data']['name']} images "
         f"(trained/fine-tuned on {r['data']['train']})."),
        f"- Host: {r['host']['cpu_model']} ({r['host']['cpu_cores']} cores); versions: "
        + ", ".join(f"{k} {v}" for k, v in r["versions"].items()) + ".",
        "",
    ]
    return "\n".join(lines)


def precision_lines(r: dict[str, Any]) -> list[str]:
    """The precision section: what was searched, what was dropped and why, how the shipped graph was made."""
    p, f = r.get("precision"), r["final"]
    if not p:
        return []
    lines = ["## Precision", "",
             f"Requested: {p['requested']}; searched: {', '.join(p['searched']) or 'none'}; shipped: "
             f"**{f.get('precision', 'fp32')}**."]
    for prec, why in (p.get("dropped") or {}).items():
        lines.append(f"- {prec} dropped: {why}.")
    for prec, why in (p.get("left_out") or {}).items():
        lines.append(f"- {prec} left out: {why}.")
    q, par = f.get("quantization"), f.get("precision_parity")
    if q:
        how = (f"{q['library']} {q['library_version']}"
               + (f", {q['method']} calibration on {q['calibration_images']} training images, Q/DQ layout "
                  f"`{q['target']}`, per-channel weights" if q.get("method") else "")
               + (f", {len(q['excluded_nodes'])} node(s) left fp32" if q.get("excluded_nodes") else "")
               + (f", op types kept fp32: {', '.join(q['kept_fp32_ops'])}" if q.get("kept_fp32_ops") else ""))
        lines.append(f"- Shipped graph made with {how}.")
    if par:
        tol = par["tolerance"]
        lines.append(f"- Parity with the fp32 ONNX on {par['samples']} validation images: top-1 agreement "
                     f"{par['top1_agreement']:.3f} (at least {tol['min_top1_agreement']}), max logit error "
                     f"{par['max_abs_error_scaled']:.3g} of the largest logit (at most {tol['max_abs_error']}).")
    return [*lines, ""]


def _telemetry_line(t: dict | None) -> str:
    if not t:
        return "- Device telemetry: not recorded."
    if not t.get("available"):
        return f"- Device telemetry: not available ({t.get('reason')})."
    gpu, ram = t.get("gpu_load_pct") or {}, t.get("ram_used_mb") or {}
    rails = ", ".join(f"{name} {v['mean'] / 1000:.2f} W" for name, v in (t.get("power_mw") or {}).items())
    clocks = ("locked by jetson_clocks" if t.get("clocks_locked") else
              f"**not locked**: {t.get('warning')}" if t.get("clocks_locked") is False else "of unknown state")
    return (f"- Jetson telemetry ({t.get('source')}, {t.get('samples')} samples over {t.get('windows')} "
            f"measurements): power mode {(t.get('power_mode') or {}).get('name')}, clocks {clocks}; GPU load mean "
            f"{num_text(gpu.get('mean'))}% / max {num_text(gpu.get('max'))}%, peak RAM {num_text(ram.get('peak'))} "
            f"MB; mean power {rails or 'n/a'}.")


def count_text(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def pct_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


def user_metric(r: dict[str, Any]) -> str | None:
    """The user's metric (`eval_fn`, e.g. 'user: pkg.mod:fn') when the build's accuracy came from it, else None:
    its numbers are the user's score, not edgeprune's top-1 percent, and every report says so."""
    metric = next((it.get("accuracy_metric") for it in r["iterations"] if it.get("accuracy_metric")), None)
    return metric if metric and metric.startswith("user:") else None


def accuracy_row_label(metric: str | None) -> str:
    """The accuracy row's label for user_metric(r)'s answer."""
    return f"score ({metric}, ONNX artifact)" if metric else "accuracy (ONNX artifact, val)"


def score_text(metric: str | None, x: float | None) -> str:
    """A figure in user_metric(r)'s units: the user's score as it is, edgeprune's top-1 as a percent."""
    return ("n/a" if x is None else f"{x:.4g}") if metric else pct_text(x)


def _drop(drop: float | None) -> str:
    return "" if drop is None else f"{-drop:+.2f} points"


def _bytes(x: int | None) -> str:
    return "n/a" if x is None else f"{x:,}"  # runners that cannot read the weights record None


def num_text(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"
