"""TensorRT engines: what to build (a pure plan, per TensorRT version), building it, and the engine's sidecar.

Three TensorRT generations are in the field and each one changed the builder API:
  8.5/8.6 (JetPack 5, JetPack 6.0)  networks need the EXPLICIT_BATCH creation flag; FP16/INT8 builder flags;
                                     INT8 from an IInt8EntropyCalibrator2; builder_optimization_level since 8.6.
  10.x   (JetPack 6.1+, x86)        explicit batch is implied (the flag is deprecated and ignored); the same
                                     precision flags still work ("weak typing", deprecated since 10.12);
                                     calibrators deprecated since 10.1; STRONGLY_TYPED networks available.
  11.x   (x86 / SBSA; no JetPack)   every network is strongly typed: BuilderFlag.FP16/INT8/OBEY_PRECISION_...
                                     and IBuilderConfig.int8_calibrator are removed, so reduced precision must
                                     already be in the ONNX (ModelOpt AutoCast for FP16, Q/DQ nodes for INT8).
`plan_build` turns options + version into a `BuildPlan` (no tensorrt import, so it is tested everywhere);
`build_engine` applies a plan with the real API. References: the TensorRT Python API docs (IBuilderConfig,
OnnxParser, IInt8EntropyCalibrator2) and the 8.x->10.x and 10.x->11.x migration guides.
"""
from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from ...errors import ConfigError, EdgepruneError, RuntimeUnavailable
from ...files import sha256_file

log = logging.getLogger(__name__)
_LOG = log  # build_engine's `log` parameter shadows the module logger

PRECISIONS = ("fp32", "fp16", "int8", "best")
MIN_SUPPORTED = (8, 5)  # the named-tensor runtime API (set_tensor_address, execute_async_v3) starts at 8.5
METADATA_SUFFIX = ".json"


# ---------------------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------------------
def parse_trt_version(text: str) -> tuple[int, int, int]:
    """(major, minor, patch) from "8.6.2.3", "10.3.0", "10.3", or trtexec's banner code "v8601" / "v100600".

    The banner code is NV_TENSORRT_VERSION: major*1000+minor*100+patch up to 8.x, major*10000+minor*100+patch
    from 10.0 on (so v100600 is 10.6.0 and v8601 is 8.6.1).
    """
    s = str(text).strip()
    dotted = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", s)
    if dotted:
        return int(dotted.group(1)), int(dotted.group(2)), int(dotted.group(3) or 0)
    code = re.search(r"v?(\d{4,})", s)
    if code:
        n = int(code.group(1))
        if n >= 100000:
            return n // 10000, (n // 100) % 100, n % 100
        return n // 1000, (n // 100) % 10, n % 100
    raise ValueError(f"not a TensorRT version: {text!r}")


def version_str(version: Sequence[int]) -> str:
    return ".".join(str(v) for v in version)


