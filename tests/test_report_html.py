"""`edgeprune report OUT_DIR`: report.md re-rendered, a self-contained report.html, manifest.json kept valid."""
from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.files import MANIFEST, file_hashes, verify_manifest, write_json
from edgeprune.report import plots
from edgeprune.report.markdown import render_report
from synthetic_reports import make_report, write_artifact

PNG = b"\x89PNG\r\n\x1a\n"


def built_dir(tmp_path, report=None, name="out"):
    """What `edgeprune build` leaves: artifacts, report.json/md and a manifest of all of them."""
    out = write_artifact(tmp_path / name, report or make_report())
    (out / "model.onnx").write_bytes(b"onnx bytes")
    (out / "report.md").write_text("old report\n")
    write_json(out / MANIFEST, {"schema_version": 1, "device": "cpu", "files": file_hashes(out, exclude={MANIFEST})})
    return out


def test_report_writes_html_and_keeps_manifest_valid(tmp_path):
    out = built_dir(tmp_path)
    assert verify_manifest(out) == []
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "manifest.json updated" in res.stdout
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert page.count('<img src="data:image/png;base64,') == 3
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # self-contained: nothing fetched
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").read_text() == render_report(report)
    assert verify_manifest(out) == []
    manifest = json.loads((out / MANIFEST).read_text())
    assert {"report.html", "report.md", "model.onnx", "report.json"} <= set(manifest["files"])
    assert manifest["rewritten"][-1]["files"] == ["report.html", "report.md"]
    assert manifest["device"] == "cpu"  # the rest of the manifest is kept


def test_report_does_not_bless_files_modified_before(tmp_path):
    out = built_dir(tmp_path)
    (out / "model.onnx").write_bytes(b"tampered")
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0
    assert "already differed from manifest.json" in res.stderr and "model.onnx" in res.stderr
    assert verify_manifest(out) == ["model.onnx"]  # still flagged, not re-hashed into agreement


def test_report_without_manifest_and_with_absolute_budget_and_no_accuracy(tmp_path):
    out = write_artifact(tmp_path / "out", make_report(budget="0.5ms", accuracy=None, weights_bytes=None))
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "no manifest.json" in res.stderr
    assert not (out / MANIFEST).exists()
    page = (out / "report.html").read_text()
    assert "0.5ms" in page and page.count("data:image/png;base64,") == 3


def test_report_refuses_a_directory_without_report(tmp_path):
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "has no report.json" in res.stderr
    (tmp_path / "report.json").write_text("{")
    res = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert res.exit_code == 2 and "not valid JSON" in res.stderr


@pytest.mark.parametrize("fn", [plots.latency_accuracy_per_iteration, plots.accuracy_vs_latency,
                                plots.channel_widths])
@pytest.mark.parametrize("budget", ["0.5x", "0.3ms"])
def test_plots_are_png(fn, budget):
    assert fn(make_report(budget=budget)).startswith(PNG)
    assert fn(make_report(budget=budget, accuracy=None)).startswith(PNG)
