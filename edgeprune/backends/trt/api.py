"""Calls into the tensorrt module with every status it returns checked, shared by engine building and the runner.

TensorRT reports most failures as a return value (False, -1, None) plus a message to its ILogger, not as an
exception, and a failure it does not stop at makes the next call fail somewhere unrelated or crash the process.
So each call here that returns a status is checked at once and turned into one line that carries what TensorRT
logged. Without a usable GPU, TensorRT 8.x/10.x raise "factory function returned nullptr" from
Builder()/Runtime(), while 11.x logs "CUDA initialization failure" and returns an object that crashes the process
on its next call: `create` turns both into "TensorRT found no usable CUDA device: ..." before anything else runs.
"""
from __future__ import annotations

# Why not Polygraphy (issue 15 item 4; read in polygraphy 0.53.6 from PyPI: pure Python, no dependencies, so it
# would install beside the pins, and it knows TensorRT 8.x-11.x: explicit batch only before 10, STRONGLY_TYPED,
# a critical error where 11 removed FP16/INT8 flags or calibrators, IStreamReaderV2).
# What it covers of ours: NetworkFromOnnxPath (parse_from_file, strongly_typed), CreateConfig (precision flags,
#   profiles, workspace pool, builder_optimization_level, timing cache, DLA with GPU fallback, calibrator and
#   calibration profile), EngineFromNetwork / EngineFromPath, and TrtRunner, which checks set_input_shape,
#   set_tensor_address, create_execution_context and execute_async_v3 as runner.py does; its Comparator
#   overlaps our parity check.
# What it does not do, and issue 15 needs: (1) it makes trt.Builder / trt.Runtime and goes on without reading
#   what TensorRT logged, so 11.x without a GPU crashes on the next call instead of the one line `create` gives;
#   (2) its failures are PolygraphyException("Invalid Engine. Please ensure the engine was built correctly")
#   while TensorRT's reason goes only to its own logger; parser errors likewise; (3) it installs its own
#   process-wide ILogger, and TensorRT keeps the first logger it is given, so ours and its cannot both collect
#   errors in one process; (4) set_timing_cache's refusal of a cache from another GPU/version is not checked on
#   load, and on save the old cache is merged in with ignore_mismatch=True; we refuse and start a new one;
#   (5) use_dla always sets DLA_core = 0 (no second core), and on a board without DLA only warns when GPU
#   fallback is on; (6) no sidecar (GPU, compute
#   capability, TensorRT version, ONNX hash, plan) to refuse an engine from another device before
#   deserializing, no trtexec command lines or output parsing, no per-version plan that refuses in one line;
#   (7) the real-bindings test (tests/test_trt_bindings.py) reads the tensorrt names of this package's source;
#   Polygraphy's ~4,700 lines of TensorRT calls would be outside it, and nothing here can run TensorRT.
# Decision: keep the hand-written builder and runner (plan.py, engine.py, runner.py, this module); not a
#   dependency. Polygraphy stays the model for the structure (loaders beside runners, lazy imports) and a
#   tool for users debugging an engine (`polygraphy run model.onnx --trt --onnxrt`).

import logging
from typing import Any, Callable, Sequence

from ...errors import EdgepruneError, RuntimeUnavailable

log = logging.getLogger(__name__)

NO_CUDA = "TensorRT found no usable CUDA device"
# What TensorRT says when it has no GPU to work with: pybind11's message when Builder()/Runtime() return null
# (8.x/10.x), and the logged CUDA errors (11.x logs them and returns an unusable object).
_NO_CUDA_SIGNS = ("factory function returned nullptr", "cuda initialization failure", "no cuda-capable device",
                  "cudaerrornodevice", "cudaerrorinsufficientdriver", "cuda driver version is insufficient",
                  "failed to create cuda context", "cudagetdevicecount")

# TensorRT DataType member -> the torch dtype of a buffer with the same layout (I/O buffers come from PyTorch).
# numpy has no bfloat16 or float8, which is why the names are mapped here and not through trt.nptype.
TORCH_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT8": "int8", "UINT8": "uint8",
                "INT32": "int32", "INT64": "int64", "BOOL": "bool",
                "FP8": "float8_e4m3fn"}  # TensorRT's FP8 is E4M3 (bias 7, no infinities): torch's e4m3fn
# Sub-byte and scale types pack several values per byte or are block scales: no torch buffer matches them.
REFUSED_DTYPES = {"INT4": "packed 4-bit integers", "FP4": "packed 4-bit floats (E2M1)",
                  "E8M0": "8-bit exponent-only block scales"}


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