# ---------------------------------------------------------------------------------------------------------
# Options and plan
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildOptions:
    """What the user asks of an engine build. Batch sizes matter only when the ONNX batch dim is dynamic."""

    precision: str = "fp32"             # fp32 | fp16 | int8 | best (fp16+int8)
    workspace_mb: int | None = 1024     # WORKSPACE memory-pool limit; None = TensorRT's default (device memory)
    optimization_level: int | None = None  # builder_optimization_level 0-5 (TensorRT >= 8.6; its default is 3)
    dla_core: int | None = None
    gpu_fallback: bool = True           # layers DLA cannot run go to the GPU instead of failing the build
    timing_cache: str | None = None     # path; reused across builds so rebuilds skip kernel timing
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    strongly_typed: bool = False        # precision comes from the ONNX's tensor types (always so on 11.x)

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown TensorRT precision {self.precision!r}: use one of {', '.join(PRECISIONS)}")
        if self.workspace_mb is not None and int(self.workspace_mb) <= 0:
            raise ConfigError(f"workspace_mb must be positive (got {self.workspace_mb})")
        if self.optimization_level is not None and not 0 <= int(self.optimization_level) <= 5:
            raise ConfigError(f"optimization_level must be 0-5 (got {self.optimization_level})")
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise ConfigError(f"dla_core must be 0 or more (got {self.dla_core})")
        if not 1 <= self.min_batch <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"batch sizes must satisfy 1 <= min <= opt <= max (got {self.min_batch}/"
                              f"{self.opt_batch}/{self.max_batch})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildOptions":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class BuildPlan:
    """Exactly what `build_engine` will set, named as in the TensorRT Python API."""

    trt_version: tuple[int, int, int]
    precision: str
    network_flags: tuple[str, ...]       # NetworkDefinitionCreationFlag members
    builder_flags: tuple[str, ...]       # BuilderFlag members
    workspace_bytes: int | None          # config.set_memory_pool_limit(MemoryPoolType.WORKSPACE, n)
    optimization_level: int | None       # config.builder_optimization_level
    calibration: str | None              # "entropy2" (IInt8EntropyCalibrator2) | "qdq" (in the ONNX) | None
    calibration_profile: bool            # config.set_calibration_profile(profile) (dynamic batch + calibrator)
    default_device: str                  # config.default_device_type: "GPU" | "DLA"
    dla_core: int | None                 # config.DLA_core
    profile: tuple[int, int, int] | None  # (min, opt, max) batch of the optimization profile
    timing_cache: str | None
    strongly_typed: bool
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["trt_version"] = version_str(self.trt_version)
        return json.loads(json.dumps(d))  # tuples as lists: the form it has after a sidecar round trip


