"""Bad input on the Jetson side (issue 15, "Bad input"): tegrastats not present (or present and silent),
jetson_clocks needing root. Telemetry is a record beside the latency figures, so these do not stop a build; each
is said in one line in the report's telemetry section (reason, warning or parse_warnings), never an empty result
that looks like a quiet board. Stand-in tools on PATH; no Jetson needed."""
from __future__ import annotations

import pytest

from edgeprune.backends.jetson import samplers, state, telemetry
from edgeprune.backends.jetson.samplers import TegrastatsSampler
from edgeprune.backends.jetson.state import read_jetson_state
from edgeprune.backends.jetson.telemetry import JetsonMonitor
from edgeprune.targets import devices
from test_telemetry import _tool  # a stand-in tool: #!/bin/sh and the body


@pytest.fixture
def bindir(tmp_path, monkeypatch):
    """PATH holding only the stand-ins a test writes (so no sudo, no real tegrastats); no jtop."""
    path = tmp_path / "bin"
    path.mkdir()
    monkeypatch.setenv("PATH", str(path))
    monkeypatch.setattr(samplers, "TEGRASTATS_PATHS", ())
    monkeypatch.setattr(state, "JETSON_CLOCKS_PATHS", ())
    monkeypatch.setattr(state, "NVPMODEL_PATHS", ())
    monkeypatch.setattr(samplers, "jtop_module", lambda: None)
    return path


def test_a_jetson_without_tegrastats_is_not_called_not_a_jetson(bindir, monkeypatch):
    monkeypatch.setattr(devices, "read_jetson_model", lambda *a: "NVIDIA Jetson Orin Nano Developer Kit")
    monitor = JetsonMonitor()
    report = monitor.report()
    assert report["available"] is False
    reason = report["reason"]
    assert reason.startswith("this NVIDIA Jetson Orin Nano Developer Kit has no tegrastats") and "\n" not in reason
    assert "not a Jetson" not in reason and "mount /usr/bin/tegrastats" in reason


def test_elsewhere_no_tegrastats_is_not_a_jetson(bindir, monkeypatch):
    monkeypatch.setattr(devices, "read_jetson_model", lambda *a: None)
    assert telemetry.unavailable_reason().startswith("not a Jetson: no tegrastats")


def test_a_tegrastats_that_prints_nothing_is_reported_not_an_empty_record(bindir, monkeypatch):
    _tool(bindir, "tegrastats", "echo 'tegrastats: cannot open /sys/kernel/debug' >&2\nexit 1\n")
    monkeypatch.setattr(telemetry, "read_jetson_state",
                        lambda: {"power_mode": {"name": "15W", "id": 0}, "clocks": {"locked": True}})
    monitor = JetsonMonitor(interval_ms=50)
    with monitor.window():
        pass
    report = monitor.report()
    assert report["available"] is True and report["samples"] == 0
    notes = [n for n in report["parse_warnings"] if n.startswith("no tegrastats samples over 1 measurement window")]
    assert len(notes) == 1 and "memory, GPU load and power are missing" in notes[0]


def test_a_tegrastats_that_cannot_start_says_why(tmp_path):
    target = tmp_path / "tegrastats"
    target.write_text("not a program")  # exists, not executable
    sampler = TegrastatsSampler(50, executable=str(target))
    sampler.start()
    assert sampler.stop() == [] and sampler.start_error.startswith("tegrastats could not be started: ")
    missing = TegrastatsSampler(50, executable=None)
    missing.executable = None
    missing.start()
    assert missing.start_error.startswith("tegrastats is not installed")


def test_jetson_clocks_needing_root_is_said_when_sysfs_cannot_tell_either(bindir, tmp_path, monkeypatch):
    _tool(bindir, "jetson_clocks", "echo 'Error: this needs root' >&2\nexit 1\n")
    _tool(bindir, "nvpmodel", 'printf "NV Power Mode: 15W\\n0\\n"\n')
    monkeypatch.setattr(state.os, "geteuid", lambda: 1000)
    got = read_jetson_state(tmp_path / "empty-sysfs")
    clocks = got["clocks"]
    assert clocks["locked"] is None
    assert clocks["reason"].startswith("`jetson_clocks --show` needs root here (it reads debugfs) and `sudo -n` "
                                       "is not installed, and sysfs")
    monitor = JetsonMonitor(interval_ms=50)
    monitor._check_state(got)  # the warning a measurement window records
    assert "of unknown state (`jetson_clocks --show` needs root" in monitor.warning and "\n" not in monitor.warning


def test_jetson_clocks_needing_root_with_sysfs_readable_keeps_the_sysfs_verdict(bindir, tmp_path, monkeypatch):
    _tool(bindir, "jetson_clocks", "exit 1\n")
    monkeypatch.setattr(state.os, "geteuid", lambda: 1000)
    root = tmp_path / "root"
    cpu = root / "sys/devices/system/cpu/cpu0/cpufreq"
    cpu.mkdir(parents=True)
    for key in ("min", "max", "cur"):
        (cpu / f"scaling_{key}_freq").write_text("1510400\n")
    gpu = root / "sys/class/devfreq/17000000.gpu"
    gpu.mkdir(parents=True)
    for key in ("min", "max", "cur"):
        (gpu / f"{key}_freq").write_text("624750000\n")
    clocks = read_jetson_state(root)["clocks"]
    assert clocks["locked"] is True and clocks["source"].startswith("sysfs")
    assert clocks["jetson_clocks"].startswith("`jetson_clocks --show` needs root here")
