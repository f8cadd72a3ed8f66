"""The Runner interface (after Polygraphy's backends): every runtime is prepared, run and measured the same way."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .stats import LatencyStats


# (atol, rtol) per arithmetic: exact fp32 on the CPU; TF32, which TensorRT, cuDNN and ONNX Runtime's CUDA provider
# use for fp32 convolutions on Ampere and newer GPUs (10-bit mantissa); fp16; int8 (and "best", which may pick it).
PARITY_TOLERANCE = {"fp32": (1e-3, 1e-3), "tf32": (1e-2, 1e-2), "fp16": (5e-2, 5e-2), "int8": (0.5, 0.25),
                    "best": (0.5, 0.25)}



def gpu_parity_tolerance(precision: str) -> tuple[float, float]:
    """For a TensorRT engine of `precision`: fp32 engines compute convolutions in TF32 unless told not to."""
    return PARITY_TOLERANCE["tf32" if precision == "fp32" else precision]


@dataclass
class Deployed:
    """An artifact made ready for one runtime: an ONNX file for ONNX Runtime, an engine for TensorRT."""

    runner: str
    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    meta: dict[str, Any] = field(default_factory=dict)


class Runner(abc.ABC):
    name: str = ""

    @abc.abstractmethod
    def available(self) -> str | None:
        """None when this runner can run here; otherwise why not, in words a user can act on."""

    @abc.abstractmethod
    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        ...

    @abc.abstractmethod
    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        """Outputs for `batch` (any leading size: split or padded to the artifact's static batch)."""

    @abc.abstractmethod
    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        """Time several artifacts in interleaved blocks (block i of each back to back), one stats per artifact."""

    def measure(self, deployed: Deployed, warmup: int, iters: int, blocks: int = 1,
                min_block_s: float = 0.0) -> LatencyStats:
        return self.measure_interleaved([deployed], warmup, iters, blocks, min_block_s)[0]

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        """Memory the deployed artifact takes: weights, and the runtime's peak where it can be measured."""
        return {"weights_bytes": None, "peak_mb": None, "peak_source": "not measured by this runner"}

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name}

    def parity_tolerance(self) -> tuple[float, float]:
        """(atol, rtol) for the parity check against PyTorch on the CPU: what this runtime's arithmetic can
        explain, so that only a wrong export fails it."""
        return PARITY_TOLERANCE["fp32"]

    def telemetry(self) -> dict[str, Any]:
        """Device telemetry (Jetson memory, GPU load, power, clocks) recorded while this runner measured."""
        from ..jetson.telemetry import unavailable_reason

        return {"available": False, "reason": unavailable_reason() or
                f"not recorded: runner {self.name} measured without a telemetry monitor"}


def run_static_batches(run_one, batch: np.ndarray, static_batch: int) -> np.ndarray:
    """Feed a batch of any size to an artifact whose batch dimension is fixed, padding the last chunk."""
    outs = []
    for start in range(0, len(batch), static_batch):
        chunk = batch[start:start + static_batch]
        n = len(chunk)
        if n < static_batch:
            chunk = np.concatenate([chunk, np.zeros((static_batch - n, *chunk.shape[1:]), chunk.dtype)])
        outs.append(run_one(np.ascontiguousarray(chunk))[:n])
    return np.concatenate(outs)
