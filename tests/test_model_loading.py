"""Issue 12 item 1: a model file from elsewhere never runs code unless the user opted in (--trust-pickle); the
model.pt edgeprune writes is spec + weights, and loads back without that opt-in."""
from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import edgeprune
from edgeprune.config import BuildConfig
from edgeprune.errors import BudgetNotMet, ConfigError, ModelLoadError
from edgeprune.models import load_model
from edgeprune.pipeline.stages import save_model_pt
from edgeprune.pruning.prune import prune_model

ENTRY_POINT = Path(sys.executable).with_name("edgeprune")


class Hostile:
    """Unpickling it calls open(marker, "w"): the file appears if the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture
def hostile(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pt"
    # In edgeprune's former model.pt layout, so nothing but the pickle itself tells it apart.
    torch.save({"model": Hostile(marker), "input_shape": [3, 8, 8], "name": "resnet20"}, path)
    return path, marker


def test_hostile_pickle_is_refused_and_runs_nothing(hostile):
    path, marker = hostile
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path))
    assert "--trust-pickle" in err.value.message and "\n" not in err.value.message
    assert not marker.exists()


def test_hostile_pickle_as_weights_is_refused_and_runs_nothing(hostile):
    path, marker = hostile
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model("resnet20", weights=str(path), input_shape=(3, 16, 16))
    assert not marker.exists()


def test_hostile_pickle_on_the_command_line_is_one_line_exit_2(hostile, tmp_path):
    path, marker = hostile
    proc = subprocess.run([str(ENTRY_POINT), "build", "--model", str(path), "--out", str(tmp_path / "out"), "-q"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pass --trust-pickle only for a file you trust" in lines[0], proc.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_torch_cuda_runner_refuses_a_pickled_model_pt_from_elsewhere(hostile):
    from edgeprune.backends.torch_cuda.runner import TorchCudaRunner

    path, marker = hostile
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        TorchCudaRunner()._load_module(path.with_name("model.onnx"))
    assert not marker.exists()


def test_trust_pickle_loads_a_whole_module_and_warns(tmp_path, caplog):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="--trust-pickle"):
        load_model(str(path), input_shape=(3, 8, 8))
    with caplog.at_level(logging.WARNING):
        loaded = load_model(str(path), input_shape=(3, 8, 8), trust_pickle=True)
    assert any("--trust-pickle" in r.getMessage() for r in caplog.records)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_trust_pickle_is_refused_in_a_config_file(tmp_path):
    cfg = tmp_path / "build.yaml"
    cfg.write_text("model: evil.pt\ntrust_pickle: true\n")
    with pytest.raises(ConfigError, match="command line"):
        BuildConfig.from_yaml(cfg)
    plain = tmp_path / "plain.yaml"
    plain.write_text("model: resnet20\n")
    assert BuildConfig.from_yaml(plain, trust_pickle=True).trust_pickle  # the flag itself is accepted


# -- edgeprune's own model.pt ---------------------------------------------------------------------------------
def _pruned(spec: str, shape, tmp_path):
    torch.manual_seed(0)
    loaded = load_model(spec, input_shape=shape, num_classes=10)
    pruned = prune_model(loaded.module, torch.zeros(1, *shape), 0.5, 8)
    path = save_model_pt(tmp_path / "model.pt", pruned.model, loaded, pruned.widths_after)
    return pruned, path


def test_model_pt_holds_no_pickled_code_and_rebuilds_pruned(tmp_path):
    pruned, path = _pruned("resnet20", (3, 16, 16), tmp_path)
    raw = torch.load(path, weights_only=True)  # plain data and tensors only
    assert raw["spec"] == "resnet20" and raw["widths"] == pruned.widths_after
    loaded = load_model(str(path))
    assert loaded.input_shape == (3, 16, 16) and loaded.num_classes == 10 and loaded.spec == "resnet20"
    assert loaded.module.layer1[0].conv1.out_channels == pruned.model.layer1[0].conv1.out_channels < 16
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), pruned.model.eval()(x))


def test_model_pt_of_a_factory_model_needs_the_factory_named(tmp_path):
    src = tmp_path / "nets.py"
    src.write_text("from torch import nn\n"
                   "def net():\n"
                   "    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),\n"
                   "                         nn.Conv2d(16, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))\n")
    spec = f"{src}:net"
    pruned, path = _pruned(spec, (3, 12, 12), tmp_path)
    with pytest.raises(ModelLoadError) as err:
        load_model(str(path))  # the file names code to run: not on its say-so
    assert f"--model {spec} --weights {path}" in err.value.message
    loaded = load_model(spec, weights=str(path), input_shape=(3, 12, 12))
    assert loaded.module[0].out_channels == pruned.model[0].out_channels == 8
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), pruned.model.eval()(x))
    # The torch-cuda runner rebuilds it only where this build wrote it (its work directory).
    from edgeprune.backends.torch_cuda.runner import TorchCudaRunner

    with pytest.raises(ModelLoadError, match="--weights"):
        TorchCudaRunner()._load_module(path.with_name("model.onnx"))
    module, _, shape = TorchCudaRunner(build_dir=tmp_path)._load_module(path.with_name("model.onnx"))
    assert shape == (3, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(module(x), pruned.model(x))


def test_model_pt_from_a_real_build_loads_without_opt_in_and_gives_the_same_outputs(tmp_path, edgeprune_cache):
    import onnxruntime as ort

    out = tmp_path / "out"
    config = BuildConfig(model="resnet20", input_shape=(1, 16, 16), train_epochs=1, finetune_epochs=0,
                         max_iterations=2, measure_blocks=1, measure_iters=5, latency_budget="0.9x", out=str(out))
    try:
        edgeprune.build(config)
    except BudgetNotMet:
        pass  # the best attempt is still written
    report = json.loads((out / "report.json").read_text())
    loaded = load_model(str(out / "model.pt"))  # no trust_pickle
    assert loaded.input_shape == (1, 16, 16) and loaded.num_classes == 10
    widths = report["iterations"][report["final"]["index"]]["widths"]
    convs = {n: m.out_channels for n, m in loaded.module.named_modules() if isinstance(m, nn.Conv2d)}
    assert {k: convs[k] for k in widths} == widths
    x = np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    onnx_out = np.concatenate([sess.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))])
    with torch.no_grad():
        torch_out = loaded.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(torch_out, onnx_out, atol=1e-4, rtol=1e-3)
