"""TensorRT runner: builds (or reuses) an engine and runs it in this process through the named-tensor API.

Execution uses set_tensor_address + execute_async_v3 on a CUDA stream (TensorRT 8.5 and newer, the only path on
10.x/11.x); device buffers, the stream, CUDA events and CUDA-graph capture come from PyTorch, which is already a
dependency, so neither cuda-python nor pycuda is needed. Timing is GPU time between two CUDA events around one
enqueue, synchronized after each run: the latency of one request, as an edge application sees it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ...errors import EdgepruneError
from ..base.runner import Deployed, gpu_parity_tolerance, run_static_batches
from ..base.schedule import interleave_blocks
from ..base.stats import LatencyStats, summarize
from .api import (create, create_execution_context, cuda_device_identity, import_tensorrt, io_dtype, last_error,
                  set_input_shape, set_tensor_address, tensorrt_logger)
from .base import TensorRTArtifacts
from .engine import build_engine
from .onnx_info import inspect_onnx
from .plan import MIN_SUPPORTED, BuildOptions, parse_trt_version, version_str
from .sidecar import (EngineMetadata, check_engine_compatible, check_engine_file, read_metadata,
                      rebuild_reason)

log = logging.getLogger(__name__)


class TensorRTRunner(TensorRTArtifacts):
    name = "tensorrt"

    def __init__(self, options: BuildOptions | None = None, precision: str | None = None, cuda_graph: bool = False,
                 rebuild: bool = False, calibration_batches: Iterable[np.ndarray] | None = None, device: int = 0):
        options = options or BuildOptions()
        if precision is not None:
            options = BuildOptions.from_dict({**options.to_dict(), "precision": precision})
        self.options = options
        self.cuda_graph = cuda_graph
        self.rebuild = rebuild
        self.calibration_batches = calibration_batches
        self.device = device
        self._sessions: dict[Path, _EngineSession] = {}

    def available(self) -> str | None:
        try:
            import tensorrt as trt
        except Exception as exc:
            return (f"TensorRT is not installed on this host (the tensorrt Python package cannot be imported: "
                    f"{type(exc).__name__}: {exc})")
        try:
            version = parse_trt_version(trt.__version__)
        except ValueError:
            return f"the tensorrt package reports an unreadable version {trt.__version__!r}"
        if version[:2] < MIN_SUPPORTED:
            return f"TensorRT {trt.__version__} is older than {version_str(MIN_SUPPORTED)}, the oldest supported"
        try:
            import torch
        except Exception as exc:
            return f"PyTorch, which provides the CUDA buffers and stream, cannot be imported ({exc})"
        if not torch.cuda.is_available():
            return "no CUDA GPU visible to PyTorch (torch.cuda.is_available() is False), so TensorRT cannot run"
        return None

    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        trt = import_tensorrt()
        onnx_path, workdir = Path(onnx_path), Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        engine_path = workdir / f"{onnx_path.stem}.{self.options.precision}.engine"
        meta = self._engine_for(trt, onnx_path, engine_path)
        session = self._session(engine_path, fresh=True)
        return Deployed(self.name, engine_path, session.input_name, session.input_shape,
                        {"onnx": str(onnx_path), "engine_metadata": meta.to_dict(),
                         "cuda_graph": session.graph_status})

    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        session = self._session(deployed.path)
        return run_static_batches(session.run, np.asarray(batch, dtype=np.float32), deployed.input_shape[0])

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        sessions = [self._session(d.path) for d in deployed]
        times = interleave_blocks([s.time_once for s in sessions], warmup, iters, blocks, min_block_s)
        versions = self._versions()
        return [summarize(t, warmup, batch_size=d.input_shape[0], runtime=self.name, versions=versions,
                          extra={"precision": d.meta.get("engine_metadata", {}).get("precision"),
                                 "cuda_graph": s.graph_status, "gpu": versions.get("gpu"),
                                 "timing": "CUDA events around execute_async_v3 (GPU time), synchronized per run",
                                 "data_transfers": False})
                for d, s, t in zip(deployed, sessions, times)]

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        import torch

        trt = import_tensorrt()
        torch.cuda.synchronize(self.device)
        free_before, _ = torch.cuda.mem_get_info(self.device)
        session = _EngineSession(trt, deployed.path, self.device, cuda_graph=False)
        for _ in range(5):
            session.time_once()
        torch.cuda.synchronize(self.device)
        free_after, _ = torch.cuda.mem_get_info(self.device)
        engine = session.engine
        # device_memory_size is the execution context's scratch memory; TensorRT 10.1 added _v2, 11.x drops
        # the old name, so ask for whichever this version has.
        activation = next((int(getattr(engine, a)) for a in ("device_memory_size_v2", "device_memory_size")
                           if hasattr(engine, a)), None)
        del session
        return {"weights_bytes": deployed.path.stat().st_size, "engine_bytes": deployed.path.stat().st_size,
                "activation_bytes": activation, "peak_mb": round((free_before - free_after) / 2**20, 2),
                "peak_source": "device memory taken (cudaMemGetInfo before/after) by deserializing the engine, "
                               "creating an execution context with its I/O buffers and 5 runs; weights_bytes is "
                               "the serialized engine size; other processes on the GPU perturb the reading"}

    def parity_tolerance(self) -> tuple[float, float]:
        return gpu_parity_tolerance(self.options.precision)

    def describe(self) -> dict[str, Any]:
        return {"runner": self.name, **self._versions(), "build_options": self.options.to_dict(),
                "cuda_graph": self.cuda_graph}

    def release(self) -> None:
        self._sessions.clear()

    # -- helpers ---------------------------------------------------------------------------------------------
    def _engine_for(self, trt, onnx_path: Path, engine_path: Path) -> EngineMetadata:
        """Reuse the engine in `engine_path` when it was built from this ONNX, these options and for this device."""
        meta, reason = rebuild_reason(engine_path, inspect_onnx(onnx_path).sha256, self.options, trt.__version__,
                                      lambda: cuda_device_identity(self.device), self.rebuild)
        if reason is None:
            log.info("reusing %s", engine_path)
            return meta
        log.info("building %s: %s", engine_path.name, reason)
        self._sessions.pop(engine_path, None)
        return build_engine(onnx_path, engine_path, self.options, self.calibration_batches)

    def _session(self, engine_path: Path, fresh: bool = False) -> "_EngineSession":
        engine_path = Path(engine_path)
        if fresh or engine_path not in self._sessions:
            self._sessions[engine_path] = _EngineSession(import_tensorrt(), engine_path, self.device,
                                                         self.cuda_graph)
        return self._sessions[engine_path]

    def _versions(self) -> dict[str, str]:
        import torch

        trt = import_tensorrt()
        gpu, cc = cuda_device_identity(self.device)
        return {"tensorrt": trt.__version__, "torch": torch.__version__, "cuda": str(torch.version.cuda),
                "gpu": str(gpu), "compute_capability": str(cc)}


class _EngineSession:
    """A deserialized engine with one execution context, static device buffers bound by name, and a stream."""

    def __init__(self, trt, engine_path: Path, device: int, cuda_graph: bool):
        import torch

        self.torch = torch
        self.trt_logger = tensorrt_logger(trt)
        # What the sidecar says is checked first: an engine from another TensorRT or GPU, or cut short, is one
        # line here, where deserializing it could fail without a reason or crash.
        meta = read_metadata(Path(engine_path))
        if meta is not None:
            check_engine_file(Path(engine_path), meta)
            check_engine_compatible(meta, trt.__version__, *cuda_device_identity(device))
        self.runtime = create(self.trt_logger, trt.Runtime, "Runtime")
        self.engine = self.runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise EdgepruneError(f"TensorRT {trt.__version__} cannot load {engine_path} (truncated, or built by "
                                 "another TensorRT version or for another GPU; rebuild the engine on this device): "
                                 f"{last_error(self.trt_logger, 'no details logged')}")
        self.context = create_execution_context(self.engine, self.trt_logger, str(engine_path))
        self.stream = torch.cuda.Stream(device=device)

        def allocate(shape, dtype_name):
            return torch.zeros(shape, dtype=getattr(torch, dtype_name), device=f"cuda:{device}")

        self.input_name, self.output_name, self.buffers = bind_io(trt, self.engine, self.context, allocate,
                                                                  self.trt_logger, str(engine_path))
        self.input_shape = tuple(self.buffers[self.input_name].shape)
        # The buffers were zeroed on PyTorch's default stream; TensorRT works on self.stream.
        torch.cuda.synchronize(device)
        self.graph = None
        self.graph_status = "off"
        if cuda_graph:
            self._capture()

    def run(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        inp = self.buffers[self.input_name]
        with torch.cuda.stream(self.stream):
            inp.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(inp.dtype))
            self._launch()
            out = self.buffers[self.output_name].float().cpu()
        self.stream.synchronize()
        return out.numpy()

    def time_once(self) -> float:
        torch = self.torch
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        with torch.cuda.stream(self.stream):
            start.record(self.stream)
            self._launch()
            end.record(self.stream)
        end.synchronize()
        return float(start.elapsed_time(end))

    def _launch(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._enqueue()

    def _enqueue(self) -> None:
        # execute_async_v3 exists from 8.5 on, the oldest TensorRT edgeprune accepts (plan.MIN_SUPPORTED).
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EdgepruneError(f"TensorRT execute_async_v3 failed: {last_error(self.trt_logger)}")

    def _capture(self) -> None:
        """Capture one enqueue into a CUDA graph; fall back to plain enqueues when the engine is not capturable."""
        torch = self.torch
        try:
            # TensorRT sets up lazily on the first enqueue; that must not land inside the capture.
            with torch.cuda.stream(self.stream):
                self._enqueue()
            self.stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self.stream):
                self._enqueue()
            self.graph, self.graph_status = graph, "on"
        except Exception as exc:  # e.g. data-dependent shapes or a non-capturable plugin
            torch.cuda.synchronize()
            self.graph, self.graph_status = None, f"capture failed, running without: {type(exc).__name__}: {exc}"
            log.warning("CUDA graph capture failed (%s); timing plain enqueues instead", exc)


def bind_io(trt, engine, context, allocate, trt_logger, where: str):
    """(input name, output name, {name: buffer}): every I/O tensor of `engine` given a buffer from
    `allocate(shape, torch dtype name)` and bound to `context` by name, each TensorRT status checked.

    A dynamic batch runs at the optimization profile's opt shape: the one the kernels were tuned for.
    """
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if not inputs or not outputs:
        raise EdgepruneError(f"{where} has {len(inputs)} inputs and {len(outputs)} outputs; expected both")
    dtypes = {n: io_dtype(engine.get_tensor_dtype(n)) for n in names}  # refuse an unusable type before binding
    for name in inputs:
        shape = tuple(engine.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            shape = tuple(engine.get_tensor_profile_shape(name, 0)[1])
            set_input_shape(context, name, shape, trt_logger)
    buffers = {}
    for name in names:
        shape = tuple(int(d) for d in context.get_tensor_shape(name))
        if any(d < 0 for d in shape):
            raise EdgepruneError(f"{where}: output {name!r} has shape {shape} even with every input shape set "
                                 "(a data-dependent shape edgeprune cannot preallocate)")
        buffers[name] = allocate(shape, dtypes[name])
        set_tensor_address(context, name, buffers[name].data_ptr(), trt_logger)
    return inputs[0], outputs[0], buffers


__all__ = ["TensorRTRunner", "bind_io"]
