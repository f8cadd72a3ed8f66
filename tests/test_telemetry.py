"""Jetson telemetry: the tegrastats / nvpmodel / jetson_clocks parsers on sample output of JetPack 4, 5 and 6
boards, the sysfs clock reader on a fake tree, and the sampler and monitor against fake tools on PATH (the real
subprocess plumbing; only the tools are stand-ins)."""
from __future__ import annotations

import logging
import os
import stat
import textwrap
from pathlib import Path

import pytest

from edgeprune.backends.jetson import samplers
from edgeprune.backends.jetson.parsers import (clocks_verdict, parse_jetson_clocks, parse_nvpmodel,
                                               parse_tegrastats_line, summarize_samples)
from edgeprune.backends.jetson.samplers import JtopSampler, TegrastatsSampler, sample_from_jtop
from edgeprune.backends.jetson.state import read_clocks_sysfs, read_jetson_state
from edgeprune.backends.jetson.telemetry import JetsonMonitor, MonitoredRunner

# Orin Nano, JetPack 6 (L4T 36): timestamp first, GR3D with one GPC frequency, VDD_IN / VDD_CPU_GPU_CV / VDD_SOC
ORIN_NANO_JP6 = ("03-14-2025 10:21:07 RAM 2871/7620MB (lfb 31x4MB) SWAP 0/3810MB (cached 0MB) "
                 "CPU [12%@1510,3%@1510,0%@1510,1%@1510,0%@1510,2%@1510] EMC_FREQ 9%@2133 GR3D_FREQ 87%@[624] "
                 "NVDEC off NVJPG off VIC off OFA off APE 200 cpu@51.2C soc2@49.8C soc0@50.1C gpu@52.4C "
                 "tj@52.4C soc1@49.9C VDD_IN 7412mW/6980mW VDD_CPU_GPU_CV 2890mW/2611mW VDD_SOC 1904mW/1862mW")
# Orin Nano, JetPack 6 as a non-root user prints GR3D without the frequency
ORIN_NANO_JP6_USER = ("12-02-2024 08:10:44 RAM 3011/7620MB (lfb 6x2MB) SWAP 0/3810MB (cached 0MB) "
                      "CPU [2%@729,1%@729,0%@729,0%@729,off,off] GR3D_FREQ 3% cpu@55.1C soc2@53.9C soc0@54.0C "
                      "gpu@54.6C tj@55.1C soc1@53.7C VDD_IN 4102mW/4090mW VDD_CPU_GPU_CV 655mW/650mW "
                      "VDD_SOC 1290mW/1288mW")
# AGX Orin, JetPack 5: two GPCs, four rails on two INA3221s with unconnected NC channels
AGX_ORIN_JP5 = ("05-30-2024 16:02:51 RAM 14210/62780MB (lfb 402x4MB) SWAP 120/31390MB (cached 0MB) "
                "CPU [71%@2201,64%@2201,80%@2201,58%@2201,12%@2201,9%@2201,3%@2201,6%@2201,2%@2201,1%@2201,"
                "0%@2201,4%@2201] EMC_FREQ 4%@3199 GR3D_FREQ 42%@[1300,1300] VIC_FREQ 115 NVDLA0_FREQ @1600 "
                "APE 174 CV0@70.1C CPU@74.2C Tboard@58C SOC2@67C Tdiode@59.25C SOC0@66.5C CV1@69.3C GPU@68.9C "
                "tj@74.2C SOC1@66.1C CV2@65.0C VDD_GPU_SOC 8120mW/7730mW VDD_CPU_CV 6310mW/5904mW "
                "VIN_SYS_5V0 5120mW/5088mW NC 0mW/0mW VDDQ_VDD2_1V8AO 1402mW/1390mW NC 0mW/0mW")
# Xavier NX, JetPack 5.1: bracketed single GPU frequency, mW units
XAVIER_NX_JP5 = ("11-19-2023 09:44:10 RAM 3501/6851MB (lfb 3x4MB) SWAP 180/3426MB (cached 0MB) "
                 "CPU [31%@1420,20%@1420,18%@1420,25%@1420,off,off] EMC_FREQ 5%@1600 GR3D_FREQ 61%@[1109] "
                 "VIC_FREQ 115 APE 150 AUX@47C CPU@48.5C thermal@47.6C AO@46C GPU@48C PMIC@50C "
                 "VDD_IN 6120mW/5980mW VDD_CPU_GPU_CV 2410mW/2302mW VDD_SOC 1380mW/1371mW")
