"""Samplers of Jetson telemetry over a measurement window: tegrastats as a subprocess, or jtop's Python API
(jetson-stats) when it is installed and its service answers. Each gives samples in one shape (see
parsers.parse_tegrastats_line) and counts the lines it could not read."""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from typing import Any, Sequence

from .parsers import parse_tegrastats_line

log = logging.getLogger(__name__)

TEGRASTATS_PATHS = ("/usr/bin/tegrastats",)


class TegrastatsSampler:
    source = "tegrastats"

    def __init__(self, interval_ms: int, executable: str | None = None):
        self.interval_ms = int(interval_ms)
        self.executable = executable or locate_tool("tegrastats", TEGRASTATS_PATHS)
        self.samples: list[dict[str, Any]] = []
        self.unread_lines = 0                 # non-empty lines that were not tegrastats samples
        self.unread_example: str | None = None
        self.start_error: str | None = None   # why tegrastats could not be started
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.executable:
            self.start_error = "tegrastats is not installed (not on PATH, not in /usr/bin)"
            return
        try:
            self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
            self.start_error = f"tegrastats could not be started: {exc}"
            log.warning("tegrastats could not be started (%s): no telemetry for this measurement", exc)
            return
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = parse_tegrastats_line(line)
            if sample is not None:
                sample["t"] = time.monotonic()
                self.samples.append(sample)
            elif line.strip():
                self.unread_lines += 1
                self.unread_example = self.unread_example or line

    def stop(self) -> list[dict[str, Any]]:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return list(self.samples)


class JtopSampler:
    """jetson-stats' Python API (`from jtop import jtop`), which reads the same counters through its service."""

    source = "jtop"
    unread_lines, unread_example = 0, None  # jtop gives values, not lines

    def __init__(self, interval_ms: int, jtop_cls=None):
        self.interval_s = max(int(interval_ms), 100) / 1000.0
        self.jtop_cls = jtop_cls
        self.samples: list[dict[str, Any]] = []
        self._jetson = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        jtop_cls = self.jtop_cls or jtop_module().jtop
        self._jetson = jtop_cls(interval=self.interval_s)
        self._jetson.start()  # raises when the jtop service is not running: start_sampler falls back
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set() and self._jetson.ok():
            sample = sample_from_jtop(self._jetson)
            sample["t"] = time.monotonic()
            self.samples.append(sample)

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval_s + 5)
        if self._jetson is not None:
            self._jetson.close()
        return list(self.samples)


def start_sampler(interval_ms: int):
    """A started sampler: jtop when it is installed and its service answers, tegrastats otherwise."""
    if jtop_module() is not None:
        sampler = JtopSampler(interval_ms)
        try:
            sampler.start()
            return sampler
        except Exception as exc:  # jtop installed but its service is not running
            log.info("jtop is installed but unusable (%s); reading tegrastats instead", exc)
    sampler = TegrastatsSampler(interval_ms)
    sampler.start()
    return sampler


def sample_from_jtop(jetson) -> dict[str, Any]:
    """One sample in tegrastats' shape from a running jtop object (memory in kB, power in mW, GPU in %)."""
    ram = (getattr(jetson, "memory", None) or {}).get("RAM") or {}
    rails = ((getattr(jetson, "power", None) or {}).get("rail")) or {}
    gpu = (getattr(jetson, "stats", None) or {}).get("GPU")
    return {"ram_used_mb": ram["used"] / 1024.0 if "used" in ram else None,
            "ram_total_mb": ram["tot"] / 1024.0 if "tot" in ram else None,
            "gpu_load_pct": float(gpu) if isinstance(gpu, (int, float)) else None, "gpu_freq_mhz": None,
            "power_mw": {name: float(r["power"]) for name, r in rails.items()
                         if isinstance(r, dict) and isinstance(r.get("power"), (int, float))}}


def locate_tool(name: str, paths: Sequence[str] = ()) -> str | None:
    """A Jetson tool on PATH, else at its usual place (sudo's PATH and a service's often lack /usr/sbin)."""
    return shutil.which(name) or next((p for p in paths if os.access(p, os.X_OK)), None)


def jtop_module():
    """jetson-stats' `jtop` module, or None where it is not installed (or fails to import)."""
    try:
        import jtop  # jetson-stats

        return jtop
    except Exception:
        return None


__all__ = ["JtopSampler", "TEGRASTATS_PATHS", "TegrastatsSampler", "jtop_module", "locate_tool",
           "sample_from_jtop", "start_sampler"]
