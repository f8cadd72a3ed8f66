"""The ONNX side of an engine build: input, quantization and precision facts of the file, and calibration data
re-cut to the engine's batch."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ...errors import EdgepruneError
from ...files import sha256_file


@dataclass(frozen=True)
class OnnxInfo:
    input_name: str
    input_shape: tuple[int, ...]   # -1 where the dim is symbolic
    has_qdq: bool                  # QuantizeLinear/DequantizeLinear present: explicitly quantized
    has_fp16: bool                 # float16 initializers or graph inputs: converted to (mixed) half precision
    sha256: str

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.input_shape) and self.input_shape[0] < 1


def inspect_onnx(onnx_path: Path) -> OnnxInfo:
    """Input, quantization and precision facts of an ONNX file, without loading external weight data."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise EdgepruneError(f"{onnx_path} has no graph input")
    first = inputs[0]
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
                 for d in first.type.tensor_type.shape.dim)
    ops = {n.op_type for n in model.graph.node}
    half = onnx.TensorProto.FLOAT16
    has_fp16 = (any(i.data_type == half for i in model.graph.initializer)
                or any(i.type.tensor_type.elem_type == half for i in model.graph.input))
    return OnnxInfo(first.name, dims, bool(ops & {"QuantizeLinear", "DequantizeLinear"}), has_fp16,
                    sha256_file(onnx_path))


def rechunk(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Re-cut calibration data into exactly `batch_size` samples each (the engine's batch); drop the remainder.

    A calibrator must hand TensorRT full batches of the size it announced; a short tail would be read past.
    """
    pending: list[np.ndarray] = []
    have = 0
    for b in batches:
        b = np.asarray(b, dtype=np.float32)
        pending.append(b)
        have += len(b)
        while have >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:batch_size])
            rest = joined[batch_size:]
            pending, have = ([rest] if len(rest) else []), len(rest)


__all__ = ["OnnxInfo", "inspect_onnx", "rechunk"]
