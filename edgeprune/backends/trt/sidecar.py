"""The engine's sidecar (`<engine>.json`: what it was built from and for), whether an engine can be reused, and
what ships of it."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from ...errors import EdgepruneError
from ...files import atomic_write_bytes
from .plan import BuildOptions, DictRecord, parse_trt_version, version_str

log = logging.getLogger(__name__)

METADATA_SUFFIX = ".json"


@dataclass(frozen=True)
class EngineMetadata(DictRecord):
    """What an engine was built from and for; stored next to it as `<engine>.json`.

    An engine only runs on the TensorRT version (major.minor) and GPU architecture it was built with.
    """

    tensorrt_version: str
    gpu_name: str | None
    compute_capability: str | None
    precision: str
    input_shapes: dict[str, list[int]]      # -1 marks a dynamic dim
    onnx_sha256: str
    build_options: dict[str, Any]
    plan: dict[str, Any] = field(default_factory=dict)
    profile_shapes: dict[str, list[list[int]]] = field(default_factory=dict)  # name -> [min, opt, max]
    built_with: str = "tensorrt-python"      # or "trtexec"
    build_seconds: float | None = None
    created: str = ""
    # The engine file's size and sha256, filled in by write_metadata: a truncated or replaced engine is refused
    # before TensorRT deserializes it (sidecars of older edgeprune versions lack them and skip that check).
    engine_bytes: int | None = None
    engine_sha256: str | None = None


def engine_artifacts(engine: Path) -> dict[str, Path]:
    """What ships of a built engine: model.engine and its sidecar, under their artifact names."""
    if engine.suffix != ".engine" or not engine.is_file():
        return {}
    out = {"model.engine": engine}
    if metadata_path(engine).is_file():
        out[metadata_path(Path("model.engine")).name] = metadata_path(engine)
    return out


def metadata_path(engine_path: Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + METADATA_SUFFIX)


def write_metadata(engine_path: Path, meta: EngineMetadata) -> Path:
    """Write the sidecar atomically, so a crash never leaves an engine described by a half-written file; with
    the engine's size and hash when the engine is there (it is written first)."""
    path = metadata_path(engine_path)
    if Path(engine_path).is_file():
        data = Path(engine_path).read_bytes()
        meta = replace(meta, engine_bytes=len(data), engine_sha256=hashlib.sha256(data).hexdigest())
    atomic_write_bytes(path, (json.dumps(meta.to_dict(), indent=2, sort_keys=True) + "\n").encode())
    return path


def read_metadata(engine_path: Path) -> EngineMetadata | None:
    path = metadata_path(engine_path)
    try:
        return EngineMetadata.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise EdgepruneError(f"engine sidecar {path} is unreadable ({exc}): delete it and the engine, then "
                             "rebuild") from None


def check_engine_compatible(meta: EngineMetadata, current_trt_version: str | Sequence[int],
                            current_gpu_name: str | None, current_cc: str | None) -> None:
    """Raise EdgepruneError (one line) when the engine cannot run here: other TensorRT major.minor or GPU arch."""
    built = parse_trt_version(meta.tensorrt_version)
    here = (parse_trt_version(current_trt_version) if isinstance(current_trt_version, str)
            else tuple(int(x) for x in current_trt_version))
    where = f" for {meta.gpu_name}" if meta.gpu_name else ""
    if built[:2] != tuple(here[:2]):
        raise EdgepruneError(f"the engine was built with TensorRT {version_str(built[:2])}{where} but this host "
                             f"has TensorRT {version_str(here[:2])}: rebuild the engine on this device")
    if meta.compute_capability and current_cc and str(meta.compute_capability) != str(current_cc):
        raise EdgepruneError(f"the engine was built for compute capability {meta.compute_capability}{where} but "
                             f"this GPU ({current_gpu_name or 'unknown'}) is {current_cc}: rebuild the engine on "
                             "this device")
    if not meta.compute_capability or not current_cc:
        log.warning("cannot confirm the engine's GPU architecture (built for %s, this GPU %s)",
                    meta.compute_capability or "unknown", current_cc or "unknown")
    elif meta.gpu_name and current_gpu_name and meta.gpu_name != current_gpu_name:
        log.info("engine built on %s, running on %s (same compute capability %s)", meta.gpu_name,
                 current_gpu_name, current_cc)


def check_engine_file(engine_path: Path, meta: EngineMetadata | None) -> None:
    """Raise EdgepruneError (one line) when the engine file is not the one its sidecar describes: cut short (a
    copy or a build that was killed) or replaced. Checked before deserializing, which a damaged plan can crash."""
    if meta is None or meta.engine_bytes is None:
        return
    try:
        data = Path(engine_path).read_bytes()
    except OSError as exc:
        raise EdgepruneError(f"engine {engine_path} cannot be read ({exc}): rebuild it") from None
    if len(data) != meta.engine_bytes:
        what = "truncated" if len(data) < meta.engine_bytes else "longer than built"
        raise EdgepruneError(f"engine {engine_path} is {what}: {len(data)} bytes where its sidecar says "
                             f"{meta.engine_bytes}; rebuild the engine")
    if meta.engine_sha256 and hashlib.sha256(data).hexdigest() != meta.engine_sha256:
        raise EdgepruneError(f"engine {engine_path} is not the one its sidecar describes (sha256 differs): "
                             "rebuild the engine")


def stale_reason(meta: EngineMetadata | None, onnx_sha256: str, options: BuildOptions) -> str | None:
    """Why an existing engine does not match this ONNX and these options (None: it does, reuse it)."""
    if meta is None:
        return "no sidecar describes it"
    if meta.onnx_sha256 != onnx_sha256:
        return "it was built from another ONNX"
    wanted = {k: v for k, v in options.to_dict().items() if k != "timing_cache"}
    had = {k: v for k, v in meta.build_options.items() if k != "timing_cache"}
    if wanted != had:
        diff = sorted(k for k in wanted if wanted.get(k) != had.get(k))
        return f"its build options differ ({', '.join(diff)})"
    return None


def rebuild_reason(engine_path: Path, onnx_sha256: str, options: BuildOptions,
                   trt_version: str | Sequence[int], device_identity, rebuild: bool = False
                   ) -> tuple[EngineMetadata | None, str | None]:
    """The engine's sidecar and why it must be (re)built; None as the reason means reuse it. `device_identity()`
    gives (GPU name, compute capability) and is asked only when the engine is otherwise reusable."""
    meta = read_metadata(engine_path) if engine_path.exists() else None
    if rebuild:
        return meta, "a rebuild was asked for"
    if not engine_path.exists():
        return meta, "there is no engine yet"
    reason = stale_reason(meta, onnx_sha256, options)
    if reason is None:
        try:
            check_engine_file(engine_path, meta)
        except EdgepruneError as exc:
            return meta, exc.message
        gpu, cc = device_identity()
        try:
            check_engine_compatible(meta, trt_version, gpu, cc)
        except EdgepruneError as exc:
            reason = exc.message
    return meta, reason


__all__ = ["METADATA_SUFFIX", "EngineMetadata", "check_engine_compatible", "check_engine_file", "engine_artifacts",
           "metadata_path", "read_metadata", "rebuild_reason", "stale_reason", "write_metadata"]
