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


@dataclass(frozen=True)
class RunContext:
    """What a build asks of whichever runner measures it; each runner takes from it what it has a use for
    (`Runner.options_for`), so no code outside backends/ needs to know which runner takes which option."""

    threads: int | None = None
    seed: int = 0
    precision: str = "fp32"            # the device's default arithmetic
    workdir: Path | None = None        # kept for the whole build (TensorRT's timing cache lives here)


class Runner(abc.ABC):
    """Lifecycle: use as a context manager, or call close(); `release()` drops in-process sessions between
    measurements without ending the runner."""

    name: str = ""
    # Files this runner reads beside the ONNX file it is given (the torch-cuda runner times the PyTorch module).
    beside_onnx: tuple[str, ...] = ()

    @classmethod
    def options_for(cls, context: RunContext) -> dict[str, Any]:
        """Constructor options this runner takes from the build's settings."""
        return {}

    @classmethod
    def host_support(cls, providers: tuple[str, ...], host: Any) -> str | None:
        """None when `host` (a targets.HostInfo, here or the far side) has what this runner needs; else why not."""
        return None

    @classmethod
    def precision_unsupported(cls, precision: str) -> str | None:
        """None when this runner runs an ONNX that carries `precision` (fp16 tensors, int8 Q/DQ); else why not."""
        return None

    @classmethod
    def int8_profile(cls) -> str:
        """The Q/DQ layout this runtime runs int8 fastest with (export/quantize.QDQ_PROFILES)."""
        return "tensorrt"

    @classmethod
    def shipped(cls, deployed: "Deployed") -> dict[str, Path]:
        """Files to ship beside model.onnx (artifact name -> file), e.g. a TensorRT engine and its sidecar."""
        return {}

    def release(self) -> None:
        """Drop in-process sessions (their threads would otherwise compete with timing)."""

    def close(self) -> None:
        """End the runner (and any session or connection it holds); safe to call twice."""
        self.release()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

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
        """Device telemetry (Jetson memory, GPU load, power, clocks) recorded while this runner measured; a runner
        measures without any unless wrapped in a monitor (jetson.telemetry.MonitoredRunner), which says why not."""
        return {"available": False, "reason": f"not recorded: runner {self.name} measured without a telemetry "
                                              "monitor"}


class WrappingRunner(Runner):
    """A runner around another (a telemetry monitor, or the same runner on a far host): what ships beside the
    ONNX file, which precisions it runs and its int8 layout are the inner runner's."""

    inner: Runner

    def shipped(self, deployed: Deployed) -> dict[str, Path]:  # type: ignore[override]
        return self.inner.shipped(deployed)

    def precision_unsupported(self, precision: str) -> str | None:  # type: ignore[override]
        return self.inner.precision_unsupported(precision)

    def int8_profile(self) -> str:  # type: ignore[override]
        return self.inner.int8_profile()


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