def plan_build(options: BuildOptions, trt_version: Sequence[int], has_dla: bool, dynamic_batch: bool, *,
               has_calibration_data: bool = False, onnx_has_qdq: bool = False,
               onnx_has_fp16: bool = False) -> BuildPlan:
    """Decide flags and settings for `options` on TensorRT `trt_version`; raise when the combination cannot work.

    `has_calibration_data`: calibration batches (or a calibration cache) will be supplied for INT8.
    `onnx_has_qdq` / `onnx_has_fp16`: the ONNX already carries Q/DQ nodes / float16 tensors (see inspect_onnx).
    """
    v = tuple(int(x) for x in trt_version)[:3]
    v = v + (0,) * (3 - len(v))
    major = v[0]
    notes: list[str] = []
    if v[:2] < MIN_SUPPORTED:
        raise RuntimeUnavailable(f"TensorRT {version_str(v)} is too old: edgeprune needs TensorRT "
                                 f"{version_str(MIN_SUPPORTED)} or newer (JetPack 5.1+)")
    prec = options.precision

    # -- typing: strong on 11.x always, on 10.x when asked, unavailable on 8.x ----------------------------
    strongly_typed = major >= 11 or options.strongly_typed
    if strongly_typed and major < 10:
        raise RuntimeUnavailable(f"strongly typed networks need TensorRT 10 or newer (this is "
                                 f"{version_str(v)}): drop strongly_typed")
    network_flags: list[str] = []
    if major < 10:
        network_flags.append("EXPLICIT_BATCH")  # required on 8.x; deprecated and ignored from 10.0
    if strongly_typed:
        # Required on 10.x; on 11.x accepted but ignored (strong typing is always on), so setting it is safe.
        network_flags.append("STRONGLY_TYPED")

    # -- precision -> builder flags / calibration ------------------------------------------------------------
    builder_flags: list[str] = []
    calibration: str | None = None
    wants_int8 = prec in ("int8", "best")
    if strongly_typed:
        why = "TensorRT 11 builds every network strongly typed" if major >= 11 else "strongly_typed is set"
        if prec == "best":
            raise RuntimeUnavailable(f"precision 'best' needs the weak-typing precision flags, which {why} rules "
                                     "out (removed in TensorRT 11): quantize the ONNX (Q/DQ) or convert it to "
                                     "FP16 with ModelOpt, then build it as int8 / fp16")
        if prec == "fp16" and not onnx_has_fp16:
            raise RuntimeUnavailable(f"fp16 is not a builder flag when {why} (BuilderFlag.FP16 is removed in "
                                     "TensorRT 11): convert the ONNX to mixed precision first (python -m "
                                     "modelopt.onnx.autocast --onnx_path model.onnx) and build that, or use fp32")
        if prec == "int8" and not onnx_has_qdq:
            raise RuntimeUnavailable(f"int8 needs an explicitly quantized ONNX when {why} (BuilderFlag.INT8 and "
                                     "IBuilderConfig.int8_calibrator are removed in TensorRT 11): quantize it "
                                     "with Q/DQ nodes (e.g. NVIDIA ModelOpt) and build that, or use fp32")
        if prec == "int8":
            calibration = "qdq"
        if prec != "fp32":
            notes.append(f"{prec} comes from the ONNX's own types; no precision builder flags are set")
    else:
        if prec in ("fp16", "best"):
            builder_flags.append("FP16")
        if wants_int8:
            builder_flags.append("INT8")
            if onnx_has_qdq:
                calibration = "qdq"  # explicit quantization: INT8 enables the Q/DQ layers, no calibrator
            elif has_calibration_data:
                calibration = "entropy2"
                if major >= 10:
                    notes.append("IInt8EntropyCalibrator2 is deprecated since TensorRT 10.1 (explicit "
                                 "quantization supersedes it); it still works on 10.x")
            else:
                raise ConfigError(f"precision {prec} needs INT8 scales: give calibration batches, or an ONNX "
                                  "quantized with Q/DQ nodes; without them TensorRT would quantize blindly")
        if major == 10 and v[1] >= 12 and builder_flags:
            notes.append("weak typing (BuilderFlag.FP16/INT8) is deprecated since TensorRT 10.12 and removed "
                         "in 11: plan for strongly typed ONNX models")

    # -- DLA -----------------------------------------------------------------------------------------------
    default_device, dla_core = "GPU", None
    if options.dla_core is not None:
        if major >= 11:
            raise RuntimeUnavailable("TensorRT 11 does not support DLA (nor JetPack): build DLA engines with "
                                     "JetPack's TensorRT 8.6 / 10.x")
        if not has_dla:
            raise RuntimeUnavailable(f"DLA core {options.dla_core} was asked for, but this device has no DLA "
                                     "(Orin Nano and x86 GPUs have none): drop dla_core")
        if prec == "fp32":
            raise ConfigError("DLA runs FP16 and INT8 only: use precision fp16 or int8 with dla_core")
        default_device, dla_core = "DLA", int(options.dla_core)
        if options.gpu_fallback:
            builder_flags.append("GPU_FALLBACK")
        if dynamic_batch:
            notes.append("DLA needs static shapes: layers with a dynamic batch dim will run on the GPU")

    # -- shapes, memory, optimization level, timing cache ----------------------------------------------------
    profile = None
    if dynamic_batch:
        profile = (options.min_batch, options.opt_batch, options.max_batch)
    elif (options.min_batch, options.opt_batch, options.max_batch) != (1, 1, 1):
        notes.append("the ONNX batch dim is static, so min/opt/max batch are ignored")
    calibration_profile = calibration == "entropy2" and dynamic_batch
    opt_level = options.optimization_level
    if opt_level is not None and v[:2] < (8, 6):
        notes.append(f"builder_optimization_level needs TensorRT 8.6+; ignored on {version_str(v)}")
        opt_level = None
    workspace = int(options.workspace_mb) * (1 << 20) if options.workspace_mb is not None else None

    return BuildPlan(trt_version=v, precision=prec, network_flags=tuple(network_flags),
                     builder_flags=tuple(builder_flags), workspace_bytes=workspace, optimization_level=opt_level,
                     calibration=calibration, calibration_profile=calibration_profile,
                     default_device=default_device, dla_core=dla_core, profile=profile,
                     timing_cache=options.timing_cache, strongly_typed=strongly_typed, notes=tuple(notes))


