"""The GPU runners end to end on a tiny model: TensorRT in process, trtexec, and PyTorch on CUDA.

Each end-to-end test is skipped, saying what is missing, on a host without that runtime; the tests of what
available() reports run everywhere.
"""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from edgeprune.errors import RuntimeUnavailable
from edgeprune.backends.trt.sidecar import read_metadata
from edgeprune.backends import RUNNERS, get_runner
from edgeprune.backends.trt import trtexec_cli as trtexec_module
from edgeprune.backends.trt.runner import TensorRTRunner
from edgeprune.backends.torch_cuda.runner import TorchCudaRunner
from edgeprune.backends.trt.trtexec import TrtexecRunner


# ---------------------------------------------------------------------------------------------------------
# what available() says (everywhere)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tensorrt", "trtexec", "torch-cuda"])
def test_registered_and_explains_itself(name):
    assert name in RUNNERS
    runner = get_runner(name, require_available=False)
    assert runner.name == name
    why = runner.available()
    if why is None:
        return  # this host can run it: the end-to-end tests below exercise it
    assert isinstance(why, str) and len(why) > 20
    with pytest.raises(RuntimeUnavailable) as err:
        get_runner(name)
    assert why in err.value.message and name in err.value.message


def test_tensorrt_available_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # what `import tensorrt` meets on a host without it
    why = TensorRTRunner().available()
    assert why.startswith("TensorRT is not installed on this host")


def test_tensorrt_available_names_a_missing_gpu_or_an_old_release(monkeypatch):
    import torch

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert TensorRTRunner().available().startswith("no CUDA GPU visible to PyTorch")
    fake.__version__ = "8.4.3"
    assert "older than 8.5" in TensorRTRunner().available()


def test_torch_cuda_available_names_the_missing_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    why = TorchCudaRunner().available()
    assert why.startswith("no CUDA GPU visible to PyTorch")
    with pytest.raises(RuntimeUnavailable, match="no CUDA GPU visible"):
        TorchCudaRunner().prepare("model.onnx", ".")


def test_trtexec_available_names_where_it_looked(monkeypatch):
    monkeypatch.setattr(trtexec_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(trtexec_module, "TRTEXEC_PATHS", ("/nonexistent/tensorrt/bin/trtexec",))
    why = TrtexecRunner().available()
    assert why.startswith("trtexec is not installed on this host") and "/nonexistent/tensorrt/bin/trtexec" in why
    assert "no-such-trtexec" in TrtexecRunner(executable="no-such-trtexec").available()


# ---------------------------------------------------------------------------------------------------------
# end to end on a tiny model
# ---------------------------------------------------------------------------------------------------------
def _skip_unless(runner) -> None:
    why = runner.available()
    if why:
        pytest.skip(why)


# Listed before tiny_model in a test's arguments, so a missing runtime skips before the export work.
@pytest.fixture
def needs_tensorrt():
    _skip_unless(TensorRTRunner())


@pytest.fixture
def needs_torch_cuda():
    _skip_unless(TorchCudaRunner())


@pytest.fixture
def needs_trtexec():
    _skip_unless(TrtexecRunner())


@pytest.fixture
def tiny_model(tmp_path):
    """A small conv net exported by edgeprune's own exporter, with the model.pt the pipeline writes beside it."""
    import torch
    from torch import nn

    from edgeprune.export.onnx import export_onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(8, 10)).eval()
    with torch.no_grad():  # non-trivial batch-norm statistics, so folding them into the conv is exercised
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    folder = tmp_path / "model"
    folder.mkdir()
    onnx_path = folder / "model.onnx"
    export_onnx(model, (3, 16, 16), 2, onnx_path)
    torch.save({"model": model, "input_shape": (3, 16, 16)}, folder / "model.pt")
    batch = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        reference = model(torch.from_numpy(batch)).numpy()
    return onnx_path, batch, reference


