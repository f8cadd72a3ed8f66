"""trtexec command lines: what to pass for a build or a timed run on each TensorRT version (pure).

What trtexec measures depends on three settings whose defaults changed in TensorRT 11 (CUDA graphs and spin-wait
on, host<->device copies left out, where 8.x/10.x had the opposite). A number without them is ambiguous, so
every command states all three, and the run's echoed "=== Inference Options ===" is checked against them.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

from ...errors import EdgepruneError
from ...targets.devices import TRTEXEC_PATHS
from .onnx_info import OnnxInfo, inspect_onnx
from .plan import BuildOptions, BuildPlan, plan_build, version_str

# Per setting: (flag that turns it on, flag that turns it off, trtexec's default). None: that trtexec has no flag.
SETTING_FLAGS: dict[str, dict[str, tuple[str | None, str | None, bool]]] = {
    "pre-11": {"cuda_graph": ("--useCudaGraph", None, False),
               "spin_wait": ("--useSpinWait", None, False),
               "data_transfers": (None, "--noDataTransfers", True)},
    "11+": {"cuda_graph": ("--useCudaGraph", "--noCudaGraph", True),
            "spin_wait": ("--useSpinWait", "--noSpinWait", True),
            "data_transfers": ("--includeDataTransfers", "--noDataTransfers", False)},
}
ECHOED = {"cuda_graph": "CUDA Graph", "spin_wait": "Spin-wait", "data_transfers": "Data transfers"}


@dataclass(frozen=True)
class TrtexecCommand:
    argv: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)   # what the timed run measures, flags included
    plan: BuildPlan | None = None


def trtexec_command(onnx: Path | None, engine: Path, options: BuildOptions | None, trt_version: Sequence[int],
                    warmup_ms: int = 200, iterations: int = 100, export_times_path: Path | None = None, *,
                    duration_s: int = 0, cuda_graph: bool = False, spin_wait: bool = True,
                    data_transfers: bool = False, onnx_info: OnnxInfo | None = None,
                    input_name: str | None = None, run_shape: Sequence[int] | None = None,
                    has_dla: bool | None = None, calib_cache: Path | None = None,
                    available_flags: Collection[str] | None = None,
                    extra_args: Sequence[str] = (), executable: str = "trtexec") -> TrtexecCommand:
    """The trtexec command line: build from `onnx` into `engine` (onnx given), or load `engine`; then time it.

    iterations == 0 builds only (--skipInference). `available_flags` (from `trtexec --help`) lets a flag the
    installed trtexec lacks be dropped when its setting is that version's default anyway, or refused otherwise.
    """
    version = tuple(int(x) for x in trt_version)
    argv = [executable]
    plan = None
    if onnx is not None:
        options = options or BuildOptions()
        info = onnx_info or inspect_onnx(Path(onnx))
        plan = plan_build(options, version, has_dla if has_dla is not None else options.dla_core is not None,
                          info.dynamic_batch, has_calibration_data=calib_cache is not None,
                          onnx_has_qdq=info.has_qdq, onnx_has_fp16=info.has_fp16)
        argv += [f"--onnx={onnx}", f"--saveEngine={engine}", *_build_flags(plan, version, info, calib_cache)]
        if plan.profile and iterations > 0 and run_shape is None:
            input_name, run_shape = info.input_name, (plan.profile[1], *info.input_shape[1:])
    else:
        argv.append(f"--loadEngine={engine}")
    if iterations <= 0:
        argv.append("--skipInference")
        return TrtexecCommand(tuple(argv), {}, plan)

    settings_flags, assumed = runtime_setting_flags(version, cuda_graph=cuda_graph, spin_wait=spin_wait,
                                                    data_transfers=data_transfers, available_flags=available_flags)
    if run_shape is not None and input_name:
        argv.append(f"--shapes={input_name}:{_dims(run_shape)}")
    # --duration=0 lets --iterations alone decide the count (its default of 3 s would add runs);
    # --avgRuns=1 keeps trtexec's own trace per run instead of averages of 10.
    argv += [f"--warmUp={int(warmup_ms)}", f"--iterations={int(iterations)}", f"--duration={int(duration_s)}",
             "--avgRuns=1", *settings_flags]
    if export_times_path is not None:
        argv.append(f"--exportTimes={export_times_path}")
    argv += list(extra_args)
    settings = {"cuda_graph": cuda_graph, "spin_wait": spin_wait, "data_transfers": data_transfers,
                "flags": list(settings_flags), "defaults_relied_on": assumed,
                "tensorrt": version_str(version)}
    return TrtexecCommand(tuple(argv), settings, plan)


def runtime_setting_flags(trt_version: Sequence[int], *, cuda_graph: bool, spin_wait: bool, data_transfers: bool,
                          available_flags: Collection[str] | None = None) -> tuple[list[str], dict[str, bool]]:
    """Flags that put trtexec in the asked state, and the settings left to a default (no flag exists for them)."""
    table = SETTING_FLAGS["11+" if trt_version[0] >= 11 else "pre-11"]
    wanted = {"cuda_graph": cuda_graph, "spin_wait": spin_wait, "data_transfers": data_transfers}
    flags: list[str] = []
    assumed: dict[str, bool] = {}
    for key, value in wanted.items():
        on_flag, off_flag, default = table[key]
        flag = on_flag if value else off_flag
        if flag is not None and available_flags is not None and flag not in available_flags:
            flag = None
        if flag is None:
            if value != default:
                verb = "enable" if value else "disable"
                raise EdgepruneError(f"trtexec {version_str(trt_version)} has no flag to {verb} "
                                     f"{ECHOED[key].lower()}; measure with {key}={default} or use another runner")
            assumed[key] = default
            continue
        flags.append(flag)
    return flags, assumed


def verify_settings(requested: dict[str, Any], echoed: dict[str, bool]) -> None:
    """Raise when trtexec's echoed inference options disagree with what the command asked for."""
    for key, label in ECHOED.items():
        if key in echoed and key in requested and bool(requested[key]) != echoed[key]:
            raise EdgepruneError(f"trtexec ran with {label} {'enabled' if echoed[key] else 'disabled'} although "
                                 f"{'enabled' if requested[key] else 'disabled'} was asked for: this trtexec's "
                                 "flags differ from what edgeprune expects; report the TensorRT version")