def profile_shapes(plan: BuildPlan, input_shape: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """(min, opt, max) full shapes for the profile: the plan's batch sizes in front of the other dims."""
    if plan.profile is None:
        raise ValueError("the plan has no optimization profile (static batch)")
    rest = tuple(int(d) for d in input_shape[1:])
    if any(d < 1 for d in rest):
        raise EdgepruneError(f"only the batch dim may be dynamic; input shape {tuple(input_shape)} has others")
    return tuple((b, *rest) for b in plan.profile)


# ---------------------------------------------------------------------------------------------------------
# The engine sidecar
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EngineMetadata:
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineMetadata":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def engine_artifacts(engine: Path) -> dict[str, Path]:
    """What ships of a built engine: model.engine and its sidecar, under their artifact names."""
    if engine.suffix != ".engine" or not engine.is_file():
        return {}
    out = {"model.engine": engine}
    if metadata_path(engine).is_file():
        out[metadata_path(Path("model.engine")).name] = metadata_path(engine)
    return out


def tensorrt_host_support(host: Any) -> str | None:
    """Whether `host` (targets.HostInfo) has TensorRT in either form the runners use."""
    if host.tensorrt or host.trtexec:
        return None
    return ("TensorRT is not installed here (no tensorrt Python package, no trtexec): "
            "install the gpu extra on a CUDA host, or use JetPack's TensorRT on a Jetson")


def metadata_path(engine_path: Path) -> Path:
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + METADATA_SUFFIX)


def write_metadata(engine_path: Path, meta: EngineMetadata) -> Path:
    """Write the sidecar atomically, so a crash never leaves an engine described by a half-written file."""
    path = metadata_path(engine_path)
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
        gpu, cc = device_identity()
        try:
            check_engine_compatible(meta, trt_version, gpu, cc)
        except EdgepruneError as exc:
            reason = exc.message
    return meta, reason


# ---------------------------------------------------------------------------------------------------------
# The ONNX side
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OnnxInfo:
    input_name: str
    input_shape: tuple[int, ...]   # -1 where the dim is symbolic
    has_qdq: bool                  # QuantizeLinear/DequantizeLinear present: explicitly quantized
    has_fp16: bool                 # float16 initializers or graph inputs: converted to (mixed) half precision
    sha256: str

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.input_shape) and self.input_shape[0] < 1


def inspect_onnx(onnx_path: Path) -> OnnxInfo:
    """Input, quantization and precision facts of an ONNX file, without loading external weight data."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs:
        raise EdgepruneError(f"{onnx_path} has no graph input")
    first = inputs[0]
    dims = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else -1
                 for d in first.type.tensor_type.shape.dim)
    ops = {n.op_type for n in model.graph.node}
    half = onnx.TensorProto.FLOAT16
    has_fp16 = (any(i.data_type == half for i in model.graph.initializer)
                or any(i.type.tensor_type.elem_type == half for i in model.graph.input))
    return OnnxInfo(first.name, dims, bool(ops & {"QuantizeLinear", "DequantizeLinear"}), has_fp16,
                    sha256_file(onnx_path))


def rechunk(batches: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Re-cut calibration data into exactly `batch_size` samples each (the engine's batch); drop the remainder.

    A calibrator must hand TensorRT full batches of the size it announced; a short tail would be read past.
    """
    pending: list[np.ndarray] = []
    have = 0
    for b in batches:
        b = np.asarray(b, dtype=np.float32)
        pending.append(b)
        have += len(b)
        while have >= batch_size:
            joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:batch_size])
            rest = joined[batch_size:]
            pending, have = ([rest] if len(rest) else []), len(rest)


# ---------------------------------------------------------------------------------------------------------
# Building with the real API
# ---------------------------------------------------------------------------------------------------------
def import_tensorrt():
    """The tensorrt module, or RuntimeUnavailable with what to install."""
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a broken install failing to load libnvinfer
        raise RuntimeUnavailable(f"TensorRT is not installed here: the tensorrt Python package cannot be imported "
                                 f"({type(exc).__name__}: {exc}); on a Jetson use JetPack's python3-libnvinfer, "
                                 "on x86 `pip install tensorrt`") from None
    return trt