# Jetson Nano, JetPack 4: no timestamp, GR3D with a bare frequency, POM_ rails without units
NANO_JP4 = ("RAM 1820/3964MB (lfb 180x4MB) SWAP 0/1982MB (cached 0MB) CPU [34%@1479,21%@1479,18%@1479,27%@1479] "
            "EMC_FREQ 12%@1600 GR3D_FREQ 76%@921 APE 25 PLL@36C CPU@39.5C PMIC@100C GPU@37C AO@44.5C "
            "thermal@38.25C POM_5V_IN 5210/4980 POM_5V_GPU 1840/1720 POM_5V_CPU 1110/1046")

ORIN_CLOCKS_UNLOCKED = textwrap.dedent("""\
    SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
    Online CPUs: 0-11
    cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=2112000 IdleStates: WFI=1 c7=1
    cpu1: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
    cpu10: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=1190400 IdleStates: WFI=1 c7=1
    cpu2: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=1 c7=1
    GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
    EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=2133000000 FreqOverride=0
    FAN Dynamic Speed Control=nvfancontrol hwmon4_pwm=0
    NV Power Mode: MAXN
    """)
ORIN_NANO_CLOCKS_LOCKED = textwrap.dedent("""\
    SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit
    Online CPUs: 0-5
    cpu0: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
    cpu1: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
    cpu2: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
    cpu3: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0 c7=0
    cpu4: Online=0 Governor=schedutil MinFreq=115200 MaxFreq=1510400 CurrentFreq=729600 IdleStates: WFI=0 c7=0
    GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000
    EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
    NV Power Mode: 15W
    """)
TX1_CLOCKS = textwrap.dedent("""\
    SOC family:tegra210  Machine:jetson_tx1
    Online CPUs: 0-3
    cpu0: Gonvernor=interactive MinFreq=102000 MaxFreq=1734000 CurrentFreq=510000
    GPU MinFreq=76800000 MaxFreq=998400000 CurrentFreq=76800000
    """)


# -- tegrastats -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("line, ram, gpu, freqs, rails", [
    (ORIN_NANO_JP6, (2871, 7620), 87, [624], {"VDD_IN": 7412, "VDD_CPU_GPU_CV": 2890, "VDD_SOC": 1904}),
    (ORIN_NANO_JP6_USER, (3011, 7620), 3, None, {"VDD_IN": 4102, "VDD_CPU_GPU_CV": 655, "VDD_SOC": 1290}),
    (AGX_ORIN_JP5, (14210, 62780), 42, [1300, 1300],
     {"VDD_GPU_SOC": 8120, "VDD_CPU_CV": 6310, "VIN_SYS_5V0": 5120, "VDDQ_VDD2_1V8AO": 1402}),
    (XAVIER_NX_JP5, (3501, 6851), 61, [1109], {"VDD_IN": 6120, "VDD_CPU_GPU_CV": 2410, "VDD_SOC": 1380}),
    (NANO_JP4, (1820, 3964), 76, [921], {"POM_5V_IN": 5210, "POM_5V_GPU": 1840, "POM_5V_CPU": 1110}),
], ids=["orin-nano-jp6", "orin-nano-jp6-user", "agx-orin-jp5", "xavier-nx-jp5", "nano-jp4"])
def test_tegrastats_lines_of_every_generation(line, ram, gpu, freqs, rails):
    s = parse_tegrastats_line(line + "\n")
    assert (s["ram_used_mb"], s["ram_total_mb"]) == ram
    assert s["gpu_load_pct"] == gpu
    assert s["gpu_freq_mhz"] == freqs
    assert s["power_mw"] == rails  # the instantaneous reading, not the running average; no RAM/SWAP/NC


@pytest.mark.parametrize("line", ["", "tegrastats: command not found", "NV Power Mode: MAXN",
                                  "Warning: Could not read some stats (run as root)"])
def test_lines_that_are_not_tegrastats_give_none(line):
    assert parse_tegrastats_line(line) is None


