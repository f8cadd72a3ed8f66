"""The precision stage, between ONNX export and the runtime: fp32 as exported, fp16 (strongly typed mixed
precision) or int8 (explicit QuantizeLinear/DequantizeLinear), and the parity gate against the fp32 ONNX.

Library: ONNX Runtime's own tools, already a pinned dependency (no new package).
- fp16: `onnxruntime.transformers.float16.convert_float_to_float16` (keep_io_types, op_block_list).
- int8: `onnxruntime.quantization.quantize_static` with QuantFormat.QDQ, per-channel symmetric int8 weights,
  calibration by ORT's CalibrationMethod (minmax / entropy / percentile); see quantize.py.
NVIDIA ModelOpt (`nvidia-modelopt[onnx]`, the tool TensorRT's migration guide names) was tried first in a
throwaway venv with /work/main/constraints.txt as constraints (pip, 2026-07): every release from 0.35 to 0.47
pins onnx~=1.18/1.19/1.21 (ResolutionImpossible against onnx==1.23.2); the only one pip could resolve, 0.33.1,
requires onnxruntime-gpu~=1.22.0, a different distribution that installs the same `onnxruntime` module and
replaced our pinned onnxruntime 1.31.1 with 1.22.0 (plus cupy-cuda12x). So it would replace a pinned package:
not used. Revisit when a ModelOpt release accepts onnx 1.23.

Why these ops stay fp32 in the fp16 graph (FP16_KEEP_FP32_OPS): reductions and Softmax/exp/log accumulate over
many elements or span a range fp16 (max 65504, 11-bit mantissa) overflows or rounds away; normalizations compute
a variance; Resize's scales/coordinates lose pixels in fp16 (ModelOpt AutoCast keeps them too); index and
shape-producing ops (TopK, Range, NonMaxSuppression, ...) are ORT's own block list (no fp16 kernel or wrong results).
Convs, Gemm/MatMul, pooling, elementwise activations and Add carry the speed-up and are converted.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import ConfigError, ModelLoadError

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")

FP16_KEEP_FP32_OPS: tuple[str, ...] = (
    "Softmax", "LogSoftmax", "ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare", "Exp", "Log", "Pow", "Sqrt", "Reciprocal", "Erf",
    "LayerNormalization", "InstanceNormalization", "GroupNormalization", "Resize", "Upsample",
    "TopK", "Range", "NonMaxSuppression", "RoiAlign", "CumSum",
)


@dataclass(frozen=True)
class Tolerance:
    """What a reduced-precision ONNX must keep of the fp32 ONNX on validation images.

    `min_top1_agreement`: fraction of images whose top-1 class is unchanged. `max_abs_error`: the largest
    |logit - fp32 logit|, divided by the largest |fp32 logit| so one bound fits models with any logit scale."""

    min_top1_agreement: float
    max_abs_error: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


# fp16 rounds at about 1e-3 relative per op: a few 1e-3 over a network, argmax flips only on near-ties.
# int8 (8-bit activations) moves logits by a few percent; 95% agreement is the usual PTQ acceptance bar.
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(1.0, 1e-4),
    "fp16": Tolerance(0.99, 0.02),
    "int8": Tolerance(0.95, 0.25),
}


@dataclass(frozen=True)
class PrecisionResult:
    """One reduced-precision artifact and how it was made: what report.json records for the attempt."""

    precision: str
    path: Path
    library: str
    library_version: str
    method: str | None = None  # int8 calibration method
    target: str | None = None  # int8 Q/DQ profile (quantize.QDQ_PROFILES)
    per_channel: bool | None = None
    calibration_images: int = 0
    excluded_nodes: tuple[str, ...] = ()  # left in fp32 (int8) or kept fp32 by name (fp16)
    kept_fp32_ops: tuple[str, ...] = ()  # op types present in the graph and kept fp32
    ops: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)  # library options as passed, attempts of a retry

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        d["excluded_nodes"] = list(self.excluded_nodes)
        d["kept_fp32_ops"] = list(self.kept_fp32_ops)
        return d


@dataclass(frozen=True)
class PrecisionParity:
    precision: str
    samples: int
    top1_agreement: float
    max_abs_error: float  # raw logits
    max_abs_error_scaled: float  # over max |fp32 logit|: what Tolerance.max_abs_error bounds
    tolerance: Tolerance
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def convert_fp16(onnx_in: Path, onnx_out: Path, keep_fp32_ops: Sequence[str] = FP16_KEEP_FP32_OPS,
                 keep_fp32_nodes: Sequence[str] = ()) -> PrecisionResult:
    """A strongly typed mixed-precision graph: fp16 weights and compute, explicit Casts at fp32 islands,
    graph inputs and outputs fp32 (so the caller feeds and reads what the fp32 model takes and gives)."""
    import onnx
    import onnxruntime
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = load_checked(onnx_in)
    present = {n.op_type for n in model.graph.node}
    names = {n.name for n in model.graph.node}
    unknown = [n for n in keep_fp32_nodes if n not in names]
    if unknown:
        raise ConfigError(f"fp16: no node named {', '.join(unknown)} in {onnx_in}: name nodes of that graph")
    block = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    log.info("fp16: converting %s (%d nodes), keeping %s fp32", onnx_in, len(model.graph.node),
             ", ".join(sorted(present & set(block))) or "no op type")
    converted = convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                         node_block_list=list(keep_fp32_nodes))
    save_checked(_toposorted(converted), onnx_out)
    return PrecisionResult(
        "fp16", Path(onnx_out), "onnxruntime.transformers.float16", onnxruntime.__version__,
        excluded_nodes=tuple(keep_fp32_nodes), kept_fp32_ops=tuple(sorted(present & set(block))),
        ops=op_counts(onnx.load(str(onnx_out), load_external_data=False)),
        settings={"keep_io_types": True, "op_block_list": block})


def check_precision_parity(fp32_onnx: Path, candidate_onnx: Path, images: Iterable[np.ndarray],
                           precision: str, tolerance: Tolerance | None = None) -> PrecisionParity:
    """Run both ONNX files in ONNX Runtime (CPU) on the same validation images and compare their logits."""
    batches = as_batches(images, "validation")
    return compare_logits(run_onnx(fp32_onnx, batches), run_onnx(candidate_onnx, batches), precision, tolerance)


def compare_logits(reference: np.ndarray, candidate: np.ndarray, precision: str,
                   tolerance: Tolerance | None = None) -> PrecisionParity:
    """Top-1 agreement and max abs logit error of `candidate` against the fp32 `reference` (pure)."""
    if tolerance is None:
        if precision not in TOLERANCES:
            raise ConfigError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
        tolerance = TOLERANCES[precision]
    a, b = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
    if a.shape != b.shape or a.ndim != 2 or not len(a):
        raise ConfigError(f"parity needs (images, classes) logits of one shape, got {a.shape} and {b.shape}")
    agreement = float((a.argmax(1) == b.argmax(1)).mean())
    err = float(np.abs(a - b).max()) if np.isfinite(b).all() else float("inf")
    scaled = err / max(float(np.abs(a).max()), 1e-12)
    ok = agreement >= tolerance.min_top1_agreement and scaled <= tolerance.max_abs_error
    return PrecisionParity(precision, len(a), agreement, err, scaled, tolerance, bool(ok))


def run_onnx(path: Path, batches: Sequence[np.ndarray]) -> np.ndarray:
    """Logits of every image, fed in the model's static batch size (one CPU session, one thread)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"ONNX Runtime cannot load {path} ({type(exc).__name__}): re-export the model") from None
    inp = sess.get_inputs()[0]
    return np.concatenate([sess.run(None, {inp.name: x})[0] for x in model_batches(batches, inp.shape)])


