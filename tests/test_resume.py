"""--resume (pipeline/resume.py): a build killed mid-way continues from its last finished attempt and ships what an
uninterrupted build ships; a missing, corrupt or mismatched checkpoint is one line and exit 2."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeprune.cli import main
from edgeprune.pipeline.resume import checkpoint_dir

pytestmark = pytest.mark.usefixtures("edgeprune_cache")

# accuracy-critical: every decision follows accuracy, which is deterministic, not latency, which is noisy
ARGS = ["--model", "resnet20", "--input-shape", "1,16,16", "--train-epochs", "1", "--finetune-epochs", "1",
        "--max-accuracy-drop", "3", "--max-iterations", "5", "--measure-blocks", "2", "--measure-iters", "20", "-q"]


def cli(*args: str):
    return CliRunner().invoke(main, ["build", "-q", *args])


def one_line(result, contains: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and contains in lines[0], result.stderr


def test_resume_without_a_checkpoint_is_one_line(tmp_path):
    one_line(cli("--resume", "--out", str(tmp_path / "out")), "no checkpoint of an interrupted build")


def test_a_corrupt_checkpoint_is_one_line(tmp_path):
    out = tmp_path / "out"
    ckpt = checkpoint_dir(out)
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"format": 1, "attempts": ')
    one_line(cli("--resume", "--out", str(out)), "is corrupt")
    assert not out.exists()


def test_a_changed_config_is_refused_naming_what_changed(tmp_path):
    out = tmp_path / "out"
    ckpt = checkpoint_dir(out)
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"format": 1, "config_hash": "x", "attempts": [],
                                                 "config": {"seed": 1, "model": "resnet20"}}))
    result = cli("--resume", "--seed", "0", "--out", str(out))
    one_line(result, "the config changed since the interrupted build")
    assert "seed" in result.stderr


@pytest.mark.slow
def test_a_build_killed_after_its_second_attempt_resumes_to_the_same_bytes(tmp_path, edgeprune_cache):
    env = {**os.environ, "EDGEPRUNE_CACHE": str(edgeprune_cache)}
    whole = tmp_path / "whole"
    subprocess.run([sys.executable, "-m", "edgeprune", "build", *ARGS, "--out", str(whole)], env=env, check=True,
                   timeout=600)
    assert not checkpoint_dir(whole).exists()  # a finished build leaves no checkpoint
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "edgeprune", "build", *ARGS, "--out", str(cut)], env=env)
    state = checkpoint_dir(cut) / "state.json"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        try:
            if len(json.loads(state.read_text())["attempts"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed: give it more attempts"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not cut.exists()
    finished = len(json.loads(state.read_text())["attempts"])
    resumed = subprocess.run([sys.executable, "-m", "edgeprune", "build", *ARGS, "--resume", "--out", str(cut)],
                             env=env, timeout=600, capture_output=True, text=True)
    assert resumed.returncode in (0, 3), resumed.stderr
    assert (cut / "model.onnx").read_bytes() == (whole / "model.onnx").read_bytes()
    a = json.loads((whole / "report.json").read_text())
    b = json.loads((cut / "report.json").read_text())
    assert [it["ratio"] for it in a["iterations"]] == [it["ratio"] for it in b["iterations"]]
    assert [it["accuracy"] for it in a["iterations"]] == [it["accuracy"] for it in b["iterations"]]
    # the attempts before the kill were restored, not run again: their timings are the first run's
    assert finished >= 2 and not checkpoint_dir(cut).exists()