def locate_trtexec(executable: str | None = None) -> Path | None:
    if executable:
        found = shutil.which(executable)
        return Path(found) if found else None
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    return next((Path(p) for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


def trtexec_search_path(executable: str | None = None) -> str:
    """Where locate_trtexec looks, for a message saying that it found nothing."""
    return executable or f"PATH, {', '.join(TRTEXEC_PATHS)}"


def _build_flags(plan: BuildPlan, version: tuple[int, ...], info: OnnxInfo, calib_cache: Path | None) -> list[str]:
    flags = []
    names = {"FP16": "--fp16", "INT8": "--int8", "GPU_FALLBACK": "--allowGPUFallback"}
    flags += [names[f] for f in plan.builder_flags if f in names]
    if plan.strongly_typed and version[0] == 10:
        flags.append("--stronglyTyped")  # always on (and the flag unnecessary) in 11.x
    if plan.workspace_bytes is not None:
        flags.append(f"--memPoolSize=workspace:{plan.workspace_bytes >> 20}")  # MiB without a suffix
    if plan.optimization_level is not None:
        flags.append(f"--builderOptimizationLevel={plan.optimization_level}")
    if plan.dla_core is not None:
        flags.append(f"--useDLACore={plan.dla_core}")
    if plan.timing_cache:
        flags.append(f"--timingCacheFile={plan.timing_cache}")
    if plan.calibration == "entropy2":
        # trtexec cannot calibrate from data: it reads a cache written by an earlier calibration
        # (edgeprune's build_engine writes one next to its engine).
        flags.append(f"--calib={calib_cache}")
    if plan.profile:
        rest = info.input_shape[1:]
        for opt, batch in zip(("--minShapes", "--optShapes", "--maxShapes"), plan.profile):
            flags.append(f"{opt}={info.input_name}:{_dims((batch, *rest))}")
    return flags


def _dims(shape: Sequence[int]) -> str:
    return "x".join(str(int(d)) for d in shape)


__all__ = ["ECHOED", "SETTING_FLAGS", "TrtexecCommand", "locate_trtexec", "runtime_setting_flags", "trtexec_command",
           "trtexec_search_path", "verify_settings"]
