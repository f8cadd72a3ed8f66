"""The precision stage inside the build: which precisions a build tries, the fp16 / int8 ONNX of an attempt made
from its fp32 export (export/precision.py and export/quantize.py convert), and its parity with that fp32 ONNX.

Reduced precision is carried by the ONNX itself (fp16 tensors, explicit Q/DQ nodes), because TensorRT 11 builds
every network strongly typed and has no precision flags left; ONNX Runtime runs the same graphs. Each precision is
first tried on the unpruned model: in `auto`, one that measures slower than fp32 on the target runtime, or whose
graph misses its parity tolerance even after the cheap fixes, is dropped there, and the report keeps the figures.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ConfigError, RuntimeUnavailable
from ..export.precision import PRECISIONS, compare_logits, convert_fp16, run_onnx
from ..export.quantize import CALIBRATION_METHODS, QuantizationFailed, quantize_int8, quantize_int8_within_tolerance

if TYPE_CHECKING:  # attempt.py imports this module
    from .attempt import BuildState
    from .stages import Exported

log = logging.getLogger(__name__)


@dataclass
class PrecisionSettings:
    """How a precision's ONNX is made, found on the unpruned model and reused by every attempt."""

    precision: str
    method: str | None = None                 # int8 calibration method
    excluded: tuple[str, ...] = ()            # int8: nodes left fp32 (the most sensitive layers)
    target: str | None = None                 # int8 Q/DQ profile of the runtime
    calibration_images: int = 0
    fixes: list[dict[str, Any]] = field(default_factory=list)  # the cheap fixes tried, with their parity


def requested(precision: str | None, device, runner) -> tuple[list[str], dict[str, str]]:
    """The precisions a build searches (fp32 first), and those left out with the reason.

    `precision` None is the device's default; `auto` every precision the device lists that the runner can run."""
    listed = tuple(device.precisions)
    if precision in (None, "auto"):
        wanted = list(listed) if precision == "auto" else [device.default_precision]
        skipped = {p: why for p in wanted if (why := runner.precision_unsupported(p))}
        chosen = [p for p in PRECISIONS if p in wanted and p not in skipped]
        if not chosen:  # the device's default is one the runner cannot run (torch-cuda for fp16): fp32 then
            chosen = ["fp32"]
        for p, why in skipped.items():
            log.warning("precision %s left out: %s", p, why)
        return chosen, skipped
    if precision not in listed:
        raise ConfigError(f"device {device.name} lists precisions {', '.join(listed)}, not {precision}: choose one "
                          "of them or --precision auto")
    why = runner.precision_unsupported(precision)
    if why:
        raise RuntimeUnavailable(f"precision {precision}: {why}")
    return [precision], {}


def calibration_set(state: "BuildState") -> list[np.ndarray]:
    """Training images (never the validation ones the accuracy is read on) for int8 activation ranges."""
    cfg = state.config
    if state.prep.accuracy_available is not None and not len(state.prep.data.train):
        raise ConfigError("int8 needs calibration images: pass --data with images the model takes")
    batches = [b.numpy() for b in state.prep.data.calibration_batches(cfg.calibration_images)]
    if not batches or sum(len(b) for b in batches) < cfg.batch_size:
        raise ConfigError(f"int8 calibration needs at least one batch of {cfg.batch_size} training images, got "
                          f"{sum(len(b) for b in batches)}: give more data or a smaller --batch-size")
    return batches


def validation_set(state: "BuildState", n: int = 256) -> list[np.ndarray]:
    out, seen = [], 0
    for x, _ in state.prep.data.loader("val", 64):
        out.append(x[: n - seen].numpy())
        seen += len(out[-1])
        if seen >= n:
            break
    return out


def first_settings(state: "BuildState", precision: str) -> PrecisionSettings:
    if precision != "int8":
        return PrecisionSettings(precision)
    return PrecisionSettings("int8", state.config.calibration_method, (), state.prof.runner.int8_profile(),
                             sum(len(b) for b in state.calibration))


def convert(state: "BuildState", fp32: "Exported", settings: PrecisionSettings, fix: bool = True) -> "Exported":
    """The attempt's `settings.precision` ONNX beside its fp32 one, gated on parity with it, prepared for the
    runner. An int8 graph that misses its tolerance gets the cheap fixes (another calibration method, then the
    most sensitive layers left fp32) when `fix`; the settings that passed are kept for the next attempts."""
    from .stages import Exported

    p = settings.precision
    src = fp32.export.path
    dst = src.with_name(f"model.{p}.onnx")
    val = state.validation
    reference = run_onnx(src, val)
    if p == "fp16":
        result = convert_fp16(src, dst)
        parity = compare_logits(reference, run_onnx(dst, val), "fp16")
    elif p == "int8":
        try:
            result = quantize_int8(src, dst, state.calibration, settings.method, settings.excluded,
                                   target=settings.target)
            parity = compare_logits(reference, run_onnx(dst, val), "int8")
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 -- ORT's calibrators raise plain errors on degenerate ranges
            if not fix:
                raise QuantizationFailed(f"int8 ({settings.method} calibration) failed on this model: "
                                         f"{type(exc).__name__}: {str(exc)[:200]}") from None
            result, parity = None, None
        if (parity is None or not parity.ok) and fix:
            log.info("int8 misses parity (%s): trying the cheap fixes",
                     "failed" if parity is None else f"top-1 agreement {parity.top1_agreement:.3f}")
            methods = [settings.method, *(m for m in CALIBRATION_METHODS if m != settings.method)]
            result, parity = quantize_int8_within_tolerance(src, dst, state.calibration, val, methods,
                                                            target=settings.target)
            settings.fixes = list(result.settings.get("attempts", []))
            if parity.ok:
                settings.method, settings.excluded = result.method, tuple(result.excluded_nodes)
    else:
        raise ConfigError(f"unknown precision {p!r}: use one of {', '.join(PRECISIONS)}")
    deployed = state.prof.runner.prepare(dst, dst.parent)
    export = dataclasses.replace(fp32.export, path=dst, nodes=sum(result.ops.values()), ops=dict(result.ops))
    quantization = {k: v for k, v in result.to_dict().items() if k not in ("path", "ops")}
    return Exported(export, fp32.parity, deployed, precision=p, quantization=quantization,
                    precision_parity=parity.to_dict())


def dropped_reason(precision: str, record: dict[str, Any], runner: str) -> str | None:
    """Why `auto` drops a precision after its unpruned attempt (slower than fp32, parity missed: each figure that
    ruled it out), or None."""
    reasons = []
    ratio = (record.get("latency_ratio") or {}).get("ratio")
    if ratio is not None and ratio >= 1.0:
        reasons.append(f"measured {ratio:.3f}x the fp32 latency on {runner} for the unpruned model "
                       f"({record['latency_ms']:.3f} ms, side by side): slower")
    parity = record.get("precision_parity") or {}
    if parity and not parity.get("ok", True):
        tol = parity.get("tolerance") or {}
        reasons.append(f"misses its parity tolerance with fp32 even after the cheap fixes (top-1 agreement "
                       f"{parity['top1_agreement']:.3f} vs {tol.get('min_top1_agreement')}, scaled max error "
                       f"{parity['max_abs_error_scaled']:.3g} vs {tol.get('max_abs_error')})"
                       + ("" if ratio is None or ratio >= 1.0 else f"; it measured {ratio:.3f}x the fp32 latency"))
    return f"{precision} " + "; and ".join(reasons) + ", so not searched" if reasons else None


__all__ = ["PrecisionSettings", "calibration_set", "convert", "dropped_reason",
           "first_settings", "requested", "validation_set"]
