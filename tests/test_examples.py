"""configs/examples/*.yaml load as BuildConfigs for known devices; the example CI workflow is consistent."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgeprune.config import BuildConfig
from edgeprune.targets.devices import list_devices

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "configs" / "examples").glob("*.yaml"))


def test_the_three_examples_exist():
    assert {p.name for p in EXAMPLES} >= {"resnet20-digits-cpu.yaml", "resnet18-jetson-orin-nano.yaml",
                                          "mobilenet-jetson-agx-orin.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_loads(path):
    cfg = BuildConfig.from_yaml(path)  # rejects unknown keys and bad values
    assert cfg.device in list_devices()
    assert cfg.budget is not None


def test_example_values():
    cfgs = {p.stem: BuildConfig.from_yaml(p) for p in EXAMPLES}
    cpu = cfgs["resnet20-digits-cpu"]
    assert (cpu.model, cpu.data, cpu.device, cpu.latency_budget) == ("resnet20", "digits", "cpu", "0.5x")
    nano = cfgs["resnet18-jetson-orin-nano"]
    assert (nano.model, nano.input_shape, nano.device) == ("torchvision:resnet18", (3, 224, 224), "jetson-orin-nano")
    agx = cfgs["mobilenet-jetson-agx-orin"]
    assert (agx.model, agx.device) == ("torchvision:mobilenet_v3_small", "jetson-agx-orin")


def test_ci_workflow_example():
    wf = yaml.safe_load((ROOT / "examples" / "ci" / "edgeprune.yml").read_text())
    steps = [s for job in wf["jobs"].values() for s in job["steps"]]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "./run.sh build --config configs/examples/resnet20-digits-cpu.yaml --out out" in runs
    assert (".venv/bin/edgeprune check out baselines/resnet20-digits-cpu --remeasure --junit check.xml "
            "--markdown check.md") in runs
    assert any(s.get("with", {}).get("python-version") == "3.11" for s in steps)
    assert any(str(s.get("uses", "")).startswith("actions/upload-artifact") and s["with"]["path"] == "out/"
               for s in steps)
    assert (ROOT / "configs" / "examples" / "resnet20-digits-cpu.yaml").is_file()
