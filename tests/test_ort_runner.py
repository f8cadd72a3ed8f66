from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeprune.errors import ConfigError, EdgepruneError, RuntimeUnavailable
from edgeprune.export.onnx import INPUT_NAME
from edgeprune.backends import get_runner
from edgeprune.backends.base.runner import run_static_batches
from edgeprune.backends.onnxrt.runner import OnnxRuntimeRunner, onnx_weight_bytes

TINY_SHAPE = (3, 8, 8)


@pytest.fixture
def runner():
    r = OnnxRuntimeRunner(threads=1)
    yield r
    r.release()


def _torch(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _initializer_bytes(path):
    return sum(numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def test_available_and_registry():
    assert OnnxRuntimeRunner().available() is None
    r = get_runner("onnxruntime", threads=1)
    assert isinstance(r, OnnxRuntimeRunner) and r.name == "onnxruntime" and r.threads == 1
    assert r.describe()["providers"] == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="onnxruntime"):
        get_runner("tensorrt-magic")


def test_missing_provider_reported():
    r = OnnxRuntimeRunner(providers=("NoSuchExecutionProvider",))
    why = r.available()
    assert why and "NoSuchExecutionProvider" in why
    with pytest.raises(RuntimeUnavailable):
        get_runner("onnxruntime", providers=("NoSuchExecutionProvider",))


def test_prepare_and_infer_match_torch(runner, tiny_onnx, tmp_path):
    model, path = tiny_onnx
    dep = runner.prepare(path, tmp_path)
    assert dep.path == path
    assert dep.input_name == INPUT_NAME
    assert dep.input_shape == (1, *TINY_SHAPE)
    assert "CPUExecutionProvider" in dep.meta["providers"]
    x = np.random.default_rng(0).standard_normal((5, *TINY_SHAPE)).astype(np.float32)  # more than the static batch
    got = runner.infer(dep, x)
    assert got.shape == (5, 4)
    np.testing.assert_allclose(got, _torch(model, x), atol=1e-5, rtol=1e-5)


def test_infer_casts_float64(runner, tiny_onnx, tmp_path):
    model, path = tiny_onnx
    dep = runner.prepare(path, tmp_path)
    x = np.random.default_rng(1).standard_normal((2, *TINY_SHAPE))
    np.testing.assert_allclose(runner.infer(dep, x), _torch(model, x.astype(np.float32)), atol=1e-5, rtol=1e-5)


def test_infer_pruned_resnet20(runner, pruned_resnet20_onnx, tmp_path):
    model, path, _ = pruned_resnet20_onnx
    dep = runner.prepare(path, tmp_path)
    x = np.random.default_rng(2).standard_normal((3, *dep.input_shape[1:])).astype(np.float32)
    np.testing.assert_allclose(runner.infer(dep, x), _torch(model, x), atol=1e-4, rtol=1e-4)


def test_run_static_batches_pads_and_trims():
    seen = []

    def run_one(chunk):
        seen.append(chunk.shape[0])
        return chunk.reshape(len(chunk), -1).sum(1, keepdims=True)

    x = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    out = run_static_batches(run_one, x, 2)
    assert seen == [2, 2, 2]  # the last chunk of 1 is padded to the static batch
    np.testing.assert_array_equal(out[:, 0], x.sum(1))


def test_measure_interleaved(runner, tiny_onnx, pruned_resnet20_onnx, tmp_path):
    deps = [runner.prepare(tiny_onnx[1], tmp_path), runner.prepare(pruned_resnet20_onnx[1], tmp_path)]
    stats = runner.measure_interleaved(deps, warmup=1, iters=3, blocks=2)
    assert len(stats) == 2
    for s in stats:
        assert s.blocks == 2 and len(s.block_medians) == 2
        assert s.n == 6 and s.warmup == 1
        assert s.runtime == "onnxruntime" and s.threads == 1 and s.batch_size == 1
        assert s.min > 0 and s.p50 > 0
        assert s.min <= s.p50 <= max(s.block_medians)
        assert s.p50 <= s.p99
        assert "onnxruntime" in s.versions
        assert s.extra["process"] == "isolated worker"


def test_measure_single_with_min_block_time(runner, tiny_onnx, tmp_path):
    dep = runner.prepare(tiny_onnx[1], tmp_path)
    s = runner.measure(dep, warmup=0, iters=1, blocks=1, min_block_s=0.02)
    assert s.blocks == 1
    assert s.n >= 2  # kept running until the block lasted min_block_s
    assert s.mean * s.n >= 0.02 * 1000 * 0.25  # most of the block is timed runs


def test_memory_tiny_equals_parameters(runner, tiny_onnx, tmp_path):
    model, path = tiny_onnx
    dep = runner.prepare(path, tmp_path)
    mem = runner.memory(dep)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert mem["weights_bytes"] == onnx_weight_bytes(path) == _initializer_bytes(path)
    # no BN to fold: the ONNX holds the parameters plus at most a few small shape constants
    assert param_bytes <= mem["weights_bytes"] <= param_bytes + 64
    assert isinstance(mem["peak_mb"], float) and mem["peak_mb"] >= 0
    assert mem["peak_source"]


def test_memory_pruned_resnet20(runner, pruned_resnet20_onnx, tmp_path):
    model, path, _ = pruned_resnet20_onnx
    mem = runner.memory(runner.prepare(path, tmp_path))
    assert mem["weights_bytes"] > 0
    assert mem["weights_bytes"] == _initializer_bytes(path)
    # BN is folded into the convs: conv weights plus one bias per output channel, plus the classifier
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    folded = sum(4 * (c.weight.numel() + c.out_channels) for c in convs)
    folded += sum(4 * p.numel() for p in model.fc.parameters())
    assert folded <= mem["weights_bytes"] <= folded + 64
    assert isinstance(mem["peak_mb"], float) and mem["peak_mb"] >= 0


def test_onnx_weight_bytes_external_data(tmp_path, tiny_onnx):
    _, path = tiny_onnx
    proto = onnx.load(str(path))
    ext = tmp_path / "ext.onnx"
    onnx.save_model(proto, str(ext), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    assert onnx_weight_bytes(ext) == onnx_weight_bytes(path)


def test_worker_error_is_reported(runner, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    from edgeprune.backends.base.runner import Deployed

    dep = Deployed("onnxruntime", bad, INPUT_NAME, (1, *TINY_SHAPE))
    with pytest.raises(EdgepruneError, match="ONNX Runtime measurement failed"):
        runner.measure(dep, warmup=0, iters=1)
