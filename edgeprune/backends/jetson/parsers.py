"""Pure parsers of the Jetson tools' text, and the summary of samples; no I/O.

  tegrastats   `RAM 3162/7620MB (lfb 4x2MB) ... GR3D_FREQ 14%@[407,407] ... VDD_IN 3913mW/3922mW ...`
               rails are `NAME current/average` (bare numbers before JetPack 5, `mW` after) or, in newer
               tegrastats, `NAME current/average/max`; the AGX Orin may print its second GPU cluster as GR3D2_FREQ
  nvpmodel -q  `NV Power Mode: MAXN` then the mode id on its own line
  jetson_clocks --show
               `cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=2112000 ...` (JetPack 6
               pads cpu0-cpu9 to line up with cpu10: `cpu0:  Online=1 ...`), `GPU MinFreq=306000000 MaxFreq=...
               CurrentFreq=...`, `EMC ... FreqOverride=0`

A parser that reads nothing it expected from a non-empty input says so in its result (`unread`, a list of
sentences), which the telemetry report carries as warnings: a format edgeprune does not know must never look like
a board with no power rails or no CPUs.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

NOT_A_RAIL = {"RAM", "SWAP", "IRAM", "NC"}  # `NC` rails are unconnected channels of the AGX Orin's INA3221

_RAM_RE = re.compile(r"\bRAM (\d+)/(\d+)MB\b")
_GR3D_RE = re.compile(r"\bGR3D\d*_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_RAIL_RE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?(?:/\d+(?:mW)?){1,2}(?=\s|$)")
# "Gonvernor" is how the TX1's jetson_clocks spells it
_CPU_CLOCK_RE = re.compile(r"^(cpu\d+):\s+(?:Online=(\d)\s+)?Go\w*rnor=(\S+)\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+"
                           r"CurrentFreq=(\d+)")
_CPU_LINE_RE = re.compile(r"^cpu\d+:")
_UNIT_CLOCK_RE = re.compile(r"^(GPU|EMC)\s+MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)")
_POWER_MODE_RE = re.compile(r"NV Power Mode:\s*(.+?)\s*$")


def parse_tegrastats_line(line: str) -> dict[str, Any] | None:
    """One tegrastats line -> {ram_used_mb, ram_total_mb, gpu_load_pct, gpu_freq_mhz, power_mw: {rail: mW}};
    None when the line is not a tegrastats line. Power is the instantaneous reading (the first number). With
    several GPU clusters (GR3D_FREQ, GR3D2_FREQ) the load is their mean and the frequencies are listed in order."""
    ram = _RAM_RE.search(line)
    if ram is None:
        return None
    clusters = _GR3D_RE.findall(line)
    freqs = [int(f) for _load, fs in clusters for f in fs.split(",") if f]
    power = {name: float(cur) for name, cur in _RAIL_RE.findall(line) if name not in NOT_A_RAIL}
    return {"ram_used_mb": float(ram.group(1)), "ram_total_mb": float(ram.group(2)),
            "gpu_load_pct": float(np.mean([float(load) for load, _ in clusters])) if clusters else None,
            "gpu_freq_mhz": freqs or None, "power_mw": power}


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


def samples_unread(samples: Sequence[dict[str, Any]], source: str) -> list[str]:
    """What every sample lacked that a Jetson's `source` (tegrastats, jtop) reports: RAM, GPU load, power rails."""
    if not samples:
        return []
    wanted = {"RAM use": "ram_used_mb", "GPU load (GR3D_FREQ)": "gpu_load_pct", "power rail": "power_mw"}
    return [f"no {what} read from any of {len(samples)} {source} samples: its format may be one edgeprune does "
            "not know, so these figures are missing from the report"
            for what, key in wanted.items() if not any(s.get(key) not in (None, {}) for s in samples)]


def lines_unread(count: int, example: str | None, source: str) -> list[str]:
    """A note for the lines of a tool's output that no parser could read."""
    if not count:
        return []
    return [f"{count} line{'s' if count != 1 else ''} of {source} output could not be read, e.g. "
            f"{(example or '').strip()[:160]!r}"]


def parse_nvpmodel(text: str) -> dict[str, Any]:
    """`nvpmodel -q` (also --verbose) -> {name, id}: the power mode's name and its number in nvpmodel.conf; with
    `unread` when a non-empty output named no power mode."""
    name, mode_id, after = None, None, False
    for line in text.splitlines():
        m = _POWER_MODE_RE.search(line)
        if m:
            name, after = m.group(1), True
            continue
        if after and line.strip().isdigit():
            mode_id = int(line.strip())
            break
    out: dict[str, Any] = {"name": name, "id": mode_id}
    if name is None and text.strip():
        out["unread"] = [f"nvpmodel -q printed no `NV Power Mode:` line (first line {_first_line(text)!r})"]
    return out


def parse_jetson_clocks(text: str) -> dict[str, Any]:
    """`jetson_clocks --show` -> per-CPU and GPU/EMC min, max and current frequency, with the verdict on whether
    jetson_clocks locked them (see clocks_verdict) and `unread`: CPU lines it could not read, or no CPU or GPU
    clock at all."""
    cpus: dict[str, dict[str, Any]] = {}
    units: dict[str, dict[str, Any]] = {}
    power_mode = None
    skipped: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        m = _CPU_CLOCK_RE.match(line)
        if m:
            cpus[m.group(1)] = {"online": m.group(2) != "0", "governor": m.group(3), "min": int(m.group(4)),
                                "max": int(m.group(5)), "cur": int(m.group(6))}
            continue
        if _CPU_LINE_RE.match(line):
            skipped.append(line)
            continue
        m = _UNIT_CLOCK_RE.match(line)
        if m:
            units[m.group(1).lower()] = {"min": int(m.group(2)), "max": int(m.group(3)), "cur": int(m.group(4))}
            continue
        m = _POWER_MODE_RE.search(line)
        if m:
            power_mode = m.group(1)
    state = with_verdict({"source": "jetson_clocks --show", "cpus": cpus, "gpu": units.get("gpu"),
                          "emc": units.get("emc"), "power_mode": power_mode})
    unread = lines_unread(len(skipped), skipped[0] if skipped else None, "jetson_clocks --show CPU")
    if text.strip():
        unread += [f"jetson_clocks --show named no {what} clock, so the lock check could not judge it"
                   for what, found in (("CPU", cpus), ("GPU", units.get("gpu"))) if not found]
    if unread:
        state["unread"] = unread
    return state


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


def with_verdict(state: dict[str, Any]) -> dict[str, Any]:
    """`state` (cpus, gpu, source) with `locked`, `not_locked` and, when nothing could be judged, `reason`."""
    locked, reasons = clocks_verdict(state)
    state["locked"] = locked
    state["not_locked"] = reasons
    if locked is None:
        state["reason"] = f"{state['source']} named no CPU or GPU clock"
    return state


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:120]


def _round(x: float) -> float:
    return round(float(x), 2)


__all__ = ["clocks_verdict", "lines_unread", "parse_jetson_clocks", "parse_nvpmodel", "parse_tegrastats_line",
           "samples_unread", "summarize_samples", "with_verdict"]