def test_tensorrt_runner_end_to_end(needs_tensorrt, tiny_model, tmp_path):
    runner = TensorRTRunner(precision="fp32")
    import tensorrt as trt
    import torch

    onnx_path, batch, reference = tiny_model
    dep = runner.prepare(onnx_path, tmp_path / "work")
    assert dep.path.exists() and dep.input_shape == (2, 3, 16, 16)
    meta = read_metadata(dep.path)
    major, minor = torch.cuda.get_device_capability(0)
    assert meta.tensorrt_version == trt.__version__ and meta.compute_capability == f"{major}.{minor}"
    # 5 samples through a batch-2 engine: split and padded. TF32 may be on for fp32, hence the tolerance.
    np.testing.assert_allclose(runner.infer(dep, batch), reference, rtol=2e-2, atol=2e-2)

    stats = runner.measure(dep, warmup=10, iters=20, blocks=2)
    assert stats.n == 40 and stats.blocks == 2 and stats.runtime == "tensorrt"
    assert 0 < stats.min <= stats.p50 <= stats.p99
    assert stats.versions["tensorrt"] == trt.__version__

    mtime = dep.path.stat().st_mtime_ns
    again = TensorRTRunner(precision="fp32").prepare(onnx_path, tmp_path / "work")
    assert again.path == dep.path and dep.path.stat().st_mtime_ns == mtime  # reused, not rebuilt
    memory = runner.memory(dep)
    assert memory["weights_bytes"] > 0 and memory["peak_mb"] is not None


def test_tensorrt_runner_fp16_with_cuda_graph(needs_tensorrt, tiny_model, tmp_path):
    runner = TensorRTRunner(precision="fp16", cuda_graph=True)
    import tensorrt as trt

    from edgeprune.backends.trt.plan import parse_trt_version

    if parse_trt_version(trt.__version__)[0] >= 11:
        pytest.skip("TensorRT 11 builds fp16 only from an FP16 (AutoCast) ONNX; this test's ONNX is fp32")
    onnx_path, batch, reference = tiny_model
    dep = runner.prepare(onnx_path, tmp_path / "work")
    assert dep.meta["cuda_graph"] == "on" or dep.meta["cuda_graph"].startswith("capture failed")
    np.testing.assert_allclose(runner.infer(dep, batch), reference, rtol=5e-2, atol=5e-2)
    stats = runner.measure(dep, warmup=5, iters=10, blocks=1)
    assert stats.n == 10 and stats.extra["cuda_graph"] == dep.meta["cuda_graph"]


def test_torch_cuda_runner_end_to_end(needs_torch_cuda, tiny_model, tmp_path):
    runner = TorchCudaRunner(build_dir=tmp_path)  # the fixture's whole-module model.pt is this build's own
    onnx_path, batch, reference = tiny_model
    dep = runner.prepare(onnx_path, tmp_path / "work")
    assert dep.path.name == "model.pt" and dep.input_shape == (2, 3, 16, 16)
    np.testing.assert_allclose(runner.infer(dep, batch), reference, rtol=1e-2, atol=1e-2)
    stats = runner.measure(dep, warmup=5, iters=15, blocks=2)
    assert stats.n == 30 and stats.runtime == "torch-cuda" and stats.min > 0
    memory = runner.memory(dep)
    # conv 224 + batch-norm 16 + linear 90 fp32 parameters, batch-norm running stats 16 fp32 + one int64 counter
    assert memory["weights_bytes"] == (224 + 16 + 90 + 16) * 4 + 8
    assert memory["peak_mb"] > 0

    graphed = TorchCudaRunner(cuda_graph=True, fp16=True)
    dep16 = graphed.prepare(onnx_path, tmp_path / "work")
    assert dep16.meta["cuda_graph"] == "on"
    np.testing.assert_allclose(graphed.infer(dep16, batch), reference, rtol=5e-2, atol=5e-2)
    assert graphed.measure(dep16, warmup=3, iters=5, blocks=1).extra["cuda_graph"] == "on"


def test_trtexec_runner_end_to_end(needs_trtexec, tiny_model, tmp_path):
    runner = TrtexecRunner(precision="fp32", cuda_graph=False, spin_wait=True, data_transfers=False)
    onnx_path, batch, reference = tiny_model
    dep = runner.prepare(onnx_path, tmp_path / "work")
    meta = read_metadata(dep.path)
    assert dep.path.exists() and meta.built_with == "trtexec" and meta.gpu_name
    stats = runner.measure(dep, warmup=5, iters=20, blocks=2)
    assert stats.n == 40 and stats.blocks == 2 and stats.min > 0
    assert stats.extra["data_transfers"] is False and stats.extra["spin_wait"] is True
    np.testing.assert_allclose(runner.infer(dep, batch[:2]), reference[:2], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("name", ["tensorrt", "trtexec", "torch-cuda"])
def test_every_gpu_runner_takes_what_it_needs_from_the_builds_context(name, tmp_path):
    from edgeprune.backends import RunContext, get_runner

    context = RunContext(threads=1, seed=0, precision="fp16", workdir=tmp_path)
    runner = get_runner(name, context=context, require_available=False)
    assert runner.name == name
    assert (runner.fp16 if name == "torch-cuda" else runner.options.precision == "fp16") is True
