"""The precision stage on a small residual CNN trained on digits: what the int8 and fp16 files really contain,
that they run in ONNX Runtime and agree with the fp32 ONNX, and one clear error per bad input."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, numpy_helper
from torch import nn

from edgeprune.data import load_data
from edgeprune.errors import ConfigError, ModelLoadError
from edgeprune.export.onnx import export_onnx
from edgeprune.export.precision import (
    TOLERANCES, Tolerance, check_precision_parity, compare_logits, convert_fp16, run_onnx,
)
from edgeprune.export.quantize import int8_layer_sensitivity, quantize_int8, quantize_int8_within_tolerance

SHAPE = (1, 32, 32)


class ResidualNet(nn.Module):
    """Conv-BN-ReLU, a residual block (Conv-BN + identity -> Add), global pool, Linear: every pattern Q/DQ
    placement cares about, small enough to train in seconds."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(torch.relu(x + self.body(x)))


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits", SHAPE, seed=0)
    calibration = [x.numpy() for x in data.calibration_batches(128, 64)]
    validation = [x.numpy() for x, _ in data.loader("val", 120)][:2]  # 240 validation images
    return data, calibration, validation


@pytest.fixture(scope="module")
def fp32_onnx(digits, tmp_path_factory):
    data = digits[0]
    torch.manual_seed(0)
    model = ResidualNet()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(6):
        for x, y in data.loader("train", 64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    path = tmp_path_factory.mktemp("precision") / "fp32.onnx"
    export_onnx(model.eval(), SHAPE, 1, path)
    return path


@pytest.fixture(scope="module")
def int8(fp32_onnx, digits):
    return quantize_int8(fp32_onnx, fp32_onnx.with_name("int8.onnx"), digits[1], method="minmax")


def _graph(path):
    model = onnx.load(str(path))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    return model, inits, producer


def _weighted(model, op="Conv"):
    return [n for n in model.graph.node if n.op_type == op]


def test_int8_has_per_channel_symmetric_qdq_and_agrees(fp32_onnx, int8, digits):
    model, inits, producer = _graph(int8.path)
    ops = int8.ops
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > ops["QuantizeLinear"]  # weights: DQ only
    fp32_convs = _weighted(onnx.load(str(fp32_onnx)))
    convs = _weighted(model)
    assert len(convs) == len(fp32_convs) == 2
    for conv in convs:
        x_dq, w_dq = producer[conv.input[0]], producer[conv.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"
        w, scale, zp = (inits[i] for i in w_dq.input)
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],)  # one scale per output channel
        assert zp.dtype == np.int8 and not zp.any()  # symmetric: zero point 0, as TensorRT requires
        assert len(set(np.round(scale, 12))) > 1
        x_zp = inits[x_dq.input[2]]
        assert x_zp.dtype == np.int8 and not x_zp.any() and inits[x_dq.input[1]].size == 1
    assert not any(n.op_type == "QuantizeLinear" and producer.get(n.input[0], n).op_type == "Conv"
                   for n in model.graph.node)  # no Q/DQ on conv outputs (TensorRT fuses from its inputs)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    kinds = sorted(producer[i].op_type for i in add.input)
    assert kinds == ["Conv", "DequantizeLinear"]  # the conv branch feeds Add directly: conv+add fusion
    assert int8.settings["residual_add_inputs_unquantized"] == [add.name]
    assert int8.library == "onnxruntime.quantization" and int8.calibration_images == 128
    parity = check_precision_parity(fp32_onnx, int8.path, digits[2], "int8")
    assert parity.samples == 240
    assert parity.ok and parity.top1_agreement >= TOLERANCES["int8"].min_top1_agreement
    assert parity.to_dict()["tolerance"] == TOLERANCES["int8"].to_dict()


