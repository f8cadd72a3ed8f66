"""Plots of a build's report.json, as PNG bytes (matplotlib's Agg canvas; no pyplot, no display, no global state).

A relative budget is judged on each attempt's latency ratio to the unpruned model measured side by side, so its
plots show that ratio (with the 95% interval) against the target ratio; an absolute budget shows milliseconds
against the target.
"""
from __future__ import annotations

import io
import re
from typing import Any

BASE_COLOR, MET_COLOR, OVER_COLOR, BUDGET_COLOR = "#7f7f7f", "#2ca02c", "#d62728", "#1f77b4"


def latency_accuracy_per_iteration(report: dict[str, Any]) -> bytes:
    """Two panels over iterations: latency (against the budget) and accuracy (against the unpruned model)."""
    fig, (ax_lat, ax_acc) = _figure(2, (10, 4))
    its = report["iterations"]
    lat = _latency_axis(report)
    xs = [it["index"] for it in its]
    for it, y, err in zip(its, lat["values"], lat["errors"]):
        if y is None:
            continue
        ax_lat.errorbar([it["index"]], [y], yerr=[[err[0]], [err[1]]] if err else None, fmt=_marker(it),
                        color=_color(it), markersize=9 if it.get("selected") else 6, capsize=3)
    ax_lat.plot(xs, [float("nan") if v is None else v for v in lat["values"]], color="#bbbbbb", linewidth=1,
                zorder=0)
    if lat["target"] is not None:  # no line when the build had no latency budget
        ax_lat.axhline(lat["target"], color=BUDGET_COLOR, linestyle="--")
    ax_lat.set_xlabel("iteration (0 = unpruned)")
    ax_lat.set_ylabel(lat["label"])
    ax_lat.set_title("latency per iteration")
    ax_lat.legend(handles=_legend_handles(ax_lat, budget=lat["target_label"]), fontsize=8, loc="best")

    accs = [it.get("accuracy") for it in its]
    if any(a is not None for a in accs):
        for it, a in zip(its, accs):
            if a is not None:
                ax_acc.plot([it["index"]], [a], _marker(it), color=_color(it),
                            markersize=9 if it.get("selected") else 6)
        ax_acc.plot([x for x, a in zip(xs, accs) if a is not None], [a for a in accs if a is not None],
                    color="#bbbbbb", linewidth=1, zorder=0)
        if accs[0] is not None:
            ax_acc.axhline(accs[0], color=BASE_COLOR, linestyle=":", label=f"unpruned {accs[0]:.2f}%")
            ax_acc.legend(fontsize=8, loc="best")
        ax_acc.set_ylabel("top-1 accuracy (%) of the ONNX artifact")
    else:
        _no_data(ax_acc, "accuracy not measured: " + str(its[0].get("accuracy_source") or "no reason recorded"))
    ax_acc.set_xlabel("iteration (0 = unpruned)")
    ax_acc.set_title("accuracy per iteration")
    for ax in (ax_lat, ax_acc):
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
    return _png(fig)