# ---------------------------------------------------------------------------------------------------------
# Creation and the logger
# ---------------------------------------------------------------------------------------------------------
def create(trt_logger, factory: Callable[[Any], Any], what: str):
    """`factory(trt_logger)` (trt.Builder, trt.Runtime), with the errors TensorRT logged while creating it read
    at once: an object made while TensorRT logged an error is never used."""
    trt_logger.errors.clear()
    try:
        made = factory(trt_logger)
    except (TypeError, RuntimeError) as exc:  # pybind11 raises TypeError when the factory returns null
        raise creation_error(what, trt_logger.errors, exc) from None
    if made is None or trt_logger.errors:
        raise creation_error(what, trt_logger.errors, None)
    return made


def creation_error(what: str, errors: Sequence[str], exc: BaseException | None) -> EdgepruneError:
    """One line for a failed trt.Builder()/trt.Runtime(): RuntimeUnavailable when there is no usable GPU."""
    said = [str(e).strip() for e in errors if str(e).strip()]
    if exc is not None:
        said.append(f"{type(exc).__name__}: {exc}")
    detail = "; ".join(said) or "it returned nothing and logged no error"
    if any(sign in detail.lower() for sign in _NO_CUDA_SIGNS):
        return RuntimeUnavailable(f"{NO_CUDA}: {detail} (creating the {what}; check the NVIDIA driver, "
                                  "CUDA_VISIBLE_DEVICES, and that this TensorRT's CUDA matches the driver)")
    return EdgepruneError(f"TensorRT could not create its {what}: {detail}")


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
                self.target = log

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


def last_error(trt_logger, default: str = "see the TensorRT log above") -> str:
    errors = getattr(trt_logger, "errors", None)
    return errors[-1] if errors else default


# ---------------------------------------------------------------------------------------------------------
# Statuses
# ---------------------------------------------------------------------------------------------------------
def parser_errors(parser) -> list[str]:
    """One line per ONNX parser error: node index, and from 10.x the node's name and operator."""
    out = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        where = [f"node {err.node()}"]
        for getter in ("node_name", "node_operator"):  # IParserError gained these in TensorRT 10.0
            fn = getattr(err, getter, None)
            value = fn() if callable(fn) else None
            if value:
                where.append(str(value))
        out.append(f"{' '.join(where)}: {err.desc()}")
    return out or ["the parser reported no details"]


def add_optimization_profile(config, profile, trt_logger, where: str) -> int:
    """config.add_optimization_profile, which answers -1 (and logs why) for a profile it refuses."""
    index = config.add_optimization_profile(profile)
    if index is None or int(index) < 0:
        raise EdgepruneError(f"TensorRT refused the optimization profile for {where}: {last_error(trt_logger)}")
    return int(index)


def create_execution_context(engine, trt_logger, where: str):
    context = engine.create_execution_context()
    if context is None:
        raise EdgepruneError(f"TensorRT could not create an execution context for {where} (out of device memory?): "
                             f"{last_error(trt_logger)}")
    return context


def set_input_shape(context, name: str, shape: Sequence[int], trt_logger) -> None:
    if not context.set_input_shape(name, tuple(int(d) for d in shape)):
        raise EdgepruneError(f"TensorRT refused input shape {tuple(shape)} for {name!r} (outside the engine's "
                             f"optimization profile?): {last_error(trt_logger)}")


def set_tensor_address(context, name: str, address: int, trt_logger) -> None:
    if not context.set_tensor_address(name, int(address)):
        raise EdgepruneError(f"TensorRT refused the device buffer for tensor {name!r}: {last_error(trt_logger)}")


def io_dtype(trt_dtype) -> str:
    """The torch dtype name for an engine I/O tensor of TensorRT type `trt_dtype`, or a clear refusal."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    if name in TORCH_DTYPES:
        return TORCH_DTYPES[name]
    if name in REFUSED_DTYPES:
        raise EdgepruneError(f"the engine has an input or output of TensorRT type {name} ({REFUSED_DTYPES[name]}), "
                             "which edgeprune cannot feed or read: keep the model's I/O in float32/float16 and "
                             "quantize inside the graph")
    raise EdgepruneError(f"the engine has an input or output of TensorRT type {name}, which this edgeprune does "
                         "not know: keep the model's I/O in float32/float16")


__all__ = ["NO_CUDA", "REFUSED_DTYPES", "TORCH_DTYPES", "add_optimization_profile", "create",
           "create_execution_context", "creation_error", "cuda_device_identity", "import_tensorrt", "io_dtype",
           "last_error", "parser_errors", "set_input_shape", "set_tensor_address", "tensorrt_logger"]
