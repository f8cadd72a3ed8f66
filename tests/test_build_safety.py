"""Issue 12, items 6-9 and 12: a build never deletes what it did not write, leaves nothing behind when it is
terminated or killed, commits safely beside other builds, refuses non-finite figures, and ends bad data or a full
disk in one line. Real subprocesses where the process matters (signals, concurrent committers)."""
from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgeprune import BuildConfig
from edgeprune.cli import main
from edgeprune.data import load_data
from edgeprune.errors import ConfigError, OutOfSpace
from edgeprune.files import (StagedOutput, atomic_write_bytes, scratch_dir, sweep_dead_staging, verify_manifest,
                             work_dir)

pytestmark = pytest.mark.usefixtures("edgeprune_cache")

FAST = ["--input-shape", "1,16,16", "--train-epochs", "1", "--finetune-epochs", "0", "--max-iterations", "1",
        "--measure-blocks", "2", "--measure-iters", "20", "--latency-budget", "2x"]
EDGEPRUNE = {"tool": {"name": "edgeprune"}}


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: "), result.stderr
    return lines[0]


def tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def leftovers(parent: Path, name: str = "out") -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(f".{name}."))


def committed(target: Path, token: str = "first", **files: str) -> Path:
    staged = StagedOutput(target)
    for name, text in {"model.onnx": token, **files}.items():
        (staged.path / name).write_text(text)
    return staged.commit({**EDGEPRUNE, "token": token})


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process (barring reuse within the test)
    return proc.pid


# -- item 6: --out replaces only a directory edgeprune wrote ------------------------------------------------------

@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    (root / ".git").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "train.py").write_text("print('mine')\n")
    return root


def test_out_over_a_project_is_refused_even_with_force(project, monkeypatch):
    before = tree(project)
    assert "--force" in one_line_error(invoke("build", "-q", "--out", str(project)))
    line = one_line_error(invoke("build", "-q", "--out", str(project), "--force"))
    assert ".git" in line
    monkeypatch.chdir(project)
    one_line_error(invoke("build", "-q", "--out", ".", "--force"))
    assert tree(project) == before and leftovers(project.parent, "project") == []


def test_out_holding_files_edgeprune_did_not_write_needs_force(tmp_path):
    mine = tmp_path / "out"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert "--force" in one_line_error(invoke("build", "-q", "--out", str(mine)))
    assert tree(mine) == {"notes.txt": b"keep me"} and leftovers(tmp_path) == []
    with pytest.raises(ConfigError, match="--force"):
        StagedOutput(mine)
    committed_by_force = StagedOutput(mine, force=True)
    (committed_by_force.path / "model.onnx").write_text("new")
    committed_by_force.commit(EDGEPRUNE)
    assert sorted(tree(mine)) == ["manifest.json", "model.onnx"] and leftovers(tmp_path) == []


def test_an_edgeprune_output_is_replaced_but_not_once_a_user_file_is_added(tmp_path):
    out = committed(tmp_path / "out", "first")
    committed(out, "second")
    assert tree(out)["model.onnx"] == b"second" and verify_manifest(out) == []
    (out / "mine.txt").write_text("added by hand")
    with pytest.raises(ConfigError, match="mine.txt"):
        StagedOutput(out)
    assert (out / "mine.txt").read_text() == "added by hand" and leftovers(tmp_path) == []


# -- item 7: SIGTERM like SIGINT; a killed build's staging swept by the next ------------------------------------

# The real CLI in a real process, held mid-build (after the staging and scratch directories exist, at the model
# stage) until the test signals it.
PAUSED_BUILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import edgeprune.pipeline.stages as stages

    def paused(*args, **kwargs):
        Path(sys.argv[1]).write_text("mid-build")
        time.sleep(600)

    stages.model_stage = paused
    from edgeprune.cli import main
    main(sys.argv[2:], prog_name="edgeprune")
