"""What to build, per TensorRT version: versions, BuildOptions and the BuildPlan (pure: no tensorrt import).

Three TensorRT generations are in the field and each one changed the builder API:
  8.5/8.6 (JetPack 5, JetPack 6.0)  networks need the EXPLICIT_BATCH creation flag; FP16/INT8 builder flags;
                                     INT8 from an IInt8EntropyCalibrator2; builder_optimization_level since 8.6.
  10.x   (JetPack 6.1+, x86)        explicit batch is implied (the flag is deprecated and ignored); the same
                                     precision flags still work ("weak typing", deprecated since 10.12);
                                     calibrators deprecated since 10.1; STRONGLY_TYPED networks available.
  11.x   (x86 / SBSA; AGX Orin only) every network is strongly typed: BuilderFlag.FP16/INT8/OBEY_PRECISION_...
                                     and IBuilderConfig.int8_calibrator are removed, so reduced precision must
                                     already be in the ONNX (ModelOpt AutoCast for FP16, Q/DQ nodes for INT8).
`plan_build` turns options + version into a `BuildPlan`; engine.build_engine applies it with the real API.
References: the TensorRT Python API docs (IBuilderConfig, OnnxParser, IInt8EntropyCalibrator2) and the
8.x->10.x and 10.x->11.x migration guides.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ...errors import ConfigError, EdgepruneError, RuntimeUnavailable

PRECISIONS = ("fp32", "fp16", "int8", "best")
MIN_SUPPORTED = (8, 5)  # the named-tensor runtime API (set_tensor_address, execute_async_v3) starts at 8.5


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
class DictRecord:
    """to_dict / from_dict for a dataclass stored as JSON; from_dict ignores keys of other edgeprune versions."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class BuildOptions(DictRecord):
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
    # An ONNX that carries its precision (Q/DQ nodes, float16 tensors: edgeprune's precision stage) is built as
    # that precision: strongly typed where TensorRT has it (10.x, 11.x; NVIDIA's recommended path), with the
    # builder flags only 8.6 needs to honour Q/DQ and fp16 layers.
    carried = "int8" if onnx_has_qdq else "fp16" if onnx_has_fp16 else None
    if carried is not None and prec == "fp32":
        prec = carried
        notes.append(f"the ONNX carries {carried} ({'Q/DQ nodes' if onnx_has_qdq else 'float16 tensors'}): "
                     f"built as {carried}")

    # -- typing: strong on 11.x always, on 10.x when asked or when the ONNX carries its precision, not on 8.x ---
    strongly_typed = major >= 11 or options.strongly_typed or (carried is not None and major >= 10)
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
            # NVIDIA's TensorRT 11.4.1 docs: no DLA in 11.0-11.3; from 11.4.1 only on AGX Orin with JetPack
            # 7.2.2+ (strongly typed). That path has not been checked here, so DLA stays on 8.5-10.x.
            raise RuntimeUnavailable("TensorRT 11 does not support DLA in edgeprune (NVIDIA has it only from 11.4.1 "
                                     "on AGX Orin with JetPack 7.2.2, not checked here): build DLA engines with "
                                     "JetPack's TensorRT 8.5 / 8.6 / 10.3")
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


__all__ = ["MIN_SUPPORTED", "PRECISIONS", "BuildOptions", "DictRecord", "BuildPlan", "parse_trt_version", "plan_build",
           "profile_shapes", "version_str"]
