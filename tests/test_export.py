from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from edgeprune.errors import ParityError
from edgeprune.export.onnx import INPUT_NAME, OPSET, OUTPUT_NAME, check_parity, export_onnx

RESNET_SHAPE = (1, 16, 16)


def _ort_run(path, x):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {INPUT_NAME: x.astype(np.float32)})[0]


def test_export_passes_checker_and_reports(pruned_resnet20_onnx):
    model, path, result = pruned_resnet20_onnx
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert result.path == path
    assert result.opset == OPSET
    assert result.nodes == len(proto.graph.node)
    assert sum(result.ops.values()) == result.nodes
    assert result.ops.get("Conv", 0) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert "BatchNormalization" not in result.ops  # folded into the convolutions
    assert [i.name for i in proto.graph.input] == [INPUT_NAME]
    assert [o.name for o in proto.graph.output] == [OUTPUT_NAME]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, *RESNET_SHAPE]  # static batch
    assert result.to_dict()["path"] == str(path)


def test_export_is_byte_identical(pruned_resnet20_onnx, tmp_path):
    model, path, result = pruned_resnet20_onnx
    again = export_onnx(model, RESNET_SHAPE, 1, tmp_path / "again.onnx")
    assert (tmp_path / "again.onnx").read_bytes() == path.read_bytes()
    assert again.ops == result.ops


def test_ort_matches_torch_on_pruned_resnet20(pruned_resnet20_onnx):
    model, path, _ = pruned_resnet20_onnx
    rng = np.random.default_rng(0)
    for _ in range(4):
        x = rng.standard_normal((1, *RESNET_SHAPE)).astype(np.float32)
        with torch.no_grad():
            want = model(torch.from_numpy(x)).numpy()
        got = _ort_run(path, x)
        assert got.shape == want.shape == (1, 10)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
        parity = check_parity(want, got, atol=1e-4, rtol=1e-4)
        assert parity.ok and parity.top1_agreement == 1.0


def test_export_static_batch(tiny_factory, tmp_path):
    model = tiny_factory(seed=3)
    path = tmp_path / "b2.onnx"
    export_onnx(model, (3, 8, 8), 2, path)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort_run(path, x), want, atol=1e-5, rtol=1e-5)
    dims = [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 3, 8, 8]


# -- check_parity ---------------------------------------------------------------------------------------------
@pytest.fixture
def logits():
    return np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)


def test_parity_identical(logits):
    p = check_parity(logits, logits.copy())
    assert p.ok
    assert p.max_abs == 0.0 and p.max_rel == 0.0
    assert p.samples == 8 and p.top1_agreement == 1.0
    assert p.to_dict()["ok"] is True


def test_parity_within_tolerance(logits):
    p = check_parity(logits, logits + 1e-5)
    assert p.ok
    assert p.max_abs == pytest.approx(1e-5, rel=0.1)


def test_parity_flags_perturbation(logits):
    bad = logits.copy()
    bad[3, 4] += 0.05
    p = check_parity(logits, bad)
    assert not p.ok
    assert p.max_abs == pytest.approx(0.05, rel=1e-3)
    assert p.max_rel > 0


def test_parity_relative_tolerance_scales_with_magnitude():
    a = np.array([[1000.0, 1.0]])
    assert check_parity(a, a + [[0.5, 0.0]], atol=1e-3, rtol=1e-3).ok  # 0.5 <= 1e-3 + 1e-3 * 1000
    assert not check_parity(a, a + [[0.0, 0.5]], atol=1e-3, rtol=1e-3).ok


def test_parity_top1_agreement(logits):
    bad = logits.copy()
    row = bad[0]
    row[np.argmin(row)] = row.max() + 1.0  # flips the top-1 of one sample out of 8
    p = check_parity(logits, bad)
    assert not p.ok
    assert p.top1_agreement == pytest.approx(7 / 8)


def test_parity_non_finite(logits):
    bad = logits.copy()
    bad[0, 0] = np.nan
    assert not check_parity(logits, bad).ok
    bad[0, 0] = np.inf
    assert not check_parity(logits, bad).ok


def test_parity_shape_mismatch(logits):
    with pytest.raises(ParityError, match="shape"):
        check_parity(logits, logits[:, :5])
