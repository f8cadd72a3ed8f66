"""Progress on a terminal (rich), plain lines when piped, nothing with --quiet; the one-line build summary."""
from __future__ import annotations

from typing import Any


def progress_for(silent: bool):
    from rich.console import Console

    console = Console(stderr=True)
    if silent:
        return _Silent()
    return _RichProgress(console)


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def iteration(self, record: dict[str, Any]) -> None:
        pass


class _RichProgress(_Silent):
    """A spinner with the current stage on a terminal; plain lines when stderr is not a terminal."""

    def __init__(self, console):
        self.console = console
        self.status = console.status("starting") if console.is_terminal else None

    def __enter__(self):
        if self.status:
            self.status.start()
        return self

    def __exit__(self, *exc):
        if self.status:
            self.status.stop()
        return False

    def stage(self, name: str, detail: str = "") -> None:
        text = f"[bold]{name}[/bold] {detail}"
        if self.status:
            self.status.update(text)
        elif name not in ("train", "recover"):  # per-epoch lines only on a terminal
            self.console.print(text, highlight=False)

    def iteration(self, record: dict[str, Any]) -> None:
        mark = "[green]met[/green]" if record.get("budget_met") else "[red]over[/red]"
        self.console.print(f"iteration {record['index']}: {record['summary'].rsplit(' ', 2)[0]} {mark}"
                           if record.get("budget_met") is not None else f"iteration {record['index']}: {record['summary']}",
                           highlight=False)


def summary_line(report: dict[str, Any]) -> str:
    f, b = report["final"], report["budget"]
    if b is None:
        where = (f"{f['latency_ratio']:.3f}x of the unpruned latency ({f['percentile']} {f['latency_ms']:.3f} ms "
                 f"vs {f['baseline_latency_ms']:.3f} ms, side by side)")
    elif b["kind"] == "relative":
        where = (f"{f['latency_ratio']:.3f}x of the unpruned latency (budget {b['spec']}; {b['percentile']} "
                 f"{f['latency_ms']:.3f} ms vs {f['baseline_latency_ms']:.3f} ms, measured side by side)")
    else:
        where = f"{b['percentile']} {f['latency_ms']:.3f} ms (budget {f['target_ms']:.3f} ms)"
    memory = report.get("constraints", {}).get("memory")
    if memory:
        where += f", {memory['final_mb']:.3f} MB {memory['metric']} (budget {memory['budget_mb']:g} MB)"
    return (f"budget {'met' if report['budget_met'] else 'NOT met'} ({report.get('policy')}): {where}, "
            f"{f['speedup']:.2f}x faster, "
            f"{f['macs_reduction']:.2f}x fewer MACs, accuracy {_pct(f['accuracy'])} "
            f"(unpruned {_pct(f['baseline_accuracy'])})")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


