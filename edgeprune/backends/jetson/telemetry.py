"""Jetson telemetry while measuring: memory, GPU load and power rails from tegrastats (or jtop when installed),
the nvpmodel power mode, and whether jetson_clocks locked the clocks.

A Jetson scales its CPU, GPU and memory clocks with load (DVFS) unless `jetson_clocks` pins them at their
maximum: a latency measured with unlocked clocks depends on how long the GPU had been busy before, so a build
warns (log and report) when they are not locked. On a host without tegrastats or jtop the telemetry says it is
not available, and why; it never fails a build.

The parsers are pure functions over the tools' text, tested with real sample lines of JetPack 4, 5 and 6:
  tegrastats   `RAM 3162/7620MB (lfb 4x2MB) ... GR3D_FREQ 14%@[407,407] ... VDD_IN 3913mW/3922mW ...`
               (rails are `NAME current/average`, with `mW` from JetPack 5 on, bare numbers before)
  nvpmodel -q  `NV Power Mode: MAXN` then the mode id on its own line
  jetson_clocks --show
               `cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=2112000 ...`,
               `GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000`, `EMC ... FreqOverride=0`
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from ..base.runner import Deployed, Runner
from ..base.stats import LatencyStats

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_MS = 100
TEGRASTATS_PATHS = ("/usr/bin/tegrastats",)
JETSON_CLOCKS_PATHS = ("/usr/bin/jetson_clocks",)
NVPMODEL_PATHS = ("/usr/sbin/nvpmodel", "/usr/bin/nvpmodel")
GPU_DEVFREQ_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")  # the iGPU's devfreq node, per Jetson generation
NOT_A_RAIL = {"RAM", "SWAP", "IRAM", "NC"}  # `NC` rails are unconnected channels of the AGX Orin's INA3221
CLOCKS_ADVICE = "run `sudo jetson_clocks` on the device before measuring (and keep the nvpmodel mode fixed)"


# ---------------------------------------------------------------------------------------------------------
# Monitoring measurements
# ---------------------------------------------------------------------------------------------------------
class MonitoredRunner(Runner):
    """Another runner, with Jetson telemetry recorded around each of its measurements."""

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

    def shipped(self, deployed: Deployed) -> dict[str, Path]:  # type: ignore[override]
        return self.inner.shipped(deployed)

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

    @property
    def available(self) -> bool:
        return self.reason is None

    @contextmanager
    def window(self) -> Iterator[None]:
        if not self.available:
            yield
            return
        self._check_state(read_jetson_state())
        sampler = start_sampler(self.interval_ms)
        self.source = sampler.source
        try:
            yield
        finally:
            self.samples.extend(sampler.stop())
            self.windows += 1

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
        return out

    def _check_state(self, state: dict[str, Any]) -> None:
        if self.state is None:
            self.state = state
        locked = state["clocks"].get("locked")
        self.locked.append(locked)
        if locked is not True and self.warning is None:  # warned once per build, recorded per window
            why = "; ".join(state["clocks"].get("not_locked") or [state["clocks"].get("reason", "unknown")])
            self.warning = (f"Jetson clocks are {'not locked' if locked is False else 'of unknown state'} ({why}): "
                            f"latency figures vary with DVFS; {CLOCKS_ADVICE}")
            log.warning("%s", self.warning)


def unavailable_reason() -> str | None:
    """None where telemetry can be read; else why not."""
    if locate_tool("tegrastats", TEGRASTATS_PATHS) or _jtop_module() is not None:
        return None
    return ("not a Jetson: no tegrastats (on PATH or in /usr/bin) and no jtop (jetson-stats) here, so memory, "
            "GPU load and power rails were not recorded")


def read_jetson_state(sysfs_root: Path = Path("/")) -> dict[str, Any]:
    """The nvpmodel power mode and the clock state (jetson_clocks --show, else sysfs)."""
    nvp = _run_tool("nvpmodel", NVPMODEL_PATHS, ["-q"])
    power_mode = parse_nvpmodel(nvp) if nvp else {"name": None, "id": None, "reason": "nvpmodel -q gave no output"}
    clocks = None
    jc = locate_tool("jetson_clocks", JETSON_CLOCKS_PATHS)
    if jc:
        text = _run([jc, "--show"])
        if text is None and os.geteuid() != 0 and shutil.which("sudo"):
            text = _run(["sudo", "-n", jc, "--show"])  # --show reads debugfs, which needs root
        if text:
            clocks = parse_jetson_clocks(text)
    if clocks is None or clocks.get("locked") is None:
        sysfs = read_clocks_sysfs(sysfs_root)
        if sysfs.get("locked") is not None or clocks is None:
            clocks = sysfs
    return {"power_mode": power_mode, "clocks": clocks}


# ---------------------------------------------------------------------------------------------------------
# Samplers: tegrastats as a subprocess, or jtop's Python API
# ---------------------------------------------------------------------------------------------------------
class TegrastatsSampler:
    source = "tegrastats"

    def __init__(self, interval_ms: int, executable: str | None = None):
        self.interval_ms = int(interval_ms)
        self.executable = executable or locate_tool("tegrastats", TEGRASTATS_PATHS)
        self.samples: list[dict[str, Any]] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.executable:
            return
        try:
            self._proc = subprocess.Popen([self.executable, "--interval", str(self.interval_ms)],
                                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError as exc:
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

    def __init__(self, interval_ms: int, jtop_cls=None):
        self.interval_s = max(int(interval_ms), 100) / 1000.0
        self.jtop_cls = jtop_cls
        self.samples: list[dict[str, Any]] = []
        self._jetson = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        jtop_cls = self.jtop_cls or _jtop_module().jtop
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
    if _jtop_module() is not None:
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


# ---------------------------------------------------------------------------------------------------------
# Pure parsers and the summary
# ---------------------------------------------------------------------------------------------------------
_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB\b")
_GR3D_RE = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
# "Gonvernor" is how the TX1's jetson_clocks spells it
_CPU_CLOCK_RE = re.compile(r"^(cpu\d+): (?:Online=(\d) )?Go\w*rnor=(\S+) MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)")
_UNIT_CLOCK_RE = re.compile(r"^(GPU|EMC) MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)(?: FreqOverride=(\d+))?")
_POWER_MODE_RE = re.compile(r"NV Power Mode:\s*(.+?)\s*$")


def parse_tegrastats_line(line: str) -> dict[str, Any] | None:
    """One tegrastats line -> {ram_used_mb, ram_total_mb, gpu_load_pct, gpu_freq_mhz, power_mw: {rail: mW}};
    None when the line is not a tegrastats line. Power is the instantaneous reading (the first number)."""
    ram = _RAM_RE.search(line)
    if ram is None:
        return None
    gr3d = _GR3D_RE.search(line)
    freqs = [int(f) for f in gr3d.group(2).split(",") if f] if gr3d and gr3d.group(2) else None
    power = {name: float(cur) for name, cur, _avg in _RAIL_RE.findall(line) if name not in NOT_A_RAIL}
    return {"ram_used_mb": float(ram.group(1)), "ram_total_mb": float(ram.group(2)),
            "gpu_load_pct": float(gr3d.group(1)) if gr3d else None, "gpu_freq_mhz": freqs, "power_mw": power}


def summarize_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and max GPU load, peak RAM, and mean and max power per rail over every sample."""
    gpu = [s["gpu_load_pct"] for s in samples if s.get("gpu_load_pct") is not None]
    ram = [s["ram_used_mb"] for s in samples if s.get("ram_used_mb") is not None]
    totals = [s["ram_total_mb"] for s in samples if s.get("ram_total_mb") is not None]
    rails: dict[str, list[float]] = {}
    for s in samples:
        for name, mw in (s.get("power_mw") or {}).items():
            rails.setdefault(name, []).append(mw)
    return {
        "samples": len(samples),
        "gpu_load_pct": {"mean": _round(np.mean(gpu)), "max": _round(max(gpu))} if gpu else None,
        "ram_used_mb": {"peak": _round(max(ram)), "total": _round(max(totals)) if totals else None} if ram else None,
        "power_mw": {name: {"mean": _round(np.mean(v)), "max": _round(max(v))} for name, v in rails.items()},
    }


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """`nvpmodel -q` (also --verbose) -> {name, id}: the power mode's name and its number in nvpmodel.conf."""
    name, mode_id, after = None, None, False
    for line in text.splitlines():
        m = _POWER_MODE_RE.search(line)
        if m:
            name, after = m.group(1), True
            continue
        if after and line.strip().isdigit():
            mode_id = int(line.strip())
            break
    return {"name": name, "id": mode_id}


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """`jetson_clocks --show` -> per-CPU and GPU/EMC min, max and current frequency, with the verdict on whether
    jetson_clocks locked them (see clocks_verdict)."""
    cpus: dict[str, dict[str, Any]] = {}
    units: dict[str, dict[str, Any]] = {}
    power_mode = None
    for raw in text.splitlines():
        line = raw.strip()
        m = _CPU_CLOCK_RE.match(line)
        if m:
            cpus[m.group(1)] = {"online": m.group(2) != "0", "governor": m.group(3), "min": int(m.group(4)),
                                "max": int(m.group(5)), "cur": int(m.group(6))}
            continue
        m = _UNIT_CLOCK_RE.match(line)
        if m:
            units[m.group(1).lower()] = {"min": int(m.group(2)), "max": int(m.group(3)), "cur": int(m.group(4))}
            continue
        m = _POWER_MODE_RE.search(line)
        if m:
            power_mode = m.group(1)
    return _with_verdict({"source": "jetson_clocks --show", "cpus": cpus, "gpu": units.get("gpu"),
                          "emc": units.get("emc"), "power_mode": power_mode})


