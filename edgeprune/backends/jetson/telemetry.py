"""Jetson telemetry while measuring: memory, GPU load and power rails from tegrastats (or jtop when installed),
the nvpmodel power mode, and whether jetson_clocks locked the clocks.

A Jetson scales its CPU, GPU and memory clocks with load (DVFS) unless `jetson_clocks` pins them at their
maximum: a latency measured with unlocked clocks depends on how long the GPU had been busy before, so a build
warns (log and report) when they are not locked. On a host without tegrastats or jtop the telemetry says it is
not available, and why; it never fails a build. What the tools printed and edgeprune could not read is listed in
the report (`parse_warnings`), never dropped silently.

The pieces: parsers.py (pure functions over the tools' text), samplers.py (tegrastats, jtop), state.py (power
mode and clocks); here the monitor that runs them around each measurement, and the runner that wraps another.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..base.runner import Deployed, Runner, WrappingRunner
from ..base.stats import LatencyStats
from . import samplers
from .parsers import lines_unread, samples_unread, summarize_samples
from .state import read_jetson_state

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_MS = 100
CLOCKS_ADVICE = "run `sudo jetson_clocks` on the device before measuring (and keep the nvpmodel mode fixed)"


class MonitoredRunner(WrappingRunner):
    """Another runner, with Jetson telemetry recorded around each of its measurements (or, where this host is no
    Jetson, with the reason there is none)."""

    def __init__(self, inner: Runner, monitor: "JetsonMonitor"):
        self.inner, self.monitor = inner, monitor
        self.name = inner.name
        self.beside_onnx = inner.beside_onnx

    def available(self) -> str | None:
        return self.inner.available()

    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        return self.inner.prepare(onnx_path, workdir)

    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        return self.inner.infer(deployed, batch)

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        with self.monitor.window():
            return self.inner.measure_interleaved(deployed, warmup, iters, blocks, min_block_s)

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        return self.inner.memory(deployed)

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def telemetry(self) -> dict[str, Any]:
        return self.monitor.report()

    def parity_tolerance(self) -> tuple[float, float]:
        return self.inner.parity_tolerance()

    def release(self) -> Any:
        return self.inner.release()

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, attr: str) -> Any:  # runner-specific extras
        return getattr(self.inner, attr)


class JetsonMonitor:
    """Collects telemetry over measurement windows; does nothing where the host has no tegrastats or jtop."""

    def __init__(self, interval_ms: int = DEFAULT_INTERVAL_MS):
        self.interval_ms = int(interval_ms)
        self.reason = unavailable_reason()
        self.samples: list[dict[str, Any]] = []
        self.windows = 0
        self.source: str | None = None
        self.state: dict[str, Any] | None = None  # power mode and clocks, as read at the first window
        self.locked: list[bool | None] = []       # per window: were the clocks locked (None: could not tell)
        self.warning: str | None = None
        self.unread: list[str] = []               # what the power-mode and clock tools printed and was not read
        self.lines_unread, self.line_example = 0, None  # tegrastats lines that were not samples
        self.start_error: str | None = None       # why the sampler could not start, if it said
        self._logged: set[str] = set()

    @property
    def available(self) -> bool:
        return self.reason is None

    @contextmanager
    def window(self) -> Iterator[None]:
        if not self.available:
            yield
            return
        self._check_state(read_jetson_state())
        sampler = samplers.start_sampler(self.interval_ms)
        self.source = sampler.source
        try:
            yield
        finally:
            self.samples.extend(sampler.stop())
            self.windows += 1
            self.lines_unread += sampler.unread_lines
            self.line_example = self.line_example or sampler.unread_example
            self.start_error = self.start_error or getattr(sampler, "start_error", None)

    def report(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        out: dict[str, Any] = {"available": True, "source": self.source, "interval_ms": self.interval_ms,
                               "windows": self.windows}
        if self.state is not None:
            out["power_mode"] = self.state["power_mode"]
            out["clocks"] = self.state["clocks"]
        out["clocks_locked"] = (False if False in self.locked else
                                True if self.locked and all(self.locked) else None)
        out["warning"] = self.warning
        out.update(summarize_samples(self.samples))
        out["parse_warnings"] = self._logged_once([
            *self.unread, *lines_unread(self.lines_unread, self.line_example, self.source or "telemetry"),
            *samples_unread(self.samples, self.source or "telemetry"), *self._no_samples()])
        return out

    def _check_state(self, state: dict[str, Any]) -> None:
        if self.state is None:
            self.state = state
            self.unread = self._logged_once([*(state["power_mode"].get("unread") or ()),
                                             *(state["clocks"].get("unread") or ())])
        locked = state["clocks"].get("locked")
        self.locked.append(locked)
        if locked is not True and self.warning is None:  # warned once per build, recorded per window
            why = "; ".join(state["clocks"].get("not_locked") or [state["clocks"].get("reason", "unknown")])
            self.warning = (f"Jetson clocks are {'not locked' if locked is False else 'of unknown state'} ({why}): "
                            f"latency figures vary with DVFS; {CLOCKS_ADVICE}")
            log.warning("%s", self.warning)

    def _no_samples(self) -> list[str]:
        """A note when the sampler ran over measurement windows and gave nothing: never an empty report that
        looks like a quiet board."""
        if not self.windows or self.samples:
            return []
        why = f" ({self.start_error})" if self.start_error else " (it did not start, or printed nothing readable)"
        return [f"no {self.source or 'telemetry'} samples over {self.windows} measurement window"
                f"{'s' if self.windows != 1 else ''}{why}: memory, GPU load and power are missing from the report"]

    def _logged_once(self, notes: list[str]) -> list[str]:
        """`notes` (what a tool printed that edgeprune could not read), each logged the first time it is seen."""
        for note in notes:
            if note not in self._logged:
                self._logged.add(note)
                log.warning("Jetson telemetry: %s", note)
        return notes


def unavailable_reason() -> str | None:
    """None where telemetry can be read; else why not (a Jetson without the tools is said to be one)."""
    if samplers.locate_tool("tegrastats", samplers.TEGRASTATS_PATHS) or samplers.jtop_module() is not None:
        return None
    from ...targets.devices import read_jetson_model

    model = read_jetson_model()
    if model:
        return (f"this {model} has no tegrastats (on PATH or in /usr/bin) and no jtop (jetson-stats), so memory, "
                "GPU load and power rails were not recorded: in a container, mount /usr/bin/tegrastats or "
                "install jetson-stats")
    return ("not a Jetson: no tegrastats (on PATH or in /usr/bin) and no jtop (jetson-stats) here, so memory, "
            "GPU load and power rails were not recorded")


__all__ = ["DEFAULT_INTERVAL_MS", "JetsonMonitor", "MonitoredRunner", "unavailable_reason"]
