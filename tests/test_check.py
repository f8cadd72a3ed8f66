"""`edgeprune check`: verdicts on synthetic reports, refusals (exit 2), JUnit/markdown/JSON outputs, --remeasure."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgeprune.cli import main
from edgeprune.errors import ConfigError
from edgeprune.backends.base.stats import PairedRatio, summarize
from edgeprune import check as chk
from synthetic_reports import make_report, write_artifact

FAST = ["--iters", "20", "--blocks", "4", "--warmup", "5"]


def run(*args, env=None):
    return CliRunner().invoke(main, ["check", *map(str, args)], env=env)


def pair(tmp_path, new: dict, base: dict, new_onnx=None, base_onnx=None):
    return (write_artifact(tmp_path / "new", new, new_onnx), write_artifact(tmp_path / "base", base, base_onnx))


def as_json(result) -> dict:
    return json.loads(result.stdout)


# -- verdicts on stored reports ----------------------------------------------------------------------------------

def test_identical_reports_pass(tmp_path):
    new, base = pair(tmp_path, make_report(), make_report())
    res = run(new, base)
    assert res.exit_code == 0, res.output
    assert "pass" in res.stdout
    res = run(new / "report.json", base / "report.json", "--json")  # a report.json path works as well as its dir
    assert res.exit_code == 0
    out = as_json(res)
    assert out["verdict"] == "pass" and out["exit_code"] == 0 and out["mode"] == "stored"
    assert [m["name"] for m in out["metrics"]] == ["latency_p50", "latency_p90", "accuracy", "weights_size", "macs"]
    assert all(m["status"] == "pass" for m in out["metrics"])


def test_clearly_worse_latency_fails(tmp_path):
    new, base = pair(tmp_path, make_report(latency_ms=0.52, spread=0.02), make_report(latency_ms=0.40, spread=0.02))
    res = run(new, base, "--json")
    assert res.exit_code == 1, res.output
    out = as_json(res)
    assert out["verdict"] == "regression"
    p50 = out["metrics"][0]
    assert p50["status"] == "regression" and p50["change_rel"] == pytest.approx(0.30)
    assert out["summary"].startswith("regression: latency p50")
    assert run(new, base).exit_code == 1  # the table path too


def test_latency_increase_within_recorded_spread_passes(tmp_path):
    # +15% is over the 10% threshold but within the 25% that the reports' own blocks disagreed by
    new, base = pair(tmp_path, make_report(latency_ms=0.46, spread=0.25), make_report(latency_ms=0.40, spread=0.05))
    res = run(new, base, "--json")
    assert res.exit_code == 0, res.output
    p50 = as_json(res)["metrics"][0]
    assert p50["status"] == "pass" and "within the recorded spread" in p50["detail"]
    assert p50["noise"] == pytest.approx(0.25, rel=1e-6)


def test_latency_threshold_absolute_and_from_yaml(tmp_path):
    new, base = pair(tmp_path, make_report(latency_ms=0.52), make_report(latency_ms=0.40))
    assert run(new, base, "--max-latency-increase", "0.2ms", "--max-latency-p90-increase", "off").exit_code == 0
    assert run(new, base, "--max-latency-increase", "50us").exit_code == 1
    cfg = tmp_path / "check.yaml"
    cfg.write_text("max_latency_increase: 50%\nmax-latency-p90-increase: 50%\n")
    assert run(new, base, "--config", cfg).exit_code == 0
    assert run(new, base, "--config", cfg, "--max-latency-increase", "10%").exit_code == 1  # flags win
    cfg.write_text("max_latency_increase: 50%\nmax_speed: 3\n")
    res = run(new, base, "--config", cfg)
    assert res.exit_code == 2 and "unknown key(s) max_speed" in res.stderr


def test_accuracy_drop_beyond_threshold_fails(tmp_path):
    new, base = pair(tmp_path, make_report(accuracy=96.0), make_report(accuracy=97.0))
    res = run(new, base, "--json")
    assert res.exit_code == 1
    acc = as_json(res)["metrics"][2]
    assert acc["status"] == "regression" and acc["change"] == pytest.approx(-1.0)
    assert run(new, base, "--max-accuracy-drop", "1.5").exit_code == 0
    new2, base2 = pair(tmp_path / "small", make_report(accuracy=96.7), make_report(accuracy=97.0))
    assert run(new2, base2).exit_code == 0  # 0.3 points is within the 0.5-point default


def test_size_and_macs_regressions(tmp_path):
    new, base = pair(tmp_path, make_report(macs=30_000_000, weights_bytes=400_000), make_report())
    out = as_json(run(new, base, "--json"))
    assert out["verdict"] == "regression"
    status = {m["name"]: m["status"] for m in out["metrics"]}
    assert status == {"latency_p50": "pass", "latency_p90": "pass", "accuracy": "pass", "weights_size": "regression",
                      "macs": "regression"}
    assert run(new, base, "--max-size-increase", "200KB", "--max-macs-increase", "15M").exit_code == 0


def test_accuracy_missing_on_one_side_cannot_compare(tmp_path):
    new, base = pair(tmp_path, make_report(accuracy=None), make_report(accuracy=97.0))
    out = as_json(run(new, base, "--json"))
    assert out["verdict"] == "cannot-compare" and out["exit_code"] == 2
    assert out["metrics"][2]["status"] == "error"
    new, base = pair(tmp_path / "both", make_report(accuracy=None), make_report(accuracy=None))
    out = as_json(run(new, base, "--json"))
    assert out["verdict"] == "pass" and out["metrics"][2]["status"] == "skipped"


# -- refusals: exit 2, never a pass ------------------------------------------------------------------------------

@pytest.mark.parametrize("change, what", [
    ({"device": "jetson-orin-nano"}, "device"),
    ({"runner": "tensorrt"}, "runtime"),
    ({"threads": 2}, "runtime"),
    ({"batch_size": 4}, "batch size"),
    ({"input_shape": (1, 35, 35)}, "input shape"),
])
def test_mismatch_refused_unless_allowed(tmp_path, change, what):
    new, base = pair(tmp_path, make_report(**change), make_report())
    res = run(new, base)
    assert res.exit_code == 2
    assert f"differ in {what}" in res.stderr and "--allow-mismatch" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    res = run(new, base, "--allow-mismatch", "--json")
    assert res.exit_code == 0
    assert any("despite mismatches" in w for w in as_json(res)["warnings"])


def test_precision_mismatch_refused(tmp_path):
    fp16 = make_report()
    fp16["runner"]["build_options"] = {"precision": "fp16"}
    new, base = pair(tmp_path, fp16, make_report())
    res = run(new, base)
    assert res.exit_code == 2 and "precision: new fp16 vs baseline fp32" in res.stderr


@pytest.mark.parametrize("breakage, message", [
    ("missing", "does not exist"),
    ("not-json", "is not valid JSON"),
    ("schema", "schema_version 99"),
    ("no-final", "final.index is missing"),
    ("bad-index", "final.index 7 is not an iteration"),
    ("list", "must hold a JSON object"),
    ("empty-dir", "does not exist (an artifact directory must contain report.json)"),
])
def test_unusable_report_exits_2_with_one_line(tmp_path, breakage, message):
    good = write_artifact(tmp_path / "base", make_report())
    bad = tmp_path / "new"
    bad.mkdir()
    path = bad / "report.json"
    if breakage == "not-json":
        path.write_text('{"schema_version": 1, "final": ')
    elif breakage == "schema":
        path.write_text(json.dumps(make_report(schema_version=99)))
    elif breakage == "no-final":
        r = make_report()
        del r["final"]
        path.write_text(json.dumps(r))
    elif breakage == "bad-index":
        r = make_report()
        r["final"]["index"] = 7
        path.write_text(json.dumps(r))
    elif breakage == "list":
        path.write_text("[]")
    target = bad if breakage == "empty-dir" else (tmp_path / "nope.json" if breakage == "missing" else path)
    junit = tmp_path / "check.xml"
    md = tmp_path / "check.md"
    for args in ((target, good), (good, target)):  # broken NEW or broken BASELINE
        res = run(*args, "--junit", junit, "--markdown", md)
        assert res.exit_code == 2, res.output
        assert message in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1 and res.stderr.startswith("edgeprune: error: cannot compare")
        suite = ET.parse(junit).getroot().find("testsuite")
        assert suite.get("errors") == "1" and suite.find("testcase/error") is not None
        assert "CANNOT COMPARE" in md.read_text()


def test_bad_threshold_is_a_clear_error(tmp_path):
    new, base = pair(tmp_path, make_report(), make_report())
    for flag, value, text in [("--max-latency-increase", "0.1", "write 10% or 0.05ms"),
                              ("--max-accuracy-drop", "1%", "accuracy thresholds are in points"),
                              ("--max-size-increase", "0.1", "write 10% for a fraction"),
                              ("--max-macs-increase", "lots", "is malformed")]:
        res = run(new, base, flag, value)
        assert res.exit_code == 2 and text in res.stderr, (flag, res.stderr)


def test_parse_threshold_units():
    m = {x.name: x for x in chk.METRICS}
    assert chk.parse_threshold(m["latency_p50"], "10%").allowed(2.0) == pytest.approx(0.2)
    assert chk.parse_threshold(m["latency_p50"], "500us").allowed(2.0) == pytest.approx(0.5)
    assert chk.parse_threshold(m["accuracy"], 0.5).allowed(97.0) == 0.5
    assert chk.parse_threshold(m["accuracy"], "1pt").allowed(97.0) == 1.0
    assert chk.parse_threshold(m["weights_size"], "1MiB").allowed(10) == 1024 ** 2
    assert chk.parse_threshold(m["macs"], "2M").allowed(10) == 2e6
    assert chk.parse_threshold(m["macs"], False).kind == "off"  # YAML's bare `off`
    with pytest.raises(ConfigError):
        chk.parse_threshold(m["latency_p50"], "fast")


# -- outputs -----------------------------------------------------------------------------------------------------

def test_junit_one_testcase_per_metric_with_failures(tmp_path):
    new, base = pair(tmp_path, make_report(latency_ms=0.60, accuracy=95.0), make_report(latency_ms=0.40))
    junit = tmp_path / "out" / "check.xml"
    res = run(new, base, "--junit", junit)
    assert res.exit_code == 1
    root = ET.parse(junit).getroot()
    suite = root.find("testsuite")
    cases = {c.get("name"): c for c in suite.findall("testcase")}
    assert list(cases) == ["latency_p50", "latency_p90", "accuracy", "weights_size", "macs"]
    failed = {name for name, c in cases.items() if c.find("failure") is not None}
    assert failed == {"latency_p50", "latency_p90", "accuracy"}
    assert suite.get("tests") == "5" and suite.get("failures") == "3" and suite.get("errors") == "0"
    assert "+50.0%" in cases["latency_p50"].find("failure").get("message")


def test_markdown_written_and_appended_to_step_summary(tmp_path):
    new, base = pair(tmp_path, make_report(latency_ms=0.60), make_report(latency_ms=0.40))
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    md = tmp_path / "check.md"
    res = run(new, base, "--markdown", md, env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == 1
    text = md.read_text()
    assert text.startswith("### edgeprune check: REGRESSION")
    assert "| latency p50 |" in text and "**REGRESSION**" in text
    assert summary.read_text() == "earlier step\n" + text + "\n"
    res = run(new, base, "--markdown", md, "--max-latency-increase", "off", "--max-latency-p90-increase", "off",
              env={"GITHUB_STEP_SUMMARY": str(summary)})
    assert res.exit_code == 0
    assert summary.read_text().count("### edgeprune check") == 2


# -- the --remeasure decision rule, on scripted measurements -----------------------------------------------------

def test_decide_paired_rule():
    L = 1.10
    assert chk.decide_paired(PairedRatio(1.30, 1.20, 1.40, 10), L, last=False) == "regression"
    assert chk.decide_paired(PairedRatio(1.00, 0.97, 1.04, 10), L, last=False) == "pass"
    assert chk.decide_paired(PairedRatio(1.08, 1.02, 1.15, 10), L, last=False) == "uncertain"
    # the second round judges at the threshold, with a significant slow-down
    assert chk.decide_paired(PairedRatio(1.12, 1.05, 1.16, 20), L, last=True) == "regression"
    assert chk.decide_paired(PairedRatio(1.08, 1.02, 1.15, 20), L, last=True) == "pass"
    assert chk.decide_paired(PairedRatio(1.12, 0.98, 1.30, 20), L, last=True) == "pass"  # not even surely slower


class ScriptedRunner:
    """Serves pre-made block medians, one (new, baseline) pair per measure_interleaved call, in the order asked
    (the check alternates which goes first); records how many pairs each round asked for."""

    def __init__(self, rounds):
        self.pairs = [p for new, base in rounds for p in zip(new, base)]
        self.calls = []

    def available(self):
        return None

    def prepare(self, path, workdir):
        return path.name

    def measure_interleaved(self, deployed, warmup, iters, blocks):
        assert blocks == 1  # each block pair in fresh sessions
        self.calls.append(deployed[0])
        meds = dict(zip(("a", "b"), self.pairs.pop(0)))
        return [summarize([[meds[d]] * 3], warmup) for d in deployed]

    def describe(self):
        return {"runner": "scripted", "threads": 1}


def test_remeasure_second_round_only_when_ambiguous(tmp_path):
    thr = chk.parse_threshold(chk.METRICS[0], "10%")
    base = [1.0] * 6
    clear = ScriptedRunner([([1.3, 1.31, 1.29, 1.3, 1.32, 1.28], base)])
    out = chk.remeasure_latency(clear, tmp_path / "a", tmp_path / "b", thr, 1, 3, 6)
    assert out["verdict"] == "regression" and len(clear.calls) == 6
    assert clear.calls == ["a", "b"] * 3  # the first position alternates
    ambiguous = [1.02, 1.2, 1.05, 1.15, 1.08, 1.12]
    second = [1.13, 1.12, 1.14, 1.11, 1.13, 1.12] * 2
    runner = ScriptedRunner([(ambiguous, base), (second, [1.0] * 12)])
    out = chk.remeasure_latency(runner, tmp_path / "a", tmp_path / "b", thr, 1, 3, 6)
    assert len(runner.calls) == 6 + 12 and [r["verdict"] for r in out["rounds"]] == ["uncertain", "regression"]
    assert out["verdict"] == "regression"
    assert out["rounds"][1]["new"]["block_medians"] == pytest.approx(second)


def test_median_ratio_interval_is_distribution_free():
    from edgeprune.check.remeasure import median_ratio

    r = median_ratio([float(x) for x in range(1, 11)], [1.0] * 10)  # ratios 1..10
    assert (r.ratio, r.low, r.high, r.pairs) == (5.5, 2.0, 9.0, 10)  # [x(2), x(9)]: 97.9% for n = 10
    r = median_ratio([float(x) for x in range(1, 21)], [1.0] * 20)
    assert (r.low, r.high) == (6.0, 15.0)  # [x(6), x(15)]: 95.9% for n = 20
    r = median_ratio([2.0, 4.0, 3.0], [1.0] * 3)
    assert (r.low, r.high) == (2.0, 4.0)  # too few pairs for 95%: the full range
    # coverage for independent pairs whatever their spread: an artifact against itself, simulated
    rng = np.random.default_rng(0)
    hits = sum(r.low <= 1.0 <= r.high for r in
               (median_ratio(np.exp(rng.standard_t(3, 10) * 0.01), [1.0] * 10) for _ in range(2000)))
    assert hits / 2000 >= 0.96


def test_remeasure_refuses_what_it_cannot_time(tmp_path):
    new, base = pair(tmp_path, make_report(), make_report())  # no model.onnx
    res = run(new, base, "--remeasure")
    assert res.exit_code == 2 and "needs NEW's model.onnx" in res.stderr
    trt = make_report(runner="tensorrt")
    (tmp_path / "x.onnx").write_bytes(b"not used")
    new, base = pair(tmp_path / "trt", trt, trt, tmp_path / "x.onnx", tmp_path / "x.onnx")
    res = run(new, base, "--remeasure")
    assert res.exit_code == 2 and "measured with tensorrt" in res.stderr


# -- --remeasure on real ONNX models -----------------------------------------------------------------------------

SHAPE = (3, 64, 64)


def _convnet(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def onnx_pair(tmp_path_factory):
    from edgeprune.export.onnx import export_onnx

    d = tmp_path_factory.mktemp("check-onnx")
    small, big = d / "small.onnx", d / "big.onnx"
    export_onnx(_convnet(8), SHAPE, 1, small)
    export_onnx(_convnet(32), SHAPE, 1, big)  # 4x the channels: about 13x the MACs
    return small, big


def test_remeasure_same_artifact_passes(tmp_path, onnx_pair):
    small, _ = onnx_pair
    art = write_artifact(tmp_path / "a", make_report(input_shape=SHAPE), small)
    # FAST timing (4 blocks of 20 runs) on a loaded 2-core machine can stray past 10% for identical files; the
    # false-alarm rate at the default threshold is benchmarks/check_noise.py's business, not a unit test's.
    res = run(art, art, "--remeasure", "--json", "--max-latency-increase", "50%", "--max-latency-p90-increase", "50%",
              *FAST)
    assert res.exit_code == 0, res.output
    out = as_json(res)
    assert out["mode"] == "remeasured" and out["remeasure"]["runner"]["threads"] == 1
    rd = out["remeasure"]["rounds"][-1]
    assert rd["new"]["blocks"] == rd["blocks"] and len(rd["new"]["block_medians"]) == rd["blocks"]
    assert 0.7 < rd["ratio"]["ratio"] < 1.3
    assert out["metrics"][0]["source"].startswith("re-measured here")


def test_remeasure_much_bigger_model_fails(tmp_path, onnx_pair):
    small, big = onnx_pair
    # the stored latencies say nothing is wrong; only the re-measurement can see it
    new, base = pair(tmp_path, make_report(input_shape=SHAPE), make_report(input_shape=SHAPE), big, small)
    assert run(new, base, *FAST).exit_code == 0
    junit = tmp_path / "check.xml"
    res = run(new, base, "--remeasure", "--json", "--junit", junit, *FAST)
    assert res.exit_code == 1, res.output
    out = as_json(res)
    p50 = out["metrics"][0]
    assert p50["status"] == "regression" and p50["paired_ratio"]["low"] > 1.5
    assert p50["stored"]["new"] == pytest.approx(0.40)
    assert ET.parse(junit).getroot().find("testsuite/testcase[@name='latency_p50']/failure") is not None
    assert np.isfinite(out["remeasure"]["limit_ratio"])


def test_a_schema_1_report_is_read_with_the_runners_one_precision():
    from edgeprune.report.schema import SCHEMA_VERSION, migrate

    old = make_report()
    old["runner"]["build_options"] = {"precision": "fp16"}
    new = migrate(old)
    assert old["schema_version"] == 1 and new["schema_version"] == SCHEMA_VERSION == 2
    assert {it["precision"] for it in new["iterations"]} == {"fp16"} and new["final"]["precision"] == "fp16"
    assert new["final"]["quantization"] is None and "precision" not in old["final"]  # a copy, not the file


def test_the_shipped_graphs_precision_is_what_check_compares(tmp_path):
    int8 = make_report(schema_version=2, precision=None)
    int8["final"]["precision"] = "int8"
    base = make_report(schema_version=2, precision=None)
    base["final"]["precision"] = "fp32"
    for r in (int8, base):
        for it in r["iterations"]:
            it.update(precision="fp32", quantization=None, precision_parity=None)
    new, old = pair(tmp_path, int8, base)
    res = run(new, old)
    assert res.exit_code == 2 and "precision: new int8 vs baseline fp32" in res.stderr
