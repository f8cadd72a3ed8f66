"""The Runner interface (after Polygraphy's backends): every runtime is prepared, run and measured the same way."""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..stats import LatencyStats


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

    def telemetry(self) -> dict[str, Any]:
        """Device telemetry (Jetson memory, GPU load, power, clocks) recorded while this runner measured."""
        from ..telemetry import unavailable_reason

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