def test_summary_of_samples():
    samples = [parse_tegrastats_line(x) for x in (ORIN_NANO_JP6, ORIN_NANO_JP6_USER, ORIN_NANO_JP6)]
    out = summarize_samples(samples)
    assert out["samples"] == 3
    assert out["gpu_load_pct"] == {"mean": pytest.approx((87 + 3 + 87) / 3, abs=0.01), "max": 87.0}
    assert out["ram_used_mb"] == {"peak": 3011.0, "total": 7620.0}
    assert out["power_mw"]["VDD_IN"] == {"mean": pytest.approx((7412 * 2 + 4102) / 3, abs=0.01), "max": 7412.0}
    assert set(out["power_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_summary_of_no_samples_is_empty_not_an_error():
    assert summarize_samples([]) == {"samples": 0, "gpu_load_pct": None, "ram_used_mb": None, "power_mw": {}}


# -- nvpmodel and jetson_clocks --------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("NV Power Mode: MAXN\n0\n", {"name": "MAXN", "id": 0}),
    ("NV Fan Mode:quiet\nNV Power Mode: MODE_15W_6CORE\n2\n", {"name": "MODE_15W_6CORE", "id": 2}),
    ("NVPM VERB: Config file: /etc/nvpmodel.conf\nNVPM VERB: parsing done for /etc/nvpmodel.conf\n"
     "NVPM VERB: Current mode: NV Power Mode: 25W\n1\nNVPM VERB: PARAM CPU_ONLINE: ARG CORE_0: PATH "
     "/sys/devices/system/cpu/cpu0/online: REAL_VAL: 1 CONF_VAL: 1\n", {"name": "25W", "id": 1}),
    ("NV Power Mode: MAXN_SUPER\n", {"name": "MAXN_SUPER", "id": None}),
], ids=["agx-maxn", "xavier-fan-line", "orin-nano-verbose", "no-id"])
def test_nvpmodel_query(text, expected):
    assert parse_nvpmodel(text) == expected


def test_jetson_clocks_unlocked_orin_names_what_is_not_locked():
    state = parse_jetson_clocks(ORIN_CLOCKS_UNLOCKED)
    assert set(state["cpus"]) == {"cpu0", "cpu1", "cpu2", "cpu10"}
    assert state["cpus"]["cpu10"] == {"online": True, "governor": "schedutil", "min": 115200, "max": 2201600,
                                      "cur": 1190400}
    assert state["gpu"] == {"min": 306000000, "max": 1300500000, "cur": 306000000}
    assert state["emc"] == {"min": 204000000, "max": 3199000000, "cur": 2133000000}
    assert state["power_mode"] == "MAXN"
    assert state["locked"] is False
    assert state["not_locked"][0].startswith("cpu0 min 115200 max 2201600")
    assert any(r.startswith("GPU min 306000000") for r in state["not_locked"])


def test_jetson_clocks_locked_orin_nano_ignores_offline_cores_and_emc():
    state = parse_jetson_clocks(ORIN_NANO_CLOCKS_LOCKED)
    assert state["locked"] is True and state["not_locked"] == []
    assert state["cpus"]["cpu4"]["online"] is False  # offline, unlocked, not judged
    assert state["power_mode"] == "15W"


def test_jetson_clocks_gpu_alone_unlocked_is_not_locked():
    text = ORIN_NANO_CLOCKS_LOCKED.replace("GPU MinFreq=624750000", "GPU MinFreq=306000000")
    locked, reasons = clocks_verdict(parse_jetson_clocks(text))
    assert locked is False and reasons == ["GPU min 306000000 max 624750000 current 624750000"]


def test_jetson_clocks_tx1_spelling():
    state = parse_jetson_clocks(TX1_CLOCKS)
    assert state["cpus"]["cpu0"]["governor"] == "interactive" and state["locked"] is False


