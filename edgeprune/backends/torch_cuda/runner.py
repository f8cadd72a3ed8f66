"""PyTorch on a CUDA GPU: the un-exported model as a reference point for the deployed engines.

The model comes from the `model.pt` saved next to the ONNX (edgeprune's spec + state dict format,
models/artifact.py) or from a module handed to the constructor. Timing is GPU time between CUDA events
around one forward pass, synchronized after each run, optionally replayed from a CUDA graph: the same
measurement the TensorRT runner makes, so the two compare directly.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import EdgepruneError, ModelLoadError, RuntimeUnavailable
from ..base.schedule import interleave_blocks
from ..base.stats import LatencyStats, summarize
from ..base.runner import PARITY_TOLERANCE, Deployed, RunContext, Runner, run_static_batches

log = logging.getLogger(__name__)


class TorchCudaRunner(Runner):
    name = "torch-cuda"
    beside_onnx = ("model.pt",)  # it times the PyTorch module itself

    @classmethod
    def options_for(cls, context: RunContext) -> dict[str, Any]:
        return {"fp16": context.precision == "fp16", "build_dir": str(context.workdir) if context.workdir is not None else None}

    @classmethod
    def precision_unsupported(cls, precision: str) -> str | None:
        if precision == "fp32":
            return None
        return (f"runner torch-cuda times the PyTorch module, not the {precision} ONNX the precision stage makes: "
                "measure reduced precision with tensorrt or onnxruntime-cuda")

    def __init__(self, module=None, fp16: bool = False, cuda_graph: bool = False, device: int = 0,
                 input_shape: Sequence[int] | None = None, build_dir: Path | None = None):
        self.module = module
        self.build_dir = Path(build_dir).resolve() if build_dir else None  # model.pt files the build wrote
        self.fp16 = fp16
        self.cuda_graph = cuda_graph
        self.device = device
        self.input_shape = tuple(input_shape) if input_shape else None  # full shape, batch first
        self._sessions: dict[Path, _TorchSession] = {}

    def available(self) -> str | None:
        try:
            import torch
        except Exception as exc:
            return f"PyTorch cannot be imported ({exc})"
        if not torch.cuda.is_available():
            why = ("this PyTorch build has no CUDA support" if torch.version.cuda is None else
                   f"PyTorch is built for CUDA {torch.version.cuda}: check the NVIDIA driver and CUDA_VISIBLE_DEVICES")
            return f"no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False; {why})"
        return None

    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        why = self.available()
        if why:
            raise RuntimeUnavailable(f"runner {self.name} cannot run here: {why}")
        onnx_path = Path(onnx_path)
        module, source, saved_shape = self._load_module(onnx_path)
        shape = self._input_shape(onnx_path, saved_shape)
        key = Path(source)
        self._sessions[key] = _TorchSession(module, shape, self.device, self.fp16, self.cuda_graph)
        session = self._sessions[key]
        return Deployed(self.name, key, "input", shape,
                        {"source": str(source), "fp16": self.fp16, "cuda_graph": session.graph_status})

    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        session = self._session(deployed)
        return run_static_batches(session.run, np.asarray(batch, dtype=np.float32), deployed.input_shape[0])

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        sessions = [self._session(d) for d in deployed]
        times = interleave_blocks([s.time_once for s in sessions], warmup, iters, blocks, min_block_s)
        versions = self._versions()
        return [summarize(t, warmup, batch_size=d.input_shape[0], runtime=self.name, versions=versions,
                          extra={"fp16": self.fp16, "cuda_graph": s.graph_status, "gpu": versions.get("gpu"),
                                 "timing": "CUDA events around one forward pass (GPU time), synchronized per run"})
                for d, s, t in zip(deployed, sessions, times)]

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        import torch

        session = self._session(deployed)
        weights = sum(t.numel() * t.element_size()
                      for t in list(session.module.parameters()) + list(session.module.buffers()))
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(5):
            session.time_once()
        peak = torch.cuda.max_memory_allocated(self.device)
        return {"weights_bytes": int(weights), "peak_mb": round(peak / 2**20, 2),
                "peak_source": "torch.cuda.max_memory_allocated over 5 runs: tensors PyTorch allocated on the GPU "
                               "(weights, activations, static I/O), not the CUDA context or cuDNN workspaces "
                               "outside the caching allocator"}

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name, **self._versions(), "fp16": self.fp16, "cuda_graph": self.cuda_graph}

    def parity_tolerance(self) -> tuple[float, float]:
        return PARITY_TOLERANCE["fp16" if self.fp16 else "tf32"]  # cuDNN convolutions default to TF32

    def release(self) -> None:
        self._sessions.clear()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _load_module(self, onnx_path: Path):
        """(module, where it came from, saved input shape or None)."""
        if self.module is not None:
            # A copy: the session moves it to the GPU and maybe to fp16, which must not change the caller's.
            return copy.deepcopy(self.module), onnx_path, None
        path = onnx_path.with_name("model.pt")
        if not path.exists():
            raise ModelLoadError(f"{path} does not exist: the torch-cuda runner needs the model.pt saved next to "
                                 f"{onnx_path.name}, or a module passed as TorchCudaRunner(module=...)")
        from ...models.artifact import load_artifact

        # model.pt is rebuilt from its spec and weights, never unpickled, unless this build wrote it in its own
        # work directory: then the factory the user named, or the module they trusted, is this build's own.
        own = self.build_dir is not None and path.resolve().is_relative_to(self.build_dir)
        loaded = load_artifact(path, trust_pickle=own, allow_factory=own)
        return loaded.module, path, tuple(loaded.input_shape)

    def _input_shape(self, onnx_path: Path, saved_chw: tuple[int, ...] | None) -> tuple[int, ...]:
        """The ONNX's input shape (its static batch; 1 where dynamic), else constructor or saved C,H,W."""
        if self.input_shape:
            return self.input_shape
        if onnx_path.exists() and onnx_path.suffix == ".onnx":
            from ..trt.onnx_info import inspect_onnx

            shape = inspect_onnx(onnx_path).input_shape
            return tuple(d if d > 0 else 1 for d in shape)
        if saved_chw:
            return (1, *saved_chw)
        raise ModelLoadError(f"no input shape for {onnx_path}: pass TorchCudaRunner(input_shape=(N, C, H, W))")

    def _session(self, deployed: Deployed) -> "_TorchSession":
        try:
            return self._sessions[Path(deployed.path)]
        except KeyError:
            raise EdgepruneError(f"{deployed.path} was not prepared by this torch-cuda runner: call prepare() "
                                 "first") from None

    def _versions(self) -> dict[str, str]:
        import torch

        gpu = torch.cuda.get_device_name(self.device) if torch.cuda.is_available() else None
        return {"torch": torch.__version__, "cuda": str(torch.version.cuda), "gpu": str(gpu),
                "cudnn": str(torch.backends.cudnn.version())}