def cuda_device_identity(device: int = 0) -> tuple[str | None, str | None]:
    """(GPU name, compute capability "8.7") via PyTorch, or (None, None) when no CUDA GPU is visible."""
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return torch.cuda.get_device_name(device), f"{major}.{minor}"
    except Exception as exc:  # a CPU-only or broken torch: identity unknown, which callers report
        log.debug("no CUDA identity from torch: %s", exc)
    return None, None


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions = BuildOptions(),
                 calibration_batches: Iterable[np.ndarray] | None = None,
                 log: logging.Logger | None = None) -> EngineMetadata:
    """Build a serialized engine from `onnx_path` into `engine_path` (atomically) and write its sidecar.

    INT8 calibration reads `calibration_batches` (float32 arrays, NCHW, any batch size: re-cut to the engine's)
    through an IInt8EntropyCalibrator2 whose device buffer is a torch.cuda tensor: PyTorch is already a
    dependency and gives device memory, copies and a data pointer without adding cuda-python or pycuda.
    """
    logger = log if log is not None else _LOG
    trt = import_tensorrt()
    version = parse_trt_version(trt.__version__)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = inspect_onnx(onnx_path)
    gpu_name, cc = cuda_device_identity()

    trt_logger = tensorrt_logger(trt, logger)
    trt_logger.errors.clear()
    builder = trt.Builder(trt_logger)
    has_dla = int(getattr(builder, "num_DLA_cores", 0) or 0) > 0
    if options.dla_core is not None and has_dla and options.dla_core >= builder.num_DLA_cores:
        raise ConfigError(f"DLA core {options.dla_core} does not exist: this device has {builder.num_DLA_cores}")
    plan = plan_build(options, version, has_dla, info.dynamic_batch,
                      has_calibration_data=calibration_batches is not None,
                      onnx_has_qdq=info.has_qdq, onnx_has_fp16=info.has_fp16)
    for note in plan.notes:
        logger.info("TensorRT build: %s", note)

    flags = 0
    for name in plan.network_flags:
        member = getattr(trt.NetworkDefinitionCreationFlag, name, None)
        if member is None:  # a flag a future release dropped after making its behaviour the default
            logger.info("NetworkDefinitionCreationFlag.%s is gone in TensorRT %s; its behaviour is the default",
                        name, trt.__version__)
            continue
        flags |= 1 << int(member)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    # parse_from_file (not parse(bytes)) so ONNX files with external weight data resolve their paths.
    if not parser.parse_from_file(str(onnx_path)):
        raise EdgepruneError(f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: "
                             + "; ".join(_parser_errors(parser)))

    config = builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.workspace_bytes is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    if plan.optimization_level is not None:
        config.builder_optimization_level = plan.optimization_level
    if plan.default_device == "DLA":
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = plan.dla_core

    inp = network.get_input(0)
    in_shape = tuple(int(d) for d in inp.shape)
    profiles: dict[str, list[list[int]]] = {}
    profile = None
    if plan.profile is not None:
        lo, opt, hi = profile_shapes(plan, in_shape)
        profile = builder.create_optimization_profile()
        profile.set_shape(inp.name, lo, opt, hi)
        config.add_optimization_profile(profile)
        profiles[inp.name] = [list(lo), list(opt), list(hi)]

    calibrator = None
    if plan.calibration == "entropy2":
        calib_batch = plan.profile[1] if plan.profile else in_shape[0]
        cache = engine_path.with_name(f"{engine_path.stem}.{info.sha256[:12]}.calib")
        calibrator = _make_calibrator(trt, rechunk(calibration_batches, calib_batch),
                                      (calib_batch, *in_shape[1:]), cache)
        config.int8_calibrator = calibrator
        if plan.calibration_profile:
            config.set_calibration_profile(profile)

    timing_cache_path = Path(plan.timing_cache) if plan.timing_cache else None
    if timing_cache_path is not None:
        blob = timing_cache_path.read_bytes() if timing_cache_path.exists() else b""
        cache_obj = config.create_timing_cache(blob)
        # ignore_mismatch=False: a cache from another GPU or TensorRT version is refused, not silently used.
        if not config.set_timing_cache(cache_obj, ignore_mismatch=False):
            logger.warning("timing cache %s belongs to another device or TensorRT version; starting a new one",
                           timing_cache_path)
            config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    started = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - started
    if serialized is None:
        last = trt_logger.errors[-1] if getattr(trt_logger, "errors", None) else "see the log above"
        raise EdgepruneError(f"TensorRT {trt.__version__} failed to build {onnx_path.name} ({plan.precision}): {last}")
    atomic_write_bytes(engine_path, memoryview(serialized))
    if timing_cache_path is not None:
        atomic_write_bytes(timing_cache_path, memoryview(config.get_timing_cache().serialize()))

    meta = EngineMetadata(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, precision=plan.precision,
        input_shapes={inp.name: list(in_shape)}, onnx_sha256=info.sha256, build_options=options.to_dict(),
        plan=plan.to_dict(), profile_shapes=profiles, built_with="tensorrt-python",
        build_seconds=round(seconds, 2), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_metadata(engine_path, meta)
    logger.info("built %s with TensorRT %s in %.1fs (%s)", engine_path.name, trt.__version__, seconds,
                plan.precision)
    return meta


def atomic_write_bytes(path: Path, data) -> None:
    """Write to a temporary file in the same folder, then rename: readers see the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parser_errors(parser) -> list[str]:
    """One line per ONNX parser error: node index, and from 10.x the node's name and operator."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = [f"node {err.node()}"]
        for getter in ("node_name", "node_operator"):  # IParserError gained these in TensorRT 10.x
            fn = getattr(err, getter, None)
            value = fn() if callable(fn) else None
            if value:
                where.append(str(value))
        out.append(f"{' '.join(where)}: {err.desc()}")
    return out or ["the parser reported no details"]


_TRT_LOGGERS: dict[int, tuple[Any, Any]] = {}


def tensorrt_logger(trt, logger: logging.Logger | None = None):
    """The process's ILogger for `trt`: forwards TensorRT messages to Python logging and keeps the errors.

    One instance per process, because TensorRT keeps the first logger it is given and warns when a Builder or
    Runtime later brings a different one; `logger` only redirects where the messages go.
    """
    module, fwd = _TRT_LOGGERS.get(id(trt), (None, None))
    if module is not trt:
        severity = trt.ILogger.Severity
        levels = {severity.INTERNAL_ERROR: logging.ERROR, severity.ERROR: logging.ERROR,
                  severity.WARNING: logging.WARNING, severity.INFO: logging.DEBUG, severity.VERBOSE: logging.DEBUG}

        class _Forward(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.errors: list[str] = []
                self.target = _LOG

            def log(self, sev, msg):
                level = levels.get(sev, logging.INFO)
                if level >= logging.ERROR:
                    self.errors.append(str(msg).strip())
                self.target.log(level, "TensorRT: %s", msg)

        fwd = _Forward()
        _TRT_LOGGERS[id(trt)] = (trt, fwd)
    if logger is not None:
        fwd.target = logger
    return fwd


def _make_calibrator(trt, batches: Iterator[np.ndarray], batch_shape: tuple[int, ...], cache_path: Path):
    """An IInt8EntropyCalibrator2 (the calibrator DLA requires) feeding `batches` from one torch.cuda buffer."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeUnavailable("INT8 calibration needs a CUDA GPU visible to PyTorch for its input buffer")

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self):
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.device_input = torch.empty(batch_shape, dtype=torch.float32, device="cuda")
            self.count = 0

        def get_batch_size(self):
            return int(batch_shape[0])

        def get_batch(self, names):
            batch = next(batches, None)
            if batch is None:
                log.info("INT8 calibration used %d batches", self.count)
                return None
            self.device_input.copy_(torch.from_numpy(batch))
            # TensorRT reads the pointer on its own stream: the copy must have landed first.
            torch.cuda.current_stream().synchronize()
            self.count += 1
            return [int(self.device_input.data_ptr())]

        def read_calibration_cache(self):
            # The cache name carries the ONNX hash, so a cache is only reused for the model it was made from.
            return cache_path.read_bytes() if cache_path.exists() else None

        def write_calibration_cache(self, cache):
            atomic_write_bytes(cache_path, bytes(cache))

    return _Calibrator()


__all__ = [
    "PRECISIONS", "BuildOptions", "BuildPlan", "EngineMetadata", "OnnxInfo", "atomic_write_bytes", "build_engine",
    "check_engine_compatible", "cuda_device_identity", "import_tensorrt", "inspect_onnx", "metadata_path",
    "parse_trt_version", "plan_build", "profile_shapes", "read_metadata", "rebuild_reason", "rechunk", "sha256_file",
    "stale_reason",
    "tensorrt_logger", "version_str", "write_metadata",
]
