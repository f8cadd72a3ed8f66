"""Issue 12, items 9-11: `edgeprune check` never passes what it cannot trust and never crashes into exit 1.

Exit 1 means "regression" to CI, so a crash must not produce it: every failure to compare is exit 2 with one line.
"""
from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.files import MANIFEST, file_hashes, write_json
from synthetic_reports import make_report, write_artifact


def run(*args):
    return CliRunner().invoke(main, ["check", *map(str, args)])


def one_line_exit_2(res, *needles):
    assert res.exit_code == 2, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def with_manifest(directory):
    write_json(directory / MANIFEST, {"schema_version": 1, "files": file_hashes(directory, exclude={MANIFEST})})
    return directory


# -- item 9: NaN and Infinity are not figures ---------------------------------------------------------------------

def test_ten_times_slower_with_nan_spread_is_refused(tmp_path):
    new = make_report(latency_ms=4.0)
    new["iterations"][new["final"]["index"]]["latency"]["spread"] = float("nan")
    n, b = write_artifact(tmp_path / "new", new), write_artifact(tmp_path / "base", make_report())
    assert "NaN" in (n / "report.json").read_text()  # what Python's json writes
    one_line_exit_2(run(n, b), "latency.spread", "NaN")


@pytest.mark.parametrize("field, value", [
    ("final.accuracy", float("nan")), ("final.macs", float("nan")), ("final.memory.weights_bytes", float("nan")),
    ("final.macs", float("inf")), ("final.accuracy", float("-inf")),
])
def test_non_finite_plain_figures_are_refused(tmp_path, field, value):
    bad = make_report()
    node = bad
    *parents, last = field.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    n, b = write_artifact(tmp_path / "new", bad), write_artifact(tmp_path / "base", make_report())
    one_line_exit_2(run(n, b), field)
    one_line_exit_2(run(b, n), field)  # a broken baseline is no pass either


def test_non_finite_block_median_or_p90_is_refused(tmp_path):
    for key, value in (("p90", float("inf")), ("block_medians", [0.4, float("nan"), 0.41])):
        bad = make_report()
        bad["iterations"][bad["final"]["index"]]["latency"][key] = value
        n, b = write_artifact(tmp_path / key / "new", bad), write_artifact(tmp_path / key / "base", make_report())
        one_line_exit_2(run(n, b), f"latency.{key}")


# -- item 10: the stored mode checks the artifact's bytes against its manifest ------------------------------------

def test_truncated_model_onnx_is_refused(tmp_path):
    b = with_manifest(write_artifact(tmp_path / "base", make_report()))
    n = write_artifact(tmp_path / "new", make_report())
    (n / "model.onnx").write_bytes(b"x" * 1000)
    with_manifest(n)
    assert run(n, b).exit_code == 0  # intact: compared
    (n / "model.onnx").write_bytes(b"x" * 10)  # truncated after the build
    one_line_exit_2(run(n, b), "model.onnx", "manifest")
    one_line_exit_2(run(b, n), "model.onnx", "manifest")


def test_edited_report_json_is_refused(tmp_path):
    b = with_manifest(write_artifact(tmp_path / "base", make_report()))
    n = with_manifest(write_artifact(tmp_path / "new", make_report()))
    (n / "report.json").write_text(json.dumps(make_report(latency_ms=0.30)))  # hand-"improved" numbers
    one_line_exit_2(run(n / "report.json", b), "report.json", "manifest")


def test_manifest_naming_a_file_outside_is_refused(tmp_path):
    b = with_manifest(write_artifact(tmp_path / "base", make_report()))
    n = write_artifact(tmp_path / "new", make_report())
    (tmp_path / "secret").write_text("not an artifact")
    write_json(n / MANIFEST, {"files": {"../secret": {"sha256": "0" * 64}}})
    one_line_exit_2(run(n, b), "../secret", "outside")


# -- item 11: crashes are exit 2, one line --------------------------------------------------------------------------

def test_deeply_nested_json_is_exit_2(tmp_path):
    b = write_artifact(tmp_path / "base", make_report())
    n = tmp_path / "new"
    n.mkdir()
    (n / "report.json").write_text("[" * 200_000 + "]" * 200_000)
    one_line_exit_2(run(n, b), "report.json")


def test_bad_utf8_is_exit_2(tmp_path):
    b = write_artifact(tmp_path / "base", make_report())
    n = tmp_path / "new"
    n.mkdir()
    (n / "report.json").write_bytes(b'{"schema_version": 1, "x": "\xff\xfe"}')
    one_line_exit_2(run(n, b), "report.json")


@pytest.mark.parametrize("path, value", [
    ("versions", [1, 2]), ("host", "a host"), ("data", 3), ("runner.providers", 7),
    ("iterations.FINAL.latency.block_medians", ["a", "b"]), ("tool", [1]), ("model", {"input_shape": [1, 32, 32],
                                                                                      "name": {"x": 1}}),
    ("config", {"batch_size": 1, "extra": float("nan")}),
])
def test_wrong_types_are_exit_2_not_a_crash(tmp_path, path, value):
    bad = make_report()
    node = bad
    *parents, last = path.split(".")
    for key in parents:
        node = node[bad["final"]["index"]] if key == "FINAL" else node[key]
    node[last] = value
    n, b = write_artifact(tmp_path / "new", bad), write_artifact(tmp_path / "base", make_report())
    for args in ((n, b), (b, n)):
        res = run(*args)
        assert res.exit_code in (0, 2), (path, res.output, res.exception)
        if res.exit_code == 2:
            one_line_exit_2(res)


def test_corrupt_model_onnx_under_remeasure_is_exit_2(tmp_path):
    pytest.importorskip("onnxruntime")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07this is not a protobuf" * 10)
    n = write_artifact(tmp_path / "new", make_report(), corrupt)
    b = write_artifact(tmp_path / "base", make_report(), corrupt)
    one_line_exit_2(run(n, b, "--remeasure", "--iters", "5", "--blocks", "2", "--warmup", "1"), "model.onnx")


def test_config_overflow_is_exit_2(tmp_path):
    b = write_artifact(tmp_path / "base", make_report())
    cfg = tmp_path / "check.yaml"
    cfg.write_text("blocks: .inf\n")
    one_line_exit_2(run(b, b, "--config", cfg), "blocks")
