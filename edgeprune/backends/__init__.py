"""Runner registry. Each runner lives in its own module and is imported only when asked for, so a runtime that
is missing (TensorRT on a CPU host) degrades to a clear message instead of breaking the CLI."""
from __future__ import annotations

import importlib
import inspect
from typing import Any

from ..errors import ConfigError, RuntimeUnavailable
from .base.runner import Deployed, Runner

RUNNERS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "onnxruntime": ("edgeprune.backends.onnxrt.runner", "OnnxRuntimeRunner", {}),
    "onnxruntime-cuda": ("edgeprune.backends.onnxrt.runner", "OnnxRuntimeRunner",
                         {"providers": ("CUDAExecutionProvider", "CPUExecutionProvider")}),
    "tensorrt": ("edgeprune.backends.trt.runner", "TensorRTRunner", {}),
    "trtexec": ("edgeprune.backends.trt.trtexec", "TrtexecRunner", {}),
    "torch-cuda": ("edgeprune.backends.torch_cuda.runner", "TorchCudaRunner", {}),
}

# Files a runner reads beside the ONNX file it is given: the torch-cuda runner times the PyTorch module itself.
BESIDE_ONNX: dict[str, tuple[str, ...]] = {"torch-cuda": ("model.pt",)}


def get_runner(name: str, *, require_available: bool = True, **options: Any) -> Runner:
    if name not in RUNNERS:
        raise ConfigError(f"unknown runner {name!r}: known runners are {', '.join(RUNNERS)}")
    module, cls, defaults = RUNNERS[name]
    runner_cls = getattr(importlib.import_module(module), cls)
    # The loop passes the same options to every runner; one that has no use for an option (threads mean
    # nothing to TensorRT) does not take it.
    accepted = inspect.signature(runner_cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        options = {k: v for k, v in options.items() if k in accepted}
    runner = runner_cls(**{**defaults, **options})
    runner.name = name
    if require_available:
        why = runner.available()
        if why:
            raise RuntimeUnavailable(f"runner {name} cannot run here: {why}")
    return runner


__all__ = ["BESIDE_ONNX", "Deployed", "Runner", "RUNNERS", "get_runner"]