""")


def start_paused_build(tmp_path: Path, out: Path, scratch: Path) -> subprocess.Popen:
    marker = tmp_path / "mid-build"
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen([sys.executable, "-c", PAUSED_BUILD, str(marker), "build", "--quiet", "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # a guard against hanging, not a measurement
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the build never reached the model stage"
        time.sleep(0.05)
    return proc


@pytest.fixture
def scratch(tmp_path):
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def staging(out: Path, scratch: Path) -> list[str]:
    return leftovers(out.parent) + sorted(p.name for p in scratch.iterdir() if p.name.startswith("edgeprune-work-"))


def test_sigterm_mid_build_is_one_line_and_leaves_nothing_behind(tmp_path, scratch):
    out = committed(tmp_path / "out", "previous")
    before = tree(out)
    proc = start_paused_build(tmp_path, out, scratch)
    assert len(staging(out, scratch)) == 2  # the build's staging and scratch directories exist now
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert stderr.splitlines() == [line for line in stderr.splitlines() if "terminated (SIGTERM)" in line] != []
    assert staging(out, scratch) == [] and tree(out) == before


def test_a_killed_builds_staging_is_swept_by_the_next_build(tmp_path, scratch, monkeypatch):
    out = tmp_path / "out"
    proc = start_paused_build(tmp_path, out, scratch)
    proc.kill()
    proc.communicate()
    stale = staging(out, scratch)
    assert len(stale) == 2 and all(str(proc.pid) in name for name in stale)
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    live = StagedOutput(out)  # what the next build does first
    scratch_dir = work_dir()
    assert staging(out, scratch) == sorted([live.path.name, scratch_dir.name])
    live.discard()


def test_scratch_folders_of_killed_processes_are_swept_and_a_live_ones_kept(tmp_path, monkeypatch):
    """The quantizer's, trtexec's, check's and the ssh socket's scratch folders (files.scratch_dir): one a SIGKILL
    left behind is removed by the next use of its prefix; one of a running process, or another prefix, is not."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = tmp_path / f"edgeprune-int8-{dead_pid()}-abc"
    alive = tmp_path / f"edgeprune-int8-{os.getppid()}-abc"
    other = tmp_path / f"edgeprune-check-{dead_pid()}-abc"
    for p in (dead, alive, other):
        (p / "model.onnx").parent.mkdir()
        (p / "model.onnx").write_bytes(b"x")
    with scratch_dir("edgeprune-int8-") as mine:
        assert mine.is_dir() and mine.name.startswith(f"edgeprune-int8-{os.getpid()}-")
        assert not dead.exists() and alive.is_dir() and other.is_dir()
    assert not mine.exists()


@pytest.mark.slow
def test_sigkill_mid_build_then_a_successful_rebuild_leaves_no_stale_directories(tmp_path, scratch, monkeypatch):
    out = tmp_path / "out"
    proc = start_paused_build(tmp_path, out, scratch)
    proc.kill()
    proc.communicate()
    assert len(staging(out, scratch)) == 2
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    result = invoke("build", "-q", *FAST, "--out", str(out))
    assert result.exit_code == 0, (result.output, result.exception)
    assert staging(out, scratch) == [] and verify_manifest(out) == []


def test_a_commit_killed_between_its_renames_gets_the_previous_output_back(tmp_path):
    out = committed(tmp_path / "out", "previous")
    before = tree(out)
    half_swapped = tmp_path / f".out.old-{dead_pid()}-x"
    half_swapped.mkdir()
    os.replace(out, half_swapped / "previous")
    sweep_dead_staging(out)
    assert tree(out) == before and leftovers(tmp_path) == []


# -- item 8: concurrent commits to one --out --------------------------------------------------------------------

COMMITTER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from edgeprune.files import StagedOutput

    out, tag, n, go = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
    Path(str(go) + "." + tag).touch()
    while not go.exists():  # start together, so that the commits overlap
        time.sleep(0.01)
    for i in range(n):
        staged = StagedOutput(out)
        token = f"{tag}-{i}"
        for name in ("a.txt", "b.txt"):
            (staged.path / name).write_text(token)
        staged.commit({"tool": {"name": "edgeprune"}, "token": token})
