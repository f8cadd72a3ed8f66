"""Building a TensorRT engine with the real API: `build_engine` applies a `BuildPlan` (plan.py) through the tensorrt
module and writes the engine and its sidecar (sidecar.py). Every status TensorRT returns is checked (api.py).
The plan, sidecar and ONNX-inspection names are imported from where they are defined, not from here.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ...errors import ConfigError, EdgepruneError, RuntimeUnavailable
from .api import (add_optimization_profile, create, cuda_device_identity, import_tensorrt, last_error,
                  parser_errors, tensorrt_logger)
from .onnx_info import inspect_onnx, rechunk
from .plan import BuildOptions, parse_trt_version, plan_build, profile_shapes
from ...files import atomic_write_bytes
from ...targets.devices import DeviceSpec, device_refusal
from .sidecar import EngineMetadata, read_metadata, write_metadata

log = logging.getLogger(__name__)
_LOG = log  # build_engine's `log` parameter shadows the module logger


def build_engine(onnx_path: Path, engine_path: Path, options: BuildOptions = BuildOptions(),
                 calibration_batches: Iterable[np.ndarray] | None = None,
                 log: logging.Logger | None = None, device: "DeviceSpec | None" = None) -> EngineMetadata:
    """Build a serialized engine from `onnx_path` into `engine_path` (atomically) and write its sidecar.

    INT8 calibration reads `calibration_batches` (float32 arrays, NCHW, any batch size: re-cut to the engine's)
    through an IInt8EntropyCalibrator2 whose device buffer is a torch.cuda tensor: PyTorch is already a
    dependency and gives device memory, copies and a data pointer without adding cuda-python or pycuda.
    `device` (targets.DeviceSpec): refuse, before TensorRT is asked anything, a TensorRT version or DLA core the
    device file says the board does not have.
    """
    logger = log if log is not None else _LOG
    trt = import_tensorrt()
    version = parse_trt_version(trt.__version__)
    if device is not None:
        why = device_refusal(device, trt.__version__, dla_core=options.dla_core, whose="this host's")
        if why:
            raise ConfigError(why)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    info = inspect_onnx(onnx_path)
    gpu_name, cc = cuda_device_identity()

    trt_logger = tensorrt_logger(trt, logger)
    builder = create(trt_logger, trt.Builder, "Builder")
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
                             + "; ".join(parser_errors(parser)))
    if network.num_inputs < 1:
        raise EdgepruneError(f"TensorRT parsed {onnx_path.name} into a network without inputs")

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
        add_optimization_profile(config, profile, trt_logger, f"{inp.name} {lo} / {opt} / {hi}")
        profiles[inp.name] = [list(lo), list(opt), list(hi)]

    calibrator = None
    if plan.calibration == "entropy2":  # never on TensorRT 11, where plan_build refuses it
        calib_batch = plan.profile[1] if plan.profile else in_shape[0]
        cache = engine_path.with_name(f"{engine_path.stem}.{info.sha256[:12]}.calib")
        calibrator = _make_calibrator(trt, rechunk(calibration_batches, calib_batch),
                                      (calib_batch, *in_shape[1:]), cache)
        _set_calibrator(config, calibrator, profile if plan.calibration_profile else None)

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
        raise EdgepruneError(f"TensorRT {trt.__version__} failed to build {onnx_path.name} ({plan.precision}): "
                             f"{last_error(trt_logger)}")
    atomic_write_bytes(engine_path, memoryview(serialized))
    if timing_cache_path is not None:
        atomic_write_bytes(timing_cache_path, memoryview(config.get_timing_cache().serialize()))

    meta = EngineMetadata(
        tensorrt_version=trt.__version__, gpu_name=gpu_name, compute_capability=cc, precision=plan.precision,
        input_shapes={inp.name: list(in_shape)}, onnx_sha256=info.sha256, build_options=options.to_dict(),
        plan=plan.to_dict(), profile_shapes=profiles, built_with="tensorrt-python",
        build_seconds=round(seconds, 2), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    write_metadata(engine_path, meta)
    meta = read_metadata(engine_path) or meta  # with the engine's size and sha256
    logger.info("built %s with TensorRT %s in %.1fs (%s)", engine_path.name, trt.__version__, seconds,
                plan.precision)
    return meta


def _set_calibrator(config, calibrator, profile) -> None:
    """The entropy-calibration path (TensorRT 8.x/10.x only: 11 removed int8_calibrator and calibration profiles)."""
    config.int8_calibrator = calibrator
    if profile is not None:
        config.set_calibration_profile(profile)


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

