"""Issue 12, item 5: `edgeprune report` reads only files inside the artifact directory, whatever the manifest says."""
from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.files import MANIFEST, file_hashes, write_json
from synthetic_reports import make_report, write_artifact


def built(tmp_path):
    out = write_artifact(tmp_path / "out", make_report())
    (out / "model.onnx").write_bytes(b"onnx bytes")
    write_json(out / MANIFEST, {"schema_version": 1, "files": file_hashes(out, exclude={MANIFEST})})
    return out


def refused(res, *needles):
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), res.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("name", ["/etc/hostname", "../../etc/hostname", "../outside.txt", "sub/../../outside.txt"])
def test_manifest_naming_a_path_outside_is_refused(tmp_path, name):
    out = built(tmp_path)
    (tmp_path / "outside.txt").write_text("secret")
    manifest = {"schema_version": 1, "files": {**file_hashes(out, exclude={MANIFEST}), name: {"sha256": "0" * 64}}}
    write_json(out / MANIFEST, manifest)
    refused(CliRunner().invoke(main, ["report", str(out)]), name, "outside")
    assert not (out / "report.html").exists()  # nothing written


def test_symlink_out_of_the_directory_is_refused(tmp_path):
    out = built(tmp_path)
    (tmp_path / "outside.txt").write_text("secret")
    os.remove(out / "model.onnx")
    os.symlink(tmp_path / "outside.txt", out / "model.onnx")
    refused(CliRunner().invoke(main, ["report", str(out)]), "model.onnx", "outside")


def test_report_json_symlinked_outside_is_refused(tmp_path):
    out = built(tmp_path)
    (tmp_path / "elsewhere.json").write_text((out / "report.json").read_text())
    os.remove(out / "report.json")
    os.symlink(tmp_path / "elsewhere.json", out / "report.json")
    refused(CliRunner().invoke(main, ["report", str(out)]), "report.json", "outside")


def test_bad_utf8_and_nesting_in_report_json_are_exit_2(tmp_path):
    out = built(tmp_path)
    (out / "report.json").write_bytes(b'{"iterations": ["\xff"]}')
    refused(CliRunner().invoke(main, ["report", str(out)]), "report.json")
    (out / "report.json").write_text("[" * 200_000 + "]" * 200_000)
    refused(CliRunner().invoke(main, ["report", str(out)]), "report.json")


def test_inside_paths_still_work(tmp_path):
    out = built(tmp_path)
    (out / "sub").mkdir()
    (out / "sub" / "x.bin").write_bytes(b"x")
    write_json(out / MANIFEST, {"schema_version": 1, "files": file_hashes(out, exclude={MANIFEST})})
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
