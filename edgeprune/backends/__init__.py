"""Runtimes that measure a deployed artifact, one folder each (after Polygraphy's backends): base/ (the Runner
interface, the interleaved timing schedule, statistics), onnxrt/, trt/ (TensorRT engine building and its two
runners), torch_cuda/, remote/ (any of them over SSH) and jetson/ (telemetry around any of them).

Each runner is registered by name and imported only when asked for, so a runtime that is missing (TensorRT on a
CPU host) degrades to a clear message instead of breaking the CLI. No code outside backends/ switches on a
runner's name: what a runner takes, needs beside the ONNX file, and ships, it says itself (base.runner.Runner)."""
from __future__ import annotations

import inspect
from typing import Any

from ..errors import ConfigError, RuntimeUnavailable
from ..registry import RUNNERS
from .base.runner import Deployed, RunContext, Runner

RUNNERS.register_lazy("onnxruntime", "edgeprune.backends.onnxrt.runner", "OnnxRuntimeRunner")
RUNNERS.register_lazy("onnxruntime-cuda", "edgeprune.backends.onnxrt.runner", "OnnxRuntimeCudaRunner")
RUNNERS.register_lazy("tensorrt", "edgeprune.backends.trt.runner", "TensorRTRunner")
RUNNERS.register_lazy("trtexec", "edgeprune.backends.trt.trtexec", "TrtexecRunner")
RUNNERS.register_lazy("torch-cuda", "edgeprune.backends.torch_cuda.runner", "TorchCudaRunner")


def runner_class(name: str) -> type[Runner]:
    return RUNNERS.get(name)


def get_runner(name: str, *, context: RunContext | None = None, require_available: bool = True,
               **options: Any) -> Runner:
    """The runner `name`, built from what it takes of the build's `context` plus explicit `options`. An option
    the runner does not take is refused, not dropped: a misspelt or misplaced option must not go unnoticed."""
    cls = runner_class(name)
    merged = {**(cls.options_for(context) if context is not None else {}), **options}
    params = inspect.signature(cls).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(merged) - set(params))
        if unknown:
            raise ConfigError(f"runner {name} takes no option {', '.join(unknown)}: it takes "
                              f"{', '.join(params) or 'none'}")
    runner = cls(**merged)
    runner.name = name
    if require_available:
        why = runner.available()
        if why:
            raise RuntimeUnavailable(f"runner {name} cannot run here: {why}")
    return runner


def measurable_here(spec: Any, host: Any) -> str | None:
    """None when device `spec` can be measured on `host` (this one or the far side); else the reason it cannot."""
    if spec.kind == "jetson":
        if not host.jetson_model:
            return f"this host is not a Jetson; measure {spec.name} on one, or over SSH with --remote user@host"
        if spec.jetson_model and spec.jetson_model.lower() not in host.jetson_model.lower():
            return f"this host is a {host.jetson_model}, not a {spec.name}"
    from ..targets.devices import device_refusal  # a TensorRT the device's JetPack releases do not ship

    why = device_refusal(spec, getattr(host, "tensorrt", None), whose="this host's")
    if why:
        return why
    if spec.runner not in RUNNERS:
        return f"device {spec.name} names runner {spec.runner!r}, which edgeprune does not know"
    return runner_class(spec.runner).host_support(tuple(spec.providers), host)


__all__ = ["Deployed", "RunContext", "Runner", "RUNNERS", "get_runner", "measurable_here", "runner_class"]
