"""The board's state at the start of a measurement: the nvpmodel power mode, and whether the clocks are locked
(`jetson_clocks --show`, else cpufreq and the GPU's devfreq node in sysfs, which need no root)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .parsers import parse_jetson_clocks, parse_nvpmodel, with_verdict
from .samplers import locate_tool

JETSON_CLOCKS_PATHS = ("/usr/bin/jetson_clocks",)
NVPMODEL_PATHS = ("/usr/sbin/nvpmodel", "/usr/bin/nvpmodel")
GPU_DEVFREQ_NAMES = ("gpu", "ga10b", "gv11b", "gp10b", "gb10b")  # the iGPU's devfreq node, per Jetson generation


def read_jetson_state(sysfs_root: Path = Path("/")) -> dict[str, Any]:
    """The nvpmodel power mode and the clock state (jetson_clocks --show, else sysfs)."""
    nvpmodel = locate_tool("nvpmodel", NVPMODEL_PATHS)
    nvp = _run([nvpmodel, "-q"]) if nvpmodel else None
    power_mode = parse_nvpmodel(nvp) if nvp else {"name": None, "id": None, "reason": "nvpmodel -q gave no output"}
    clocks, silent = None, None
    jc = locate_tool("jetson_clocks", JETSON_CLOCKS_PATHS)
    if jc:
        text = _run([jc, "--show"])
        if text is None and os.geteuid() != 0:
            # --show reads debugfs, which needs root: sudo -n, which never waits for a password
            text = _run(["sudo", "-n", jc, "--show"]) if shutil.which("sudo") else None
            if text is None:
                silent = ("`jetson_clocks --show` needs root here (it reads debugfs) and `sudo -n` "
                          f"{'was refused' if shutil.which('sudo') else 'is not installed'}")
        elif text is None:
            silent = "`jetson_clocks --show` printed nothing"
        if text:
            clocks = parse_jetson_clocks(text)
    if clocks is None or clocks.get("locked") is None:
        sysfs = read_clocks_sysfs(sysfs_root)
        if sysfs.get("locked") is not None or clocks is None:
            # what jetson_clocks printed and could not be read is still worth saying
            clocks = {**sysfs, **({"unread": clocks["unread"]} if clocks and clocks.get("unread") else {})}
    if silent:
        clocks["jetson_clocks"] = silent
        if clocks.get("locked") is None:
            clocks["reason"] = f"{silent}, and {clocks.get('reason') or 'sysfs could not tell'}"
    return {"power_mode": power_mode, "clocks": clocks}


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
    return with_verdict({"source": "sysfs (cpufreq, devfreq)", "cpus": cpus, "gpu": gpu, "emc": None,
                         "power_mode": None})


def _run(argv: list[str], timeout: float = 10.0) -> str | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 and proc.stdout.strip() else None


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


__all__ = ["GPU_DEVFREQ_NAMES", "JETSON_CLOCKS_PATHS", "NVPMODEL_PATHS", "read_clocks_sysfs", "read_jetson_state"]