def test_jetson_clocks_output_without_clocks_is_undecided():
    state = parse_jetson_clocks("jetson_clocks: permission denied\n")
    assert state["locked"] is None and "named no CPU or GPU clock" in state["reason"]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def fake_sysfs(root: Path, cpus: dict[int, tuple[int, int, int]], gpu: tuple[int, int, int] | None,
               gpu_node: str = "17000000.ga10b") -> Path:
    for i, (lo, hi, cur) in cpus.items():
        d = root / f"sys/devices/system/cpu/cpu{i}"
        for name, v in (("min", lo), ("max", hi), ("cur", cur)):
            _write(d / "cpufreq" / f"scaling_{name}_freq", f"{v}\n")
        _write(d / "cpufreq/scaling_governor", "schedutil\n")
        if i:
            _write(d / "online", "1\n")
    _write(root / "sys/devices/system/cpu/cpufreq/policy0/related_cpus", "0\n")  # not a cpuN directory
    if gpu:
        for name, v in zip(("min", "max", "cur"), gpu):
            _write(root / f"sys/class/devfreq/{gpu_node}/{name}_freq", f"{v}\n")
    _write(root / "sys/class/devfreq/13e40000.host1x:nvdla0/cur_freq", "1600000000\n")  # not the GPU
    return root


def test_sysfs_clocks_locked(tmp_path):
    root = fake_sysfs(tmp_path, {0: (1510400,) * 3, 1: (1510400,) * 3}, (624750000,) * 3)
    state = read_clocks_sysfs(root)
    assert state["locked"] is True
    assert state["gpu"]["node"] == "17000000.ga10b"
    assert list(state["cpus"]) == ["cpu0", "cpu1"]


def test_sysfs_clocks_unlocked_on_a_nano(tmp_path):
    root = fake_sysfs(tmp_path, {0: (102000, 1479000, 1479000)}, (76800000, 921600000, 76800000),
                      gpu_node="57000000.gpu")
    state = read_clocks_sysfs(root)
    assert state["locked"] is False
    assert state["not_locked"] == ["cpu0 min 102000 max 1479000 current 1479000",
                                   "GPU min 76800000 max 921600000 current 76800000"]


def test_sysfs_of_a_non_jetson_is_undecided(tmp_path):
    assert read_clocks_sysfs(tmp_path)["locked"] is None


# -- jtop --------------------------------------------------------------------------------------------------

class FakeJtop:
    """What jtop's `jtop` object exposes (memory in kB, power in mW, GPU load in %), for the converter and the
    sampler's thread; `ok()` paces the loop like jtop's interval does."""

    def __init__(self, interval=0.5, ticks=3):
        self.interval, self.ticks, self.started, self.closed = interval, ticks, False, False
        self.memory = {"RAM": {"tot": 7800832, "used": 2940928, "free": 4000000, "shared": 120000}}
        self.power = {"rail": {"VDD_IN": {"volt": 5000, "curr": 1482, "power": 7412, "avg": 6980},
                               "VDD_SOC": {"volt": 5000, "curr": 380, "power": 1904, "avg": 1862}},
                      "tot": {"power": 9316}}
        self.stats = {"GPU": 87.0, "RAM": 0.377}

    def start(self):
        self.started = True

    def ok(self):
        if self.ticks <= 0:
            return False
        self.ticks -= 1
        return True

    def close(self):
        self.closed = True


def test_sample_from_jtop_has_the_tegrastats_shape():
    s = sample_from_jtop(FakeJtop())
    assert s["ram_used_mb"] == pytest.approx(2872.0) and s["ram_total_mb"] == pytest.approx(7618.0)
    assert s["gpu_load_pct"] == 87.0
    assert s["power_mw"] == {"VDD_IN": 7412.0, "VDD_SOC": 1904.0}
    assert set(s) == set(parse_tegrastats_line(ORIN_NANO_JP6))


def test_jtop_sampler_collects_until_stopped_and_closes():
    made = []

    def factory(interval):
        made.append(FakeJtop(interval, ticks=3))
        return made[-1]

    sampler = JtopSampler(250, jtop_cls=factory)
    sampler.start()
    samples = sampler.stop()
    assert made[0].interval == 0.25 and made[0].started and made[0].closed
    assert len(samples) == 3 and samples[0]["gpu_load_pct"] == 87.0


# -- the sampler and the monitor against fake tools ---------------------------------------------------------

