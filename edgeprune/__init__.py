"""edgeprune: prune a PyTorch vision model until its latency, measured on the target runtime, meets a budget."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["build", "BuildConfig", "BuildResult", "__version__"]


def __getattr__(name: str):
    # Lazy: `python -m edgeprune.backends.onnxrt.worker` must not pay for importing torch.
    if name == "build" or name == "BuildResult":
        from .pipeline import loop

        return getattr(loop, name)
    if name == "BuildConfig":
        from .config import BuildConfig

        return BuildConfig
    raise AttributeError(name)
