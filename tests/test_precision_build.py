"""Precision in the build (pipeline/precision.py): which precisions a build searches, bad input refused before any
measuring, and (slow) an `auto` build whose shipped graph carries the precision the report names."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

import edgeprune
from edgeprune import BuildConfig
from edgeprune.cli import main
from edgeprune.errors import BudgetNotMet, ConfigError
from edgeprune.export import precision as export_precision

pytestmark = pytest.mark.usefixtures("edgeprune_cache")

FAST = dict(model="resnet20", input_shape=(1, 16, 16), train_epochs=1, finetune_epochs=1, max_iterations=2,
            measure_blocks=2, measure_iters=20)


def device_yaml(tmp_path: Path, precisions: str) -> Path:
    path = tmp_path / "fp32only.yaml"
    path.write_text(f"name: fp32only\ndescription: test\nkind: host\nrunner: onnxruntime\n"
                    f"providers: [CPUExecutionProvider]\nprecisions: [{precisions}]\ndefault_precision: fp32\n"
                    "memory_mb: null\nchannel_multiple: 8\nthreads: 1\n")
    return path


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(main, ["build", "-q", *args])
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error:"), result.stderr
    return lines[0]


def test_a_precision_the_device_does_not_list_is_refused(tmp_path):
    line = one_line_error(["--device", str(device_yaml(tmp_path, "fp32")), "--precision", "int8",
                           "--out", str(tmp_path / "out")])
    assert "lists precisions fp32, not int8" in line and "--precision auto" in line
    assert not (tmp_path / "out").exists()


def test_an_unknown_precision_or_calibration_method_is_one_line(tmp_path):
    assert "'fp8' is not one of" in one_line_error(["--precision", "fp8", "--out", str(tmp_path / "o")])
    assert "'mse' is not one of" in one_line_error(["--calibration-method", "mse", "--out", str(tmp_path / "o")])
    with pytest.raises(ConfigError, match="calibration method 'mse' is unknown"):
        BuildConfig(calibration_method="mse")
    with pytest.raises(ConfigError, match="calibration-images must be at least 1"):
        BuildConfig(calibration_images=0)


def test_a_calibration_set_smaller_than_one_batch_is_refused_before_measuring(tmp_path):
    line = one_line_error(["--model", "resnet20", "--input-shape", "1,16,16", "--train-epochs", "1",
                           "--precision", "int8", "--calibration-images", "1", "--batch-size", "4",
                           "--out", str(tmp_path / "out")])
    assert "int8 calibration needs at least one batch of 4 training images, got 1" in line
    assert not (tmp_path / "out").exists()


def _carries(path: Path) -> str:
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops:
        return "int8"
    if any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer):
        return "fp16"
    return "fp32"


@pytest.mark.slow
def test_auto_searches_every_precision_and_ships_the_graph_it_names(tmp_path):
    out = tmp_path / "out"
    try:
        result = edgeprune.build(BuildConfig(**FAST, precision="auto", out=str(out)))
        report = result.report
    except BudgetNotMet as exc:  # the figures decide; the report is complete either way
        report = exc.result.report
    p, final, its = report["precision"], report["final"], report["iterations"]
    assert p["requested"] == "auto" and set(p["searched"]) | set(p["dropped"]) == {"fp32", "fp16", "int8"}
    assert "fp32" in p["searched"] and not set(p["searched"]) & set(p["dropped"])
    # every reduced precision was first tried unpruned, measured side by side with fp32
    for prec in ("fp16", "int8"):
        probe = next(it for it in its if it["precision"] == prec)
        assert probe["ratio"] == 0.0 and probe["latency_ratio"]["ratio"] > 0
        assert probe["precision_parity"]["samples"] > 0 and probe["accuracy"] is not None
        if prec in p["dropped"]:  # dropped with the figure that ruled it out
            assert probe["dropped"] == p["dropped"][prec]
            assert f"{probe['latency_ratio']['ratio']:.3f}x" in probe["dropped"] or "parity" in probe["dropped"]
        else:
            assert any(it["precision"] == prec and it["ratio"] > 0 for it in its)
    # the shipped model.onnx carries the precision the report names, and its accuracy was read on that graph
    assert _carries(out / "model.onnx") == final["precision"]
    if final["precision"] == "int8":
        q = final["quantization"]
        assert q["method"] == "minmax" and q["target"] == "onnxruntime" and q["calibration_images"] == 256
        assert final["precision_parity"]["ok"] is True
    shipped = its[final["index"]]
    assert shipped["selected"] and shipped["precision"] == final["precision"]
    assert "## Precision" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["schema_version"] == 2


@pytest.mark.slow
def test_an_int8_graph_off_in_parity_is_a_budget_miss_that_names_it(tmp_path, monkeypatch):
    # a tolerance no int8 graph can meet: every int8 attempt fails parity, even after the cheap fixes
    monkeypatch.setitem(export_precision.TOLERANCES, "int8", export_precision.Tolerance(1.0, 0.0))
    with pytest.raises(BudgetNotMet, match="reduced-precision parity with fp32 not met") as info:
        edgeprune.build(BuildConfig(**{**FAST, "max_iterations": 1}, precision="int8", out=str(tmp_path / "o")))
    report = info.value.result.report
    assert report["budget_met"] is False and report["final"]["precision"] == "int8"
    assert report["final"]["precision_parity"]["ok"] is False


def test_report_md_and_html_show_the_precision_search_with_its_figures():
    from synthetic_reports import make_report

    from edgeprune.report.html import render_html
    from edgeprune.report.markdown import render_report
    from edgeprune.report.schema import migrate

    r = migrate(make_report())
    r["iterations"][1].update(precision="int8", quantization={
        "library": "onnxruntime.quantization", "library_version": "1.31.1", "method": "entropy",
        "calibration_images": 128, "target": "onnxruntime", "excluded_nodes": ["/conv1/Conv"], "kept_fp32_ops": []},
        precision_parity={"samples": 240, "top1_agreement": 0.975, "max_abs_error_scaled": 0.12,
                          "tolerance": {"min_top1_agreement": 0.95, "max_abs_error": 0.25}, "ok": True})
    r["final"].update({k: r["iterations"][1][k] for k in ("precision", "quantization", "precision_parity")})
    r["precision"] = {"requested": "auto", "searched": ["fp32", "int8"], "left_out": {},
                      "dropped": {"fp16": "fp16 measured 1.250x the fp32 latency on onnxruntime: slower"}}
    md = render_report(r)
    assert "shipped: **int8**" in md and "fp16 dropped: fp16 measured 1.250x" in md
    assert "entropy calibration on 128 training images" in md and "1 node(s) left fp32" in md
    assert "top-1 agreement 0.975 (at least 0.95)" in md
    assert "| 1 | 0.450 | int8 |" in md
    html = render_html(r)
    assert "<h2>Precision</h2>" in html and "shipped: int8." in html and "<td class=\"n\">int8</td>" in html
