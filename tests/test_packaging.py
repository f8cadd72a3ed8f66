"""A non-editable install carries the device YAMLs: the wheel pip builds from this source holds every
edgeprune/targets/devices/*.yaml, installed beside targets/devices.py, which reads them from there (and where
importlib.resources finds them). Built from a copy of the source, so the checkout gets no build/ folder; offline
(--no-build-isolation: the venv's setuptools). About 2 s."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_ships_every_device_yaml(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "edgeprune", src / "edgeprune", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("edgeprune-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = sorted(Path(n).name for n in zf.namelist() if n.startswith("edgeprune/targets/devices/"))
    expected = sorted(p.name for p in (ROOT / "edgeprune" / "targets" / "devices").glob("*.yaml"))
    assert "cpu.yaml" in expected and shipped == expected