def model_batches(batches: Sequence[np.ndarray], input_shape: Sequence[Any]) -> list[np.ndarray]:
    """Re-split image batches into the model's static batch size; a tail smaller than one batch is dropped."""
    n = input_shape[0] if isinstance(input_shape[0], int) and input_shape[0] > 0 else 1
    images = np.concatenate([np.asarray(b, np.float32) for b in batches])
    if list(images.shape[1:]) != [d for d in input_shape[1:]] and all(isinstance(d, int) for d in input_shape[1:]):
        raise ConfigError(f"images of shape {list(images.shape[1:])} do not fit the model input "
                          f"{list(input_shape)}: calibrate and validate with the data the model was built for")
    if len(images) < n:
        raise ConfigError(f"{len(images)} images are fewer than one batch of {n}: give at least {n}")
    return [images[i:i + n] for i in range(0, len(images) - n + 1, n)]


def as_batches(images: Iterable[np.ndarray], what: str) -> list[np.ndarray]:
    batches = [np.asarray(b, np.float32) for b in images]
    if not batches or sum(len(b) for b in batches) == 0:
        raise ConfigError(f"the {what} set is empty: pass --data with images (e.g. --data digits)")
    return batches


def load_checked(path: Path):
    """Load and check an ONNX file, or say in one line that it is not one."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"{path} does not exist: export the model to ONNX first")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"{path} is not a valid ONNX model ({type(exc).__name__}): re-export it") from None
    return model


def save_checked(model, path: Path) -> None:
    import onnx

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    onnx.checker.check_model(str(path))


def _toposorted(model):
    """The converter appends its input Casts last; the checker and TensorRT's parser want nodes in order."""
    import onnx_graphsurgeon as gs

    return gs.export_onnx(gs.import_onnx(model).toposort())


def op_counts(model) -> dict[str, int]:
    ops: dict[str, int] = {}
    for node in model.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    return dict(sorted(ops.items()))



__all__ = ["FP16_KEEP_FP32_OPS", "PRECISIONS", "PrecisionParity", "PrecisionResult", "TOLERANCES", "Tolerance",
           "check_precision_parity", "compare_logits", "convert_fp16", "save_checked"]