def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def fake_jetson(tmp_path, monkeypatch):
    """tegrastats, nvpmodel and jetson_clocks stand-ins on PATH, printing the Orin Nano's real formats."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    lines = tmp_path / "tegrastats.txt"
    lines.write_text(f"{ORIN_NANO_JP6}\n{ORIN_NANO_JP6_USER}\n")
    _tool(bindir, "tegrastats", f'[ "$1" = --interval ] || exit 2\nwhile :; do\n  cat "{lines}"\n'
                                f'  sleep "$(echo "$2" | awk \'{{print $1/1000}}\')"\ndone\n')
    _tool(bindir, "nvpmodel", 'printf "NV Power Mode: 15W\\n0\\n"\n')
    clocks = tmp_path / "clocks.txt"
    clocks.write_text(ORIN_CLOCKS_UNLOCKED)
    _tool(bindir, "jetson_clocks", f'[ "$1" = --show ] && cat "{clocks}"\n')
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(samplers, "jtop_module", lambda: None)
    return clocks


def test_tegrastats_sampler_reads_the_running_tool(fake_jetson):
    import time

    sampler = TegrastatsSampler(50)
    sampler.start()
    time.sleep(0.5)
    samples = sampler.stop()
    assert len(samples) >= 4
    assert {s["gpu_load_pct"] for s in samples} == {87.0, 3.0}
    assert sampler._proc.poll() is not None  # the tool was stopped


def test_monitor_warns_once_and_reports_unlocked_clocks(fake_jetson, caplog):
    import time

    from edgeprune.backends.base.runner import Runner

    class Sleepy(Runner):
        name = "sleepy"

        def available(self):
            return None

        def prepare(self, onnx_path, workdir):
            raise NotImplementedError

        def infer(self, deployed, batch):
            raise NotImplementedError

        def measure_interleaved(self, deployed, warmup, iters, blocks, min_block_s=0.0):
            time.sleep(0.3)
            return ["stats"] * len(deployed)

        def release(self):
            return "released"

    runner = MonitoredRunner(Sleepy(), JetsonMonitor(interval_ms=50))
    with caplog.at_level(logging.WARNING, logger="edgeprune.backends.jetson"):
        assert runner.measure_interleaved([1, 2], 0, 1, 1) == ["stats", "stats"]
        assert runner.measure(1, 0, 1) == "stats"
    assert runner.name == "sleepy" and runner.release() == "released"
    warnings = [r for r in caplog.records if "not locked" in r.getMessage()]
    assert len(warnings) == 1 and "sudo jetson_clocks" in warnings[0].getMessage()
    report = runner.telemetry()
    assert report["available"] is True and report["source"] == "tegrastats" and report["windows"] == 2
    assert report["power_mode"] == {"name": "15W", "id": 0}
    assert report["clocks_locked"] is False and report["clocks"]["source"] == "jetson_clocks --show"
    assert "cpu0 min 115200" in report["warning"]
    assert report["samples"] >= 4 and report["gpu_load_pct"]["max"] == 87.0
    assert set(report["power_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}


def test_monitor_with_locked_clocks_does_not_warn(fake_jetson, caplog):
    fake_jetson.write_text(ORIN_NANO_CLOCKS_LOCKED)
    monitor = JetsonMonitor(interval_ms=50)
    with caplog.at_level(logging.WARNING):
        with monitor.window():
            pass
    report = monitor.report()
    assert report["clocks_locked"] is True and report["warning"] is None
    assert not [r for r in caplog.records if "locked" in r.getMessage()]


def test_state_falls_back_to_sysfs_when_jetson_clocks_gives_nothing(fake_jetson, tmp_path):
    fake_jetson.write_text("")  # as when --show needs root and sudo asks for a password
    root = fake_sysfs(tmp_path / "root", {0: (1510400,) * 3}, (624750000,) * 3)
    state = read_jetson_state(root)
    assert state["clocks"]["source"].startswith("sysfs") and state["clocks"]["locked"] is True
    assert state["power_mode"]["name"] == "15W"


def test_on_a_host_without_jetson_tools_telemetry_is_unavailable_and_harmless(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(samplers, "TEGRASTATS_PATHS", ())
    monkeypatch.setattr(samplers, "jtop_module", lambda: None)
    monitor = JetsonMonitor()
    with monitor.window():
        pass
    report = monitor.report()
    assert report["available"] is False and "not a Jetson" in report["reason"]
