"""The command line: devices, profile, and build's output, errors and exit codes (click's CliRunner, and the
installed entry point in a subprocess where the real process matters)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.targets.devices import read_jetson_model

pytestmark = pytest.mark.usefixtures("edgeprune_cache")

DEVICES = ["cpu", "x86-cuda", "jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin", "jetson-xavier-nx"]
FAST = ["--input-shape", "1,16,16", "--train-epochs", "1", "--finetune-epochs", "0", "--max-iterations", "2",
        "--measure-blocks", "2", "--measure-iters", "20"]
ENTRY_POINT = Path(sys.executable).with_name("edgeprune")
on_jetson = pytest.mark.skipif(read_jetson_model() is not None, reason="this host is a Jetson")


def invoke(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("edgeprune: error:")]


def assert_one_line_error(result, code: int = 2, contains: str = "") -> str:
    assert result.exit_code == code, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("edgeprune: error: ")
    assert contains in lines[0]
    assert "Traceback" not in result.output
    return lines[0]


# -- devices and profile -----------------------------------------------------------------------------------------

def test_devices_lists_all_six_devices():
    result = invoke("devices", env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    rows = result.stdout.splitlines()[1:]  # CliRunner is no terminal: one tab-separated device a line
    names = [row.split("\t")[0] for row in rows]
    assert sorted(names) == sorted(DEVICES)
    assert "onnxruntime" in result.stdout and "tensorrt" in result.stdout


def test_devices_piped_prints_every_device_name_in_full():
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.run([str(ENTRY_POINT), "devices"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for name in DEVICES:
        assert name in proc.stdout


def test_profile_cpu_is_measurable():
    result = invoke("profile", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "measurable here: yes" in result.stdout
    assert "device cpu:" in result.stdout
    assert "onnxruntime" in result.stdout


@on_jetson
def test_profile_jetson_is_not_measurable_here_and_says_why():
    result = invoke("profile", "--device", "jetson-orin-nano")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.stdout.splitlines() if line.startswith("measurable here:"))
    assert line.startswith("measurable here: no: ")
    assert "Jetson" in line[len("measurable here: no: "):]


def test_profile_json_is_valid_json():
    result = invoke("profile", "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["measurable_here"] is True and data["reason"] is None
    assert data["device"]["name"] == "cpu" and data["device"]["runner"] == "onnxruntime"
    assert isinstance(data["device"]["channel_multiple"], int)  # "auto" resolved
    assert data["host"]["cpu_cores"] >= 1 and "CPUExecutionProvider" in data["host"]["ort_providers"]


@on_jetson
def test_profile_json_for_a_jetson_gives_the_reason():
    data = json.loads(invoke("profile", "--device", "jetson-orin-nano", "--json").stdout)
    assert data["measurable_here"] is False
    assert isinstance(data["reason"], str) and data["reason"]
    assert data["device"]["kind"] == "jetson"


def test_profile_unknown_device_is_a_one_line_error():
    assert_one_line_error(invoke("profile", "--device", "no-such-device"), contains="no-such-device")


# -- build: bad input -------------------------------------------------------------------------------------------

def _config_with_unknown_key(tmp: Path) -> str:
    path = tmp / "unknown-key.yaml"
    path.write_text("model: resnet20\nlatency_budjet: 0.5x\n")
    return str(path)


def _config_not_yaml(tmp: Path) -> str:
    path = tmp / "broken.yaml"
    path.write_text("model: [resnet20\n")
    return str(path)


def _config_not_a_mapping(tmp: Path) -> str:
    path = tmp / "list.yaml"
    path.write_text("- resnet20\n- 0.5x\n")
    return str(path)


BAD_BUILDS = {
    "unknown model": (lambda tmp: ["--model", "no-such-model"], "no-such-model"),
    "unknown device": (lambda tmp: ["--device", "no-such-device"], "no-such-device"),
    "malformed budget": (lambda tmp: ["--latency-budget", "fast"], "'fast'"),
    "zero budget": (lambda tmp: ["--latency-budget", "0x"], "greater than zero"),
    "both budget flags": (lambda tmp: ["--latency-budget", "0.5x", "--latency-budget-ms", "2"], "not both"),
    "missing config file": (lambda tmp: ["--config", str(tmp / "missing.yaml")], "does not exist"),
    "config with an unknown key": (lambda tmp: ["--config", _config_with_unknown_key(tmp)], "latency_budjet"),
    "config that is not YAML": (lambda tmp: ["--config", _config_not_yaml(tmp)], "not valid YAML"),
    "config that is not a mapping": (lambda tmp: ["--config", _config_not_a_mapping(tmp)], "mapping"),
    "malformed input shape": (lambda tmp: ["--input-shape", "a,b,c"], "input shape"),
    "two-dimensional input shape": (lambda tmp: ["--input-shape", "16,16"], "C,H,W"),
    "zero iterations": (lambda tmp: ["--max-iterations", "0"], "max-iterations"),
    "unknown criterion": (lambda tmp: ["--criterion", "magic"], "magic"),
    "unknown data": (lambda tmp: ["--data", "mnist"], "mnist"),
}


@pytest.mark.parametrize("case", list(BAD_BUILDS))
def test_build_bad_input_is_one_error_line_and_exit_code_2(case, tmp_path):
    args, contains = BAD_BUILDS[case]
    out = tmp_path / "out"
    result = invoke("build", "--quiet", *args(tmp_path), "--out", str(out))
    assert_one_line_error(result, 2, contains)
    assert result.stdout == ""
    assert not out.exists()


@pytest.mark.parametrize("case", ["unknown model", "unknown device", "malformed budget", "both budget flags",
                                  "missing config file", "config with an unknown key"])
def test_build_bad_input_without_quiet_ends_in_one_error_line(case, tmp_path):
    """Without --quiet, progress lines may precede the error on stderr (plain lines when it is not a terminal);
    the error is still one line, the last, with no traceback."""
    args, contains = BAD_BUILDS[case]
    result = invoke("build", *args(tmp_path), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert len(error_lines(result.stderr)) == 1
    assert result.stderr.splitlines()[-1].startswith("edgeprune: error: ")
    assert contains in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_config_values_are_overridden_by_flags(tmp_path):
    config = tmp_path / "build.yaml"
    config.write_text("model: no-such-model\nlatency_budget: 0.5x\n")
    # the flag wins over the file: the error names the flag's model, not the file's
    result = invoke("build", "--quiet", "--config", str(config), "--model", "other-missing-model",
                    "--out", str(tmp_path / "out"))
    assert_one_line_error(result, 2, "other-missing-model")


def test_build_bad_input_through_the_entry_point(tmp_path):
    """The installed script: one line on stderr (no import-time warnings), exit code 2."""
    proc = subprocess.run([str(ENTRY_POINT), "build", "--latency-budget", "fast", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: latency budget 'fast' is malformed")


# -- build: runs ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_build_json_prints_the_report(tmp_path):
    out = tmp_path / "out"
    # three attempts rather than two: one more chance for the budget to be met through timing noise
    args = FAST[:FAST.index("--max-iterations")] + ["--max-iterations", "3"] + FAST[FAST.index("--max-iterations") + 2:]
    result = invoke("build", "--json", *args, "--latency-budget", "0.9x", "--out", str(out))
    assert result.exit_code == 0, (result.stderr, result.exception)
    report = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert report["schema_version"] == 2
    assert report["budget_met"] is True
    assert report["config"]["input_shape"] == [1, 16, 16] and report["config"]["max_iterations"] == 3
    on_disk = json.loads((out / "report.json").read_text())
    assert {k: v for k, v in report.items() if k != "manifest"} == on_disk
    assert error_lines(result.stderr) == []


@pytest.mark.slow
def test_build_quiet_prints_nothing_on_stdout(tmp_path):
    out = tmp_path / "out"
    result = invoke("build", "--quiet", *FAST, "--latency-budget", "2x", "--out", str(out))
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert result.stdout == ""
    assert result.stderr == ""
    assert json.loads((out / "report.json").read_text())["budget_met"] is True


@pytest.mark.slow
def test_build_prints_one_summary_line(tmp_path):
    out = tmp_path / "out"
    result = invoke("build", *FAST, "--latency-budget", "2x", "--out", str(out))
    assert result.exit_code == 0, (result.stderr, result.exception)
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("budget met (latency-sensitive): ")
    assert lines[0].endswith(f"-> {out.resolve()}")
    assert "profile" in result.stderr  # progress goes to stderr, not stdout


@pytest.mark.slow
def test_build_unreachable_budget_exits_3_with_the_report(tmp_path):
    out = tmp_path / "out"
    result = invoke("build", "--json", *FAST, "--latency-budget", "0.01x", "--out", str(out))
    line = assert_one_line_error(result, 3, "latency budget not met")
    assert str(out.resolve()) in line
    report = json.loads(result.stdout)
    assert report["budget_met"] is False and report["final"]["budget_met"] is False
    assert json.loads((out / "report.json").read_text())["budget_met"] is False
