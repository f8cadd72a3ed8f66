"""What both TensorRT runners (the Python API and trtexec) share as runners: the options they take from a build,
what the host needs, and what they ship (the engine and its sidecar)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..base.runner import Deployed, RunContext, Runner
from .plan import BuildOptions
from .sidecar import engine_artifacts


class TensorRTArtifacts(Runner):
    @classmethod
    def options_for(cls, context: RunContext) -> dict[str, Any]:
        """The device's default precision, and a timing cache kept for the whole build, so rebuilding an engine
        for the next attempt skips the kernel timing already done."""
        cache = str(Path(context.workdir) / "tensorrt.timing-cache") if context.workdir is not None else None
        return {"options": BuildOptions(precision=context.precision, timing_cache=cache)}

    @classmethod
    def host_support(cls, providers: tuple[str, ...], host: Any) -> str | None:
        return tensorrt_host_support(host)

    @classmethod
    def shipped(cls, deployed: Deployed) -> dict[str, Path]:
        return engine_artifacts(Path(deployed.path))


def tensorrt_host_support(host: Any) -> str | None:
    """Whether `host` (targets.HostInfo) has TensorRT in either form the runners use."""
    if host.tensorrt or host.trtexec:
        return None
    return ("TensorRT is not installed here (no tensorrt Python package, no trtexec): "
            "install the gpu extra on a CUDA host, or use JetPack's TensorRT on a Jetson")