def test_int8_excluded_node_stays_fp32(fp32_onnx, digits, tmp_path):
    first = _weighted(onnx.load(str(fp32_onnx)))[0].name
    result = quantize_int8(fp32_onnx, tmp_path / "x.onnx", digits[1], method="percentile", exclude_nodes=[first])
    model, inits, producer = _graph(result.path)
    conv = next(n for n in model.graph.node if n.name == first)
    assert conv.input[1] in inits and inits[conv.input[1]].dtype == np.float32  # fp32 weight, no DQ
    assert conv.input[0] not in producer or producer[conv.input[0]].op_type != "DequantizeLinear"
    other = _weighted(model)[1]
    assert producer[other.input[1]].op_type == "DequantizeLinear"
    assert result.excluded_nodes == (first,) and result.method == "percentile"
    assert run_onnx(result.path, digits[2][:1]).shape == (120, 10)


def test_int8_onnxruntime_profile_uses_uint8_activations(fp32_onnx, digits, tmp_path):
    result = quantize_int8(fp32_onnx, tmp_path / "ort.onnx", digits[1], target="onnxruntime")
    model, inits, producer = _graph(result.path)
    conv = _weighted(model)[0]
    assert inits[producer[conv.input[0]].input[2]].dtype == np.uint8
    assert inits[producer[conv.input[1]].input[2]].dtype == np.int8
    # ORT's placement also quantizes ReLU/Add/pool outputs: 94.6% agreement measured on this tiny net
    assert check_precision_parity(fp32_onnx, result.path, digits[2], "int8").top1_agreement >= 0.9


def test_fp16_has_fp16_weights_fp32_io_and_fp32_islands(fp32_onnx, digits, tmp_path):
    keep = _weighted(onnx.load(str(fp32_onnx)))[1].name
    result = convert_fp16(fp32_onnx, tmp_path / "fp16.onnx", keep_fp32_nodes=[keep])
    model, inits, producer = _graph(result.path)
    io = [*model.graph.input, *model.graph.output]
    assert {t.type.tensor_type.elem_type for t in io} == {TensorProto.FLOAT}
    first = _weighted(model)[0]
    assert inits[first.input[1]].dtype == np.float16
    kept = next(n for n in model.graph.node if n.name == keep)
    assert inits[kept.input[1]].dtype == np.float32
    assert "ReduceMean" in result.kept_fp32_ops  # the global pool: a reduction stays fp32
    pool = next(n for n in model.graph.node if n.op_type == "ReduceMean")
    assert producer[pool.input[0]].op_type == "Cast"
    assert result.ops["Cast"] >= 2 and result.to_dict()["precision"] == "fp16"
    parity = check_precision_parity(fp32_onnx, result.path, digits[2], "fp16")
    assert parity.ok and parity.max_abs_error_scaled < TOLERANCES["fp16"].max_abs_error


def test_compare_logits_tolerances_can_fail():
    ref = np.array([[3.0, 1.0], [0.0, 4.0], [2.0, 1.0], [1.0, 2.0]])
    flipped = ref.copy()
    flipped[0] = [1.0, 3.0]
    p = compare_logits(ref, flipped, "int8")
    assert p.top1_agreement == 0.75 and p.max_abs_error == 2.0 and p.max_abs_error_scaled == 0.5
    assert not p.ok
    assert compare_logits(ref, ref + 0.01, "fp16").ok
    assert not compare_logits(ref, ref + 0.2, "fp16").ok  # 5% of the logit scale is past fp16's bound
    assert compare_logits(ref, ref + 0.2, "int8").ok
    assert not compare_logits(ref, ref, "int8", Tolerance(1.0, -1.0)).ok
    assert not compare_logits(ref, ref * np.nan, "fp16").ok
    assert TOLERANCES["fp16"].min_top1_agreement > TOLERANCES["int8"].min_top1_agreement