""")


def test_four_processes_committing_to_one_out(tmp_path):
    out, go, n, procs = tmp_path / "out", tmp_path / "go", 300, []
    for tag in "abcd":
        procs.append(subprocess.Popen([sys.executable, "-c", COMMITTER, str(out), tag, str(n), str(go)],
                                      stderr=subprocess.PIPE, text=True))
    while len(list(tmp_path.glob("go.*"))) < len(procs) and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    assert leftovers(tmp_path) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert verify_manifest(out) == [] and sorted(manifest["files"]) == ["a.txt", "b.txt"]
    assert (out / "a.txt").read_text() == (out / "b.txt").read_text() == manifest["token"]
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.txt", "manifest.json"]


# -- item 9: no NaN or infinity anywhere a number is taken ------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {"max_accuracy_drop": float("nan")}, {"max_accuracy_drop": "inf"}, {"memory_budget_mb": float("nan")},
    {"memory_budget_mb": float("inf")}, {"latency_budget": "1e999ms"}, {"latency_budget": "1e999x"},
    {"seed": float("inf")}, {"measure_iters": "nan"}, {"channel_multiple": float("inf")},
], ids=repr)
def test_non_finite_numbers_are_refused(changes):
    with pytest.raises(ConfigError):
        BuildConfig(**changes)


@pytest.mark.parametrize("flag", [["--max-accuracy-drop", "nan"], ["--memory-budget-mb", "inf"],
                                  ["--latency-budget-ms", "inf"], ["--latency-budget-ms", "nan"],
                                  ["--latency-budget", "1e400ms"]], ids=" ".join)
def test_non_finite_flags_are_one_line(flag, tmp_path):
    one_line_error(invoke("build", "-q", *flag, "--out", str(tmp_path / "out")))
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


# -- item 12: bad data and a full disk are one line, and nothing looks complete ---------------------------------

def image_folder(root: Path, images: dict[str, tuple[str, int]]) -> Path:
    """images: 'class/name.png' -> (PIL mode, seed)."""
    from PIL import Image

    for rel, (mode, seed) in images.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        g = torch.Generator().manual_seed(seed)
        bands = len(Image.new(mode, (1, 1)).getbands())
        pixels = torch.randint(0, 255, (8, 8, bands), generator=g, dtype=torch.uint8).squeeze(-1).numpy()
        Image.fromarray(pixels, mode).save(path)
    return root


def test_a_one_image_folder_is_refused(tmp_path):
    root = image_folder(tmp_path / "data", {"cat/0.png": ("RGB", 0)})
    with pytest.raises(ConfigError, match="at least 2"):
        load_data(f"imagefolder:{root}", (3, 8, 8))


def test_a_corrupt_image_is_found_before_training(tmp_path):
    root = image_folder(tmp_path / "data", {f"{c}/{i}.png": ("RGB", i) for c in "ab" for i in range(3)})
    (root / "b" / "1.png").write_bytes((root / "b" / "1.png").read_bytes()[:60])  # truncated
    with pytest.raises(ConfigError, match="1.png"):
        load_data(f"imagefolder:{root}", (3, 8, 8))
    out = tmp_path / "out"
    line = one_line_error(invoke("build", "-q", "--data", f"imagefolder:{root}", "--input-shape", "3,8,8",
                                 "--out", str(out)))
    assert "cannot be read" in line and not out.exists() and leftovers(tmp_path) == []


def test_images_of_other_channel_counts_are_refused(tmp_path):
    root = image_folder(tmp_path / "data", {"a/0.png": ("RGB", 0), "a/1.png": ("RGBA", 1), "b/0.png": ("L", 2)})
    with pytest.raises(ConfigError, match="RGBA"):
        load_data(f"imagefolder:{root}", (3, 8, 8))
    with pytest.raises(ConfigError, match="--input-shape"):
        load_data(f"imagefolder:{root}", (4, 8, 8))


def test_a_one_class_folder_warns(tmp_path, caplog):
    root = image_folder(tmp_path / "data", {f"cat/{i}.png": ("RGB", i) for i in range(3)})
    with caplog.at_level(logging.WARNING, logger="edgeprune.data"):
        bundle = load_data(f"imagefolder:{root}", (3, 8, 8))
    assert bundle.num_classes == 1 and "one class" in caplog.text


FACTORY = """
from torch import nn
def small():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))
"""


@pytest.mark.parametrize("where", ["trained weights cache", "model.pt artifact"])
def test_a_full_disk_during_torch_save_is_one_line_and_leaves_nothing(where, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(cache))  # cold: the zoo model is trained and saved
    model = ["--model", "resnet20"]
    if where == "model.pt artifact":
        (tmp_path / "factory.py").write_text(FACTORY)
        model = ["--model", f"{tmp_path / 'factory.py'}:small"]
    saves = []

    def disk_full(obj, f, *args, **kwargs):
        saves.append(f)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", disk_full)
    out = tmp_path / "out"
    line = one_line_error(invoke("build", "-q", *model, *FAST, "--out", str(out)))
    assert "no space left" in line and saves
    assert not out.exists() and leftovers(tmp_path) == []
    assert not [p for p in cache.rglob("*") if p.is_file()]  # no half-written cache entry either


def test_atomic_write_on_a_full_disk_keeps_the_old_file(tmp_path, monkeypatch):
    import edgeprune.files as files

    class FullDisk:
        def __init__(self, *args, **kwargs):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    path = tmp_path / "report.json"
    path.write_text("old")
    monkeypatch.setattr(files, "open", FullDisk, raising=False)  # the module's `open` shadows the builtin
    with pytest.raises(OutOfSpace, match="report.json"):
        atomic_write_bytes(path, b"new")
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_force_cannot_come_from_a_config_file(tmp_path):
    mine = tmp_path / "out"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    config = tmp_path / "pr.yaml"
    config.write_text(f"out: {mine}\nforce: true\n")
    assert "--force" in one_line_error(invoke("build", "-q", "--config", str(config)))
    assert tree(mine) == {"notes.txt": b"keep me"}
