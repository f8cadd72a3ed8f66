"""int8 post-training static quantization to explicit Q/DQ with ONNX Runtime's quantizer (precision.py says why
not ModelOpt), per-layer sensitivity, and the cheap fixes when int8 misses its tolerance.

Two Q/DQ profiles (QDQ_PROFILES), because the two runtimes want different graphs:
- "tensorrt" (NVIDIA's explicit-quantization guidance): int8 activations and weights, both symmetric (TensorRT
  rejects a non-zero zero point), weights per output channel; Q/DQ on the inputs of weighted ops (Conv, Gemm,
  MatMul) and of residual Adds, none on their outputs; on each Add the input coming straight from a Conv/Gemm
  loses its Q/DQ so TensorRT fuses the Add into that convolution (ModelOpt's `remove_partial_input_qdq` does
  the same: only the residual branch is quantized).
- "onnxruntime" (ORT's CPU kernels): uint8 asymmetric activations, int8 symmetric per-channel weights, ORT's
  default placement (outputs quantized too, so DQ->Conv->Q fuses into QLinearConv). Measured on this Xeon
  (AVX512-VNNI, AMX; benchmarks/results/precision.json, 1 thread): ResNet-18 0.32x fp32 latency with this profile,
  1.57x with the "tensorrt" one; an ad-hoc probe with ORT's placement but int8 symmetric activations ran 0.95x.
  ORT's fast integer kernels are U8S8, so an artifact made for TensorRT is not the one to time on ORT CPU.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ConfigError
from ..files import scratch_dir
from .precision import (
    PrecisionParity, PrecisionResult, Tolerance, as_batches, compare_logits, load_checked,
    model_batches, op_counts, run_onnx, save_checked,
)

log = logging.getLogger(__name__)


class QuantizationFailed(ConfigError):
    """Every calibration method failed on this model (the build drops int8 in auto, or stops in one line)."""

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

QDQ_PROFILES: dict[str, dict[str, Any]] = {
    "tensorrt": {"activation_type": "QInt8", "op_types": (*WEIGHTED_OPS, "Add"),
                 "extra_options": {"ActivationSymmetric": True, "WeightSymmetric": True,
                                   "CalibTensorRangeSymmetric": True,
                                   "OpTypesToExcludeOutputQuantization": [*WEIGHTED_OPS, "Add"]},
                 "fuse_residual_add": True},
    "onnxruntime": {"activation_type": "QUInt8", "op_types": None,
                    "extra_options": {"ActivationSymmetric": False, "WeightSymmetric": True},
                    "fuse_residual_add": False},
}


def quantize_int8(onnx_in: Path, onnx_out: Path, calibration: Iterable[np.ndarray], method: str = "minmax",
                  exclude_nodes: Sequence[str] = (), per_channel: bool = True, target: str = "tensorrt",
                  calibration_cache: Path | None = None, only_nodes: Sequence[str] = ()) -> PrecisionResult:
    """Static int8 Q/DQ quantization, activations calibrated on `calibration` (image batches, any batch size).

    `exclude_nodes` stay fp32; `only_nodes` (sensitivity probes) quantizes those alone. `calibration_cache`
    (a JSON file) is written on first use and reused after, so repeated quantizations calibrate once."""
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if method not in CALIBRATION_METHODS:
        raise ConfigError(f"unknown calibration method {method!r}: use one of {', '.join(CALIBRATION_METHODS)}")
    if target not in QDQ_PROFILES:
        raise ConfigError(f"unknown int8 target {target!r}: use one of {', '.join(QDQ_PROFILES)}")
    model = load_checked(onnx_in)
    names = {n.name for n in model.graph.node}
    unknown = [n for n in (*exclude_nodes, *only_nodes) if n not in names]
    if unknown:
        raise ConfigError(f"int8: no node named {', '.join(unknown)} in {onnx_in}: name nodes of that graph")
    cached = calibration_cache is not None and Path(calibration_cache).is_file()
    reader, count = (None, 0) if cached else _reader(model, calibration)
    profile = QDQ_PROFILES[target]
    kwargs = {"quant_format": QuantFormat.QDQ, "per_channel": per_channel,
              "activation_type": getattr(QuantType, profile["activation_type"]), "weight_type": QuantType.QInt8,
              "calibrate_method": {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                                   "percentile": CalibrationMethod.Percentile}[method],
              "op_types_to_quantize": list(profile["op_types"]) if profile["op_types"] else None,
              "nodes_to_exclude": list(exclude_nodes), "nodes_to_quantize": list(only_nodes) or None,
              "extra_options": dict(profile["extra_options"]), "calibration_cache_path": calibration_cache}
    log.info("int8 (%s, %s): quantizing %s on %s calibration images, %d nodes left fp32", target, method,
             onnx_in, count if not cached else "cached", len(exclude_nodes))
    Path(onnx_out).parent.mkdir(parents=True, exist_ok=True)
    with _quiet_ort_quantizer():
        quantize_static(str(onnx_in), str(onnx_out), reader, **kwargs)
    import onnx

    quantized = onnx.load(str(onnx_out))
    moved = _fuse_residual_adds(quantized) if profile["fuse_residual_add"] else []
    save_checked(quantized, onnx_out)
    settings = {k: v for k, v in kwargs.items() if k in ("op_types_to_quantize", "extra_options")}
    settings.update(activation_type=profile["activation_type"], weight_type="QInt8",
                    residual_add_inputs_unquantized=moved, only_nodes=list(only_nodes))
    return PrecisionResult("int8", Path(onnx_out), "onnxruntime.quantization", onnxruntime.__version__,
                           method=method, target=target, per_channel=per_channel, calibration_images=count,
                           excluded_nodes=tuple(exclude_nodes), ops=op_counts(quantized), settings=settings)


def int8_layer_sensitivity(onnx_fp32: Path, calibration: Iterable[np.ndarray], validation: Iterable[np.ndarray],
                           method: str = "minmax", target: str = "tensorrt", nodes: Sequence[str] | None = None,
                           workdir: Path | None = None) -> dict[str, float]:
    """How much each weighted layer alone costs in int8: the mean |logit error| over the validation images
    when only that layer is quantized, divided by max |fp32 logit|. Largest first. Calibrates once."""
    calibration = as_batches(calibration, "calibration")
    validation = as_batches(validation, "validation")
    model = load_checked(onnx_fp32)
    nodes = list(nodes) if nodes is not None else [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    reference = run_onnx(onnx_fp32, validation)
    scale = max(float(np.abs(reference).max()), 1e-12)
    out: dict[str, float] = {}
    with _workdir(workdir) as work:
        cache = work / f"calibration-{target}-{method}.json"
        for name in nodes:
            probe = work / "probe.onnx"
            quantize_int8(onnx_fp32, probe, calibration, method, per_channel=True, target=target,
                          calibration_cache=cache, only_nodes=[name])
            out[name] = float(np.abs(run_onnx(probe, validation) - reference).mean()) / scale
    ranked = dict(sorted(out.items(), key=lambda kv: -kv[1]))
    log.info("int8 sensitivity (%s): most sensitive %s", method, ", ".join(f"{k}={v:.4f}" for k, v in
                                                                           list(ranked.items())[:3]))
    return ranked


def quantize_int8_within_tolerance(onnx_fp32: Path, onnx_out: Path, calibration: Iterable[np.ndarray],
                                   validation: Iterable[np.ndarray], methods: Sequence[str] = CALIBRATION_METHODS,
                                   tolerance: Tolerance | None = None, max_excluded: int = 8,
                                   target: str = "tensorrt", per_channel: bool = True,
                                   ) -> tuple[PrecisionResult, PrecisionParity]:
    """The cheap fixes in order: each calibration method; then, with the best of them, the k most sensitive
    layers (k = 1, 2, 4, ... <= max_excluded) left fp32. Returns the first artifact within tolerance, else the
    best one seen with parity.ok False (the caller drops int8 and reports these figures). Every try is listed
    in result.settings["attempts"]."""
    calibration = as_batches(calibration, "calibration")
    validation = as_batches(validation, "validation")
    reference = run_onnx(onnx_fp32, validation)
    attempts: list[dict[str, Any]] = []
    best: tuple[PrecisionResult, PrecisionParity] | None = None
    with _workdir(None) as work:
        def attempt(method: str, exclude: Sequence[str]) -> bool:
            """One try; True when within tolerance. A calibrator that fails on this model's activations (ORT's
            entropy / percentile histograms raise on a degenerate range, e.g. a constant tensor) is a failed try,
            recorded with its error, not the end of the search."""
            nonlocal best
            path = work / f"try{len(attempts)}.onnx"
            try:
                result = quantize_int8(onnx_fp32, path, calibration, method, exclude, per_channel, target,
                                       calibration_cache=work / f"calibration-{method}.json")
            except ConfigError:
                raise
            except Exception as exc:  # noqa: BLE001 -- ORT's calibrators raise plain ValueError/RuntimeError
                attempts.append({"method": method, "excluded": list(exclude), "ok": False,
                                 "error": f"{type(exc).__name__}: {str(exc)[:200]}"})
                return False
            parity = compare_logits(reference, run_onnx(path, validation), "int8", tolerance)
            attempts.append({"method": method, "excluded": list(exclude), "top1_agreement": parity.top1_agreement,
                             "max_abs_error_scaled": parity.max_abs_error_scaled, "ok": parity.ok})
            if best is None or _better(parity, best[1]):
                best = (result, parity)
            return parity.ok

        for method in methods:
            if attempt(method, ()):
                break
        else:
            tried = [a for a in attempts if "error" not in a]
            if tried:
                method = max(tried, key=lambda a: (a["top1_agreement"], -a["max_abs_error_scaled"]))
                ranked = list(int8_layer_sensitivity(onnx_fp32, calibration, validation, method["method"], target,
                                                     workdir=work))
                k = 1
                while k <= min(max_excluded, len(ranked)) and not attempt(method["method"], ranked[:k]):
                    k *= 2
        if best is None:
            raise QuantizationFailed("int8: no calibration method could quantize this model ("
                                     + "; ".join(f"{a['method']}: {a['error']}" for a in attempts)
                                     + "): ship it in fp32 or fp16")
        result, parity = best
        Path(onnx_out).parent.mkdir(parents=True, exist_ok=True)
        Path(onnx_out).write_bytes(result.path.read_bytes())
    log.info("int8: %s after %d tries (top-1 agreement %.3f)", "within tolerance" if parity.ok else "MISSED",
             len(attempts), parity.top1_agreement)
    return replace(result, path=Path(onnx_out), settings={**result.settings, "attempts": attempts}), parity


def _better(a: PrecisionParity, b: PrecisionParity) -> bool:
    return (a.ok, a.top1_agreement, -a.max_abs_error_scaled) > (b.ok, b.top1_agreement, -b.max_abs_error_scaled)


def _reader(model, calibration: Iterable[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    inp = model.graph.input[0]
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim]
    batches = model_batches(as_batches(calibration, "calibration"), shape)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(batches)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {inp.name: x}

    return Reader(), sum(len(b) for b in batches)


def _fuse_residual_adds(model) -> list[str]:
    """On each Add, drop the Q/DQ pair between a Conv/Gemm output and the Add (one input per Add), so TensorRT
    fuses the Add into that convolution; the other (residual) input keeps its Q/DQ. Returns the Adds changed."""
    nodes = model.graph.node
    producer = {o: n for n in nodes for o in n.output}
    uses: dict[str, int] = {}
    for n in nodes:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    dropped, changed = set(), []
    for add in (n for n in nodes if n.op_type == "Add"):
        for idx, name in enumerate(add.input):
            dq = producer.get(name)
            q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            src = producer.get(q.input[0]) if q is not None and q.op_type == "QuantizeLinear" else None
            if src is None or src.op_type not in WEIGHTED_OPS or uses[dq.output[0]] != 1 or uses[q.output[0]] != 1:
                continue
            add.input[idx] = q.input[0]
            dropped.update((id(q), id(dq)))
            changed.append(add.name)
            break
    keep = [n for n in nodes if id(n) not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in keep for i in n.input}
    inits = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(inits)
    return changed


@contextlib.contextmanager
def _workdir(path: Path | None):
    if path is not None:
        yield Path(path)
        return
    with scratch_dir("edgeprune-int8-") as tmp:
        yield tmp


class _DropPreprocessHint(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_ort_quantizer():
    """ORT's quantizer logs 'consider pre-processing' on the root logger every call (the export already folded
    constants and shapes, and ORT's optimizer fusions would hide the graph TensorRT must see), and its histogram
    calibrators print progress to stdout, which is the CLI's."""
    root, hint = logging.getLogger(), _DropPreprocessHint()
    root.addFilter(hint)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(hint)
