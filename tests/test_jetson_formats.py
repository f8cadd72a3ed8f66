"""Jetson output formats of JetPack 6 that earlier parsers misread, from fixture files written in the documented
formats (tests/fixtures/jetson/): padded `jetson_clocks --show` CPU lines, three values per tegrastats rail, the
AGX Orin's second GPU cluster; and that anything a parser could not read from non-empty output is reported as a
warning in the telemetry, never an empty result as if all were well."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from edgeprune.backends.jetson import samplers
from edgeprune.backends.jetson.parsers import (parse_jetson_clocks, parse_nvpmodel, parse_tegrastats_line,
                                               samples_unread)
from edgeprune.backends.jetson.telemetry import JetsonMonitor

FIXTURES = Path(__file__).parent / "fixtures" / "jetson"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


# -- jetson_clocks --show, JetPack 6 ------------------------------------------------------------------------

def test_padded_cpu_lines_of_an_orin_nano_are_all_read():
    state = parse_jetson_clocks(fixture("jp6_orin_nano_clocks_locked.txt"))
    assert list(state["cpus"]) == [f"cpu{i}" for i in range(6)]
    assert state["cpus"]["cpu0"] == {"online": True, "governor": "schedutil", "min": 1728000, "max": 1728000,
                                     "cur": 1728000}
    assert state["locked"] is True and state["not_locked"] == [] and "unread" not in state
    assert state["power_mode"] == "MAXN_SUPER"


def test_an_unlocked_cpu_below_cpu10_on_an_agx_orin_is_caught():
    """cpu10 and cpu11 (unpadded) and the GPU are locked; cpu3 (padded) is not: the board is not locked."""
    state = parse_jetson_clocks(fixture("jp6_agx_orin_clocks_cpu3_unlocked.txt"))
    assert len(state["cpus"]) == 12
    assert state["locked"] is False
    assert state["not_locked"] == ["cpu3 min 115200 max 2201600 current 729600"]


def test_cpu_lines_in_an_unknown_layout_are_reported_not_skipped():
    text = fixture("jp6_orin_nano_clocks_locked.txt").replace("Governor=", "Gov=")
    state = parse_jetson_clocks(text)
    assert state["cpus"] == {} and state["locked"] is True  # judged on the GPU alone...
    assert state["unread"][0].startswith("6 lines of jetson_clocks --show CPU output could not be read, e.g. "
                                         "'cpu0:  Online=1 Gov=schedutil")
    assert "named no CPU clock" in state["unread"][1]  # ...and it says so


def test_jetson_clocks_output_with_no_clock_says_what_it_lacked():
    state = parse_jetson_clocks("jetson_clocks: permission denied\n")
    assert state["locked"] is None
    assert [u.split(",")[0] for u in state["unread"]] == ["jetson_clocks --show named no CPU clock",
                                                           "jetson_clocks --show named no GPU clock"]
    assert "unread" not in parse_jetson_clocks("")  # nothing printed is not a format problem


def test_nvpmodel_output_without_a_power_mode_says_so():
    out = parse_nvpmodel("NVPM ERROR: failed to read PARAM\n")
    assert out["name"] is None and "no `NV Power Mode:` line" in out["unread"][0]
    assert "NVPM ERROR" in out["unread"][0]
    assert "unread" not in parse_nvpmodel("NV Power Mode: MAXN\n0\n")


# -- tegrastats ----------------------------------------------------------------------------------------------

def test_rails_with_three_values_read_the_current_one():
    first, second = [parse_tegrastats_line(ln) for ln in fixture("jp6_tegrastats_three_values.txt").splitlines()]
    assert first["power_mw"] == {"VDD_IN": 4548.0, "VDD_CPU_GPU_CV": 1210.0, "VDD_SOC": 1404.0}
    assert second["power_mw"] == {"VDD_IN": 5012.0, "VDD_CPU_GPU_CV": 1498.0, "VDD_SOC": 1460.0}
    assert (first["gpu_load_pct"], first["gpu_freq_mhz"]) == (64.0, [1020])
    assert samples_unread([first, second], "tegrastats") == []


def test_agx_orin_second_gpu_cluster_is_read():
    s = parse_tegrastats_line(fixture("jp6_agx_orin_tegrastats_two_gpu_clusters.txt"))
    assert s["gpu_load_pct"] == 70.0  # the mean of GR3D_FREQ 80% and GR3D2_FREQ 60%
    assert s["gpu_freq_mhz"] == [1300, 1300]
    assert s["power_mw"] == {"VDD_GPU_SOC": 9210.0, "VDD_CPU_CV": 3120.0, "VIN_SYS_5V0": 5230.0,
                             "VDDQ_VDD2_1V8AO": 1510.0}  # no NC channel, no RAM/SWAP


def test_samples_without_rails_are_a_warning_not_an_empty_success():
    s = parse_tegrastats_line(fixture("tegrastats_rails_in_watts.txt"))
    assert s["power_mw"] == {} and s["gpu_load_pct"] == 64.0
    notes = samples_unread([s, s], "tegrastats")
    assert len(notes) == 1 and notes[0].startswith("no power rail read from any of 2 tegrastats samples")
    assert samples_unread([], "tegrastats") == []


# -- the monitor puts every such note in the report -------------------------------------------------------------

def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)


@pytest.fixture
def jp6_tools(tmp_path, monkeypatch):
    """Stand-ins for tegrastats, nvpmodel and jetson_clocks on PATH, printing whatever files the test writes."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    files = {name: tmp_path / f"{name}.txt" for name in ("tegrastats", "nvpmodel", "jetson_clocks")}
    _tool(bindir, "tegrastats", f'while :; do cat "{files["tegrastats"]}"; sleep 0.05; done')
    _tool(bindir, "nvpmodel", f'cat "{files["nvpmodel"]}"')
    _tool(bindir, "jetson_clocks", f'cat "{files["jetson_clocks"]}"')
    files["tegrastats"].write_text(fixture("jp6_tegrastats_three_values.txt"))
    files["nvpmodel"].write_text("NV Power Mode: MAXN_SUPER\n2\n")
    files["jetson_clocks"].write_text(fixture("jp6_orin_nano_clocks_locked.txt"))
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(samplers, "jtop_module", lambda: None)
    return files