def read_clocks_sysfs(root: Path = Path("/")) -> dict[str, Any]:
    """The same clock state from cpufreq and the GPU's devfreq node, readable without root."""
    cpus = {}
    for d in sorted((root / "sys/devices/system/cpu").glob("cpu[0-9]*"), key=lambda p: int(p.name[3:])):
        freq = d / "cpufreq"
        values = [_read_int(freq / f"scaling_{k}_freq") for k in ("min", "max", "cur")]
        if None in values:
            continue
        online = _read_int(d / "online")
        cpus[d.name] = {"online": online != 0, "governor": _read_text(freq / "scaling_governor"),
                        "min": values[0], "max": values[1], "cur": values[2]}
    gpu = None
    for node in sorted((root / "sys/class/devfreq").glob("*")):
        if node.name.rsplit(".", 1)[-1] in GPU_DEVFREQ_NAMES:
            values = [_read_int(node / f"{k}_freq") for k in ("min", "max", "cur")]
            if None not in values:
                gpu = {"min": values[0], "max": values[1], "cur": values[2], "node": node.name}
                break
    return _with_verdict({"source": "sysfs (cpufreq, devfreq)", "cpus": cpus, "gpu": gpu, "emc": None,
                          "power_mode": None})


def clocks_verdict(state: dict[str, Any]) -> tuple[bool | None, list[str]]:
    """(locked, what is not): locked when every online CPU and the GPU run at MinFreq == MaxFreq == CurrentFreq,
    jetson_clocks' own definition; None when the state names no clock at all."""
    judged, reasons = 0, []
    for name, c in sorted(state.get("cpus", {}).items(), key=lambda kv: int(kv[0][3:])):
        if not c.get("online", True):
            continue
        judged += 1
        if not c["min"] == c["max"] == c["cur"]:
            reasons.append(f"{name} min {c['min']} max {c['max']} current {c['cur']}")
    gpu = state.get("gpu")
    if gpu:
        judged += 1
        if not gpu["min"] == gpu["max"] == gpu["cur"]:
            reasons.append(f"GPU min {gpu['min']} max {gpu['max']} current {gpu['cur']}")
    if not judged:
        return None, []
    return not reasons, reasons


def _with_verdict(state: dict[str, Any]) -> dict[str, Any]:
    locked, reasons = clocks_verdict(state)
    state["locked"] = locked
    state["not_locked"] = reasons
    if locked is None:
        state["reason"] = f"{state['source']} named no CPU or GPU clock"
    return state


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def locate_tool(name: str, paths: Sequence[str] = ()) -> str | None:
    return shutil.which(name) or next((p for p in paths if os.access(p, os.X_OK)), None)


def _run_tool(name: str, paths: Sequence[str], args: list[str]) -> str | None:
    exe = locate_tool(name, paths)
    return _run([exe, *args]) if exe else None


def _run(argv: list[str], timeout: float = 10.0) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


def _jtop_module():
    try:
        import jtop  # jetson-stats

        return jtop
    except Exception:
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _read_int(path: Path) -> int | None:
    text = _read_text(path)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _round(x: float) -> float:
    return round(float(x), 2)


__all__ = ["JetsonMonitor", "MonitoredRunner", "parse_tegrastats_line", "parse_nvpmodel", "parse_jetson_clocks",
           "read_clocks_sysfs", "clocks_verdict", "summarize_samples", "unavailable_reason", "read_jetson_state"]