class _TorchSession:
    """A module on the GPU in eval mode with a static input buffer (what a CUDA graph replays from)."""

    def __init__(self, module, shape: tuple[int, ...], device: int, fp16: bool, cuda_graph: bool):
        import torch

        self.torch = torch
        self.dtype = torch.float16 if fp16 else torch.float32
        self.module = module.to(f"cuda:{device}", dtype=self.dtype).eval()
        self.static_in = torch.zeros(shape, dtype=self.dtype, device=f"cuda:{device}")
        self.stream = torch.cuda.Stream(device=device)
        self.graph = None
        self.static_out = None
        self.graph_status = "off"
        if cuda_graph:
            self._capture()

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.no_grad(), torch.cuda.stream(self.stream):
            self.static_in.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(self.dtype))
            out = self._forward()
            host = _first_tensor(out).float().cpu()
        self.stream.synchronize()
        return host.numpy()

    def time_once(self) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.no_grad(), torch.cuda.stream(self.stream):
            start.record(self.stream)
            self._forward()
            end.record(self.stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def _forward(self):
        if self.graph is not None:
            self.graph.replay()
            return self.static_out
        return self.module(self.static_in)

    def _capture(self) -> None:
        torch = self.torch
        try:
            with torch.no_grad():
                # Warm-up on the side stream first: cuDNN picks algorithms and allocates lazily, which a
                # capture must not see (the PyTorch CUDA-graph recipe).
                with torch.cuda.stream(self.stream):
                    for _ in range(3):
                        self.module(self.static_in)
                self.stream.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, stream=self.stream):
                    self.static_out = self.module(self.static_in)
            self.graph, self.graph_status = graph, "on"
        except Exception as exc:  # data-dependent control flow or host syncs in forward() cannot be captured
            torch.cuda.synchronize()
            self.graph, self.static_out = None, None
            self.graph_status = f"capture failed, running without: {type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed (%s); timing plain forward passes instead", exc)


def _first_tensor(out):
    if isinstance(out, (tuple, list)):
        return _first_tensor(out[0])
    if isinstance(out, dict):
        return _first_tensor(next(iter(out.values())))
    return out


__all__ = ["TorchCudaRunner"]