def accuracy_vs_latency(report: dict[str, Any]) -> bytes:
    """Every attempt (and the unpruned model) as a point: latency against accuracy, the budget as a line."""
    fig, (ax,) = _figure(1, (6.5, 4.5))
    its = report["iterations"]
    lat = _latency_axis(report)
    points = [(it, x) for it, x in zip(its, lat["values"]) if x is not None and it.get("accuracy") is not None]
    if not points:
        _no_data(ax, "accuracy not measured: " + str(its[0].get("accuracy_source") or "no reason recorded"))
    for it, x in points:
        ax.plot([x], [it["accuracy"]], _marker(it), color=_color(it), markersize=10 if it.get("selected") else 7)
        label = str(it["index"]) + (f" {it['precision']}" if it.get("precision", "fp32") != "fp32" else "")
        ax.annotate(label, (x, it["accuracy"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if lat["target"] is not None:
        ax.axvline(lat["target"], color=BUDGET_COLOR, linestyle="--")
    precisions = sorted({it.get("precision", "fp32") for it in its} - {"fp32"})
    ax.legend(handles=_legend_handles(ax, budget=lat["target_label"], precisions=precisions), fontsize=8,
              loc="best")
    ax.set_xlabel(lat["label"])
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title("accuracy vs latency, every attempt (labels: iteration)")
    ax.grid(alpha=0.3)
    return _png(fig)


def channel_widths(report: dict[str, Any]) -> bytes:
    """Kept output channels of every prunable layer: unpruned (iteration 0) and shipped (final.index)."""
    before = report["iterations"][0].get("widths") or {}
    final = report["iterations"][report["final"]["index"]]
    after = final.get("widths") or {}
    layers = sorted(set(before) | set(after), key=_natural)
    fig, (ax,) = _figure(1, (8, max(3.0, 0.28 * len(layers) + 1.2)))
    if not layers:
        _no_data(ax, "no per-layer widths recorded")
        return _png(fig)
    ys = list(range(len(layers)))
    h = 0.4
    ax.barh([y - h / 2 for y in ys], [before.get(n, 0) for n in layers], height=h, color=BASE_COLOR,
            label="unpruned (iteration 0)")
    ax.barh([y + h / 2 for y in ys], [after.get(n, 0) for n in layers], height=h, color=MET_COLOR
            if report["final"].get("budget_met") else OVER_COLOR, label=f"shipped (iteration {final['index']})")
    ax.set_yticks(ys)
    ax.set_yticklabels(layers, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("output channels kept")
    ax.set_title("channel widths per layer")
    ax.legend(fontsize=8, loc="best")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


ALL_PLOTS = {
    "latency_accuracy": ("Latency and accuracy per iteration", latency_accuracy_per_iteration),
    "accuracy_vs_latency": ("Accuracy vs latency", accuracy_vs_latency),
    "channel_widths": ("Channel widths per layer", channel_widths),
}


# -- helpers -----------------------------------------------------------------------------------------------------

def _latency_axis(report: dict[str, Any]) -> dict[str, Any]:
    budget = report["budget"] or {"kind": "relative", "target_ratio": None, "spec": "none",
                                  "percentile": report["final"]["percentile"]}
    its = report["iterations"]
    if budget.get("kind") == "relative":
        values, errors = [], []
        for it in its:
            r = it.get("latency_ratio")
            if it["index"] == 0:
                values.append(1.0)
                errors.append(None)
            elif r:
                values.append(r["ratio"])
                errors.append((max(0.0, r["ratio"] - r["low"]), max(0.0, r["high"] - r["ratio"])))
            else:
                values.append(None)
                errors.append(None)
        return {"values": values, "errors": errors, "target": budget["target_ratio"],
                "label": f"{budget['percentile']} latency / unpruned (side by side)",
                "target_label": f"budget {budget['spec']}"}
    values, errors = [], []
    for it in its:
        values.append(it.get("latency_ms"))
        b = (it.get("latency") or {}).get("block_medians") or []
        y = it.get("latency_ms")
        errors.append((max(0.0, y - min(b)), max(0.0, max(b) - y)) if b and y is not None
                      and budget.get("percentile") == "p50" else None)
    return {"values": values, "errors": errors, "target": budget["target_ms"],
            "label": f"{budget['percentile']} latency (ms)",
            "target_label": f"budget {budget['spec']} ({budget['target_ms']:.3f} ms)"}


def _color(it: dict[str, Any]) -> str:
    if it["index"] == 0:
        return BASE_COLOR
    return MET_COLOR if it.get("budget_met") else OVER_COLOR


PRECISION_MARKERS = {"fp32": "o", "fp16": "^", "int8": "D"}


def _marker(it: dict[str, Any]) -> str:
    if it.get("selected"):
        return "*"
    return "s" if it["index"] == 0 else PRECISION_MARKERS.get(it.get("precision", "fp32"), "o")


def _legend_handles(ax, budget: str | None = None, precisions: list[str] = ()) -> list:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="s", color=BASE_COLOR, linestyle="", label="unpruned"),
               Line2D([], [], marker="o", color=MET_COLOR, linestyle="", label="meets budget"),
               Line2D([], [], marker="o", color=OVER_COLOR, linestyle="", label="over budget"),
               Line2D([], [], marker="*", color="black", linestyle="", markersize=9, label="shipped")]
    handles += [Line2D([], [], marker=PRECISION_MARKERS.get(p, "o"), color="gray", linestyle="", label=p)
                for p in precisions]  # reduced-precision attempts by shape (fp32: circles)
    if budget:
        handles.append(Line2D([], [], color=BUDGET_COLOR, linestyle="--", label=budget))
    return handles


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _figure(ncols: int, size: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, tuple(axes)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