def test_sensitivity_and_retry(fp32_onnx, digits, tmp_path):
    sens = int8_layer_sensitivity(fp32_onnx, digits[1], digits[2][:1])
    weighted = {n.name for n in onnx.load(str(fp32_onnx)).graph.node if n.op_type in ("Conv", "Gemm")}
    assert set(sens) == weighted and all(v >= 0 for v in sens.values())
    assert list(sens.values()) == sorted(sens.values(), reverse=True)
    assert max(sens.values()) > 0
    result, parity = quantize_int8_within_tolerance(fp32_onnx, tmp_path / "ok.onnx", digits[1], digits[2][:1])
    tries = result.settings["attempts"]
    assert parity.ok and tries[-1]["ok"] and not any(a["ok"] for a in tries[:-1])  # stops at the first fit
    assert tries[0]["method"] == "minmax" and len(tries) <= 5
    assert result.path.is_file()
    impossible = Tolerance(1.0, 0.0)  # int8 cannot be exact: every fix is tried, then the best is returned
    result, parity = quantize_int8_within_tolerance(fp32_onnx, tmp_path / "no.onnx", digits[1], digits[2][:1],
                                                    tolerance=impossible, max_excluded=2)
    tries = result.settings["attempts"]
    assert not parity.ok and [a["method"] for a in tries[:3]] == ["minmax", "entropy", "percentile"]
    assert [len(a["excluded"]) for a in tries[3:]] == [1, 2]
    assert tries[3]["excluded"] == [next(iter(int8_layer_sensitivity(fp32_onnx, digits[1], digits[2][:1],
                                                                        tries[3]["method"])))]


def test_bad_inputs_raise_one_clear_error(fp32_onnx, digits, tmp_path):
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"not a model")
    out = tmp_path / "o.onnx"
    cal = digits[1]
    cases = [
        (lambda: quantize_int8(corrupt, out, cal), ModelLoadError, "not a valid ONNX"),
        (lambda: convert_fp16(tmp_path / "missing.onnx", out), ModelLoadError, "does not exist"),
        (lambda: quantize_int8(fp32_onnx, out, []), ConfigError, "calibration set is empty"),
        (lambda: quantize_int8(fp32_onnx, out, cal, method="kl"), ConfigError, "minmax, entropy, percentile"),
        (lambda: quantize_int8(fp32_onnx, out, cal, target="openvino"), ConfigError, "unknown int8 target"),
        (lambda: quantize_int8(fp32_onnx, out, [np.zeros((4, 3, 8, 8))]), ConfigError, "do not fit"),
        (lambda: quantize_int8(fp32_onnx, out, cal, exclude_nodes=["nope"]), ConfigError, "no node named nope"),
        (lambda: convert_fp16(fp32_onnx, out, keep_fp32_nodes=["nope"]), ConfigError, "no node named nope"),
        (lambda: compare_logits(np.zeros((2, 3)), np.zeros((2, 3)), "int4"), ConfigError, "unknown precision"),
        (lambda: check_precision_parity(fp32_onnx, fp32_onnx, [], "fp16"), ConfigError, "validation set is empty"),
    ]
    for call, error, words in cases:
        with pytest.raises(error, match=words) as info:
            call()
        assert "\n" not in info.value.message and ":" in info.value.message


def test_a_calibrator_that_fails_is_a_failed_try_and_all_failing_is_one_error(fp32_onnx, digits, tmp_path,
                                                                               monkeypatch):
    from edgeprune.export import quantize
    from edgeprune.export.quantize import QuantizationFailed

    real = quantize.quantize_int8

    def entropy_breaks(*args, **kwargs):  # ORT's histogram calibrators raise like this on a degenerate range
        if args[3] == "entropy":
            raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")
        return real(*args, **kwargs)

    monkeypatch.setattr(quantize, "quantize_int8", entropy_breaks)
    result, parity = quantize_int8_within_tolerance(fp32_onnx, tmp_path / "a.onnx", digits[1], digits[2][:1],
                                                    methods=("entropy", "minmax"))
    tries = result.settings["attempts"]
    assert tries[0]["method"] == "entropy" and "Too many bins" in tries[0]["error"] and not tries[0]["ok"]
    assert parity.ok and result.method == "minmax"

    def all_break(*args, **kwargs):
        raise RuntimeError("calibrator crashed")

    monkeypatch.setattr(quantize, "quantize_int8", all_break)
    with pytest.raises(QuantizationFailed, match="no calibration method could quantize this model .*minmax: "
                                                 "RuntimeError: calibrator crashed.*ship it in fp32 or fp16"):
        quantize_int8_within_tolerance(fp32_onnx, tmp_path / "b.onnx", digits[1], digits[2][:1],
                                       methods=("minmax",))