def _monitored(ms: float = 0.4) -> JetsonMonitor:
    import time

    monitor = JetsonMonitor(interval_ms=50)
    with monitor.window():
        time.sleep(ms)
    return monitor


def test_a_jetpack6_board_reports_rails_and_locked_clocks_without_warnings(jp6_tools):
    report = _monitored().report()
    assert report["samples"] >= 2 and set(report["power_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert report["power_mw"]["VDD_IN"]["max"] == 5012.0
    assert report["clocks_locked"] is True and len(report["clocks"]["cpus"]) == 6
    assert report["power_mode"] == {"name": "MAXN_SUPER", "id": 2}
    assert report["parse_warnings"] == []


def test_output_edgeprune_cannot_read_is_listed_in_the_report_and_logged(jp6_tools, caplog):
    jp6_tools["tegrastats"].write_text(fixture("tegrastats_rails_in_watts.txt") + "TEGRA: unknown sensor\n")
    jp6_tools["nvpmodel"].write_text("NVPM ERROR: failed\n")
    jp6_tools["jetson_clocks"].write_text(fixture("jp6_orin_nano_clocks_locked.txt").replace("Governor=", "G="))
    with caplog.at_level(logging.WARNING, logger="edgeprune.backends.jetson"):
        monitor = _monitored()
        report = monitor.report()
        assert monitor.report()["parse_warnings"] == report["parse_warnings"]  # logged once all the same
    warnings = report["parse_warnings"]
    assert report["power_mw"] == {}  # missing, and said to be missing:
    assert any(w.startswith("no power rail read from any of") for w in warnings)
    assert any("of tegrastats output could not be read, e.g. 'TEGRA: unknown sensor'" in w for w in warnings)
    assert any("no `NV Power Mode:` line" in w for w in warnings)
    assert any("jetson_clocks --show CPU output could not be read" in w for w in warnings)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Jetson telemetry: ")]
    assert sorted(logged) == sorted(f"Jetson telemetry: {w}" for w in warnings)
