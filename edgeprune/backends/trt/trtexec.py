"""trtexec runner: builds and times engines with NVIDIA's command-line tool, for hosts without TensorRT's Python
package (a bare JetPack image) and as a cross-check of the in-process TensorRT runner.

What trtexec measures depends on three settings whose defaults changed in TensorRT 11 (CUDA graphs and spin-wait
on, host<->device copies left out, where 8.x/10.x had the opposite). A number without them is ambiguous, so
every command states all three, and the run's echoed "=== Inference Options ===" is checked against them.
Per-run times come from --exportTimes (a JSON list, one object per timed inference, keys "startEnqMs",
"endEnqMs", "startH2dMs", "endH2dMs", "startComputeMs", "endComputeMs", "startD2hMs", "endD2hMs", "h2dMs",
"computeMs", "d2hMs", "latencyMs"; before 8.x the transfer keys were "startInMs"/"inMs"/"outMs"), so they
feed the same block statistics as every other runner.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from ...errors import EdgepruneError, RuntimeUnavailable
from .base import TensorRTArtifacts
from .engine import (BuildOptions, BuildPlan, EngineMetadata, OnnxInfo, cuda_device_identity,
                                   inspect_onnx, parse_trt_version, plan_build, rebuild_reason, version_str,
                                   write_metadata)
from ...targets.devices import TRTEXEC_PATHS
from ..base.stats import LatencyStats, summarize
from ..base.runner import Deployed, Runner, gpu_parity_tolerance, run_static_batches

log = logging.getLogger(__name__)

# Per setting: (flag that turns it on, flag that turns it off, trtexec's default). None: that trtexec has no flag.
SETTING_FLAGS: dict[str, dict[str, tuple[str | None, str | None, bool]]] = {
    "pre-11": {"cuda_graph": ("--useCudaGraph", None, False),
               "spin_wait": ("--useSpinWait", None, False),
               "data_transfers": (None, "--noDataTransfers", True)},
    "11+": {"cuda_graph": ("--useCudaGraph", "--noCudaGraph", True),
            "spin_wait": ("--useSpinWait", "--noSpinWait", True),
            "data_transfers": ("--includeDataTransfers", "--noDataTransfers", False)},
}
_ECHOED = {"cuda_graph": "CUDA Graph", "spin_wait": "Spin-wait", "data_transfers": "Data transfers"}
_SUMMARY_KEYS = {"Throughput": "throughput", "Latency": "latency", "End-to-End Host Latency": "end_to_end",
                 "Enqueue Time": "enqueue", "H2D Latency": "h2d", "GPU Compute Time": "gpu_compute",
                 "D2H Latency": "d2h", "Total Host Walltime": "total_host_walltime_s",
                 "Total GPU Compute Time": "total_gpu_compute_s"}
_OLD_KEYS = {"h2dMs": "inMs", "d2hMs": "outMs", "startH2dMs": "startInMs", "endH2dMs": "endInMs",
             "startD2hMs": "startOutMs", "endD2hMs": "endOutMs"}


@dataclass(frozen=True)
class TrtexecCommand:
    argv: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)   # what the timed run measures, flags included
    plan: BuildPlan | None = None


class TrtexecRunner(TensorRTArtifacts):
    name = "trtexec"

    def __init__(self, options: BuildOptions | None = None, precision: str | None = None, cuda_graph: bool = False,
                 spin_wait: bool = True, data_transfers: bool = False, warmup_ms: int = 200,
                 metric: str = "latencyMs", executable: str | None = None, has_dla: bool | None = None,
                 calib_cache: str | None = None, rebuild: bool = False, timeout_s: float = 1800.0):
        options = options or BuildOptions()
        if precision is not None:
            options = BuildOptions.from_dict({**options.to_dict(), "precision": precision})
        self.options = options
        self.cuda_graph, self.spin_wait, self.data_transfers = cuda_graph, spin_wait, data_transfers
        self.warmup_ms = int(warmup_ms)
        self.metric = metric
        self.executable = executable
        self.has_dla = has_dla
        self.calib_cache = Path(calib_cache) if calib_cache else None
        self.rebuild = rebuild
        self.timeout_s = timeout_s
        self._probe_cache: tuple[tuple[int, int, int], frozenset[str]] | None = None
        self._device: dict[str, str] = {}

    def available(self) -> str | None:
        if locate_trtexec(self.executable):
            return None
        where = self.executable or f"PATH, {', '.join(TRTEXEC_PATHS)}"
        return (f"trtexec is not installed on this host (looked in {where}); it ships with TensorRT: JetPack's "
                "tensorrt package on a Jetson, the TensorRT tar/deb on x86")

    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        onnx_path, workdir = Path(onnx_path), Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        version, flags = self._probe()
        info = inspect_onnx(onnx_path)
        engine_path = workdir / f"{onnx_path.stem}.{self.options.precision}.trtexec.engine"
        meta = self._engine_for(onnx_path, engine_path, info, version, flags)
        shape = tuple(info.input_shape)
        if info.dynamic_batch:
            shape = (self.options.opt_batch, *shape[1:])
        return Deployed(self.name, engine_path, info.input_name, shape,
                        {"onnx": str(onnx_path), "engine_metadata": meta.to_dict(),
                         "dynamic_batch": info.dynamic_batch})

    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        """Outputs through trtexec --loadInputs / --exportOutput (slow: one process per chunk; for checks only)."""
        version, flags = self._probe()

        def run_one(x: np.ndarray) -> np.ndarray:
            with tempfile.TemporaryDirectory(prefix="edgeprune-trtexec-") as tmp:
                inp, out = Path(tmp) / "input.bin", Path(tmp) / "output.json"
                np.ascontiguousarray(x, dtype=np.float32).tofile(inp)
                cmd = self._command(deployed, version, flags, warmup_ms=0, iterations=1, export_times=None,
                                    extra=(f"--loadInputs={deployed.input_name}:{inp}", f"--exportOutput={out}"))
                self._run(cmd.argv)
                return parse_export_output(json.loads(out.read_text()))

        return run_static_batches(run_one, np.asarray(batch, dtype=np.float32), deployed.input_shape[0])

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        version, flags = self._probe()
        n = len(deployed)
        times: list[list[list[float]]] = [[] for _ in deployed]
        summaries: list[dict[str, Any]] = [{} for _ in deployed]
        settings: list[dict[str, Any]] = [{} for _ in deployed]
        with tempfile.TemporaryDirectory(prefix="edgeprune-trtexec-") as tmp:
            for b in range(blocks):
                for i in [(b + k) % n for k in range(n)]:  # rotate who goes first, as the other runners do
                    d = deployed[i]
                    export = Path(tmp) / f"times-{i}-{b}.json"
                    cmd = self._command(d, version, flags, warmup_ms=self.warmup_ms, iterations=iters,
                                        export_times=export, duration_s=math.ceil(min_block_s))
                    text = self._run(cmd.argv)
                    verify_settings(cmd.settings, parse_trtexec_settings(text))
                    times[i].append(parse_export_times(json.loads(export.read_text()), self.metric,
                                                       skip_before_ms=self.warmup_ms))
                    summaries[i] = parse_trtexec_summary(text)
                    settings[i] = cmd.settings
                    self._device = parse_trtexec_device(text) or self._device
        versions = {"tensorrt": version_str(version), "trtexec": str(locate_trtexec(self.executable)),
                    "gpu": self._device.get("gpu", "unknown")}
        return [summarize(t, warmup, batch_size=d.input_shape[0], runtime=self.name, versions=versions,
                          extra={**{k: s[k] for k in ("cuda_graph", "spin_wait", "data_transfers", "flags")},
                                 "metric": self.metric, "warmup_ms": self.warmup_ms,
                                 "warmup_note": "trtexec warms up by time (warmup_ms per run), not by count",
                                 "process": "one trtexec process per block", "trtexec_summary": summ})
                for d, t, s, summ in zip(deployed, times, settings, summaries)]

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        return {"weights_bytes": Path(deployed.path).stat().st_size, "peak_mb": None,
                "peak_source": "not measured by trtexec; weights_bytes is the serialized engine size"}

    def parity_tolerance(self) -> tuple[float, float]:
        return gpu_parity_tolerance(self.options.precision)

    def describe(self) -> dict[str, Any]:
        exe = locate_trtexec(self.executable)
        d: dict[str, Any] = {"runner": self.name, "trtexec": str(exe), "build_options": self.options.to_dict(),
                             "cuda_graph": self.cuda_graph, "spin_wait": self.spin_wait,
                             "data_transfers": self.data_transfers, "metric": self.metric}
        if exe:
            d["tensorrt"] = version_str(self._probe()[0])
        return d

    # -- helpers ---------------------------------------------------------------------------------------------
    def _engine_for(self, onnx_path: Path, engine_path: Path, info: OnnxInfo, version, flags) -> EngineMetadata:
        meta, reason = rebuild_reason(engine_path, info.sha256, self.options, version, cuda_device_identity,
                                      self.rebuild)
        if reason is None:
            log.info("reusing %s", engine_path)
            return meta
        log.info("building %s with trtexec: %s", engine_path.name, reason)
        cmd = trtexec_command(onnx_path, engine_path, self.options, version, iterations=0, onnx_info=info,
                              has_dla=self.has_dla, calib_cache=self.calib_cache, available_flags=flags,
                              cuda_graph=self.cuda_graph, spin_wait=self.spin_wait,
                              data_transfers=self.data_transfers, executable=str(locate_trtexec(self.executable)))
        text = self._run(cmd.argv)
        if not engine_path.exists():
            raise EdgepruneError(f"trtexec reported success but wrote no engine at {engine_path}")
        self._device = parse_trtexec_device(text) or self._device
        profiles = {}
        if cmd.plan and cmd.plan.profile:
            profiles[info.input_name] = [[b, *info.input_shape[1:]] for b in cmd.plan.profile]
        meta = EngineMetadata(
            tensorrt_version=version_str(version), gpu_name=self._device.get("gpu"),
            compute_capability=self._device.get("compute_capability"), precision=self.options.precision,
            input_shapes={info.input_name: list(info.input_shape)}, onnx_sha256=info.sha256,
            build_options=self.options.to_dict(), plan=cmd.plan.to_dict() if cmd.plan else {},
            profile_shapes=profiles, built_with="trtexec", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        write_metadata(engine_path, meta)
        return meta

    def _command(self, d: Deployed, version, flags, *, warmup_ms: int, iterations: int, export_times: Path | None,
                 duration_s: int = 0, extra: Sequence[str] = ()) -> TrtexecCommand:
        dynamic = bool(d.meta.get("dynamic_batch"))
        return trtexec_command(None, d.path, None, version, warmup_ms, iterations, export_times,
                               duration_s=duration_s, cuda_graph=self.cuda_graph, spin_wait=self.spin_wait,
                               data_transfers=self.data_transfers, available_flags=flags,
                               input_name=d.input_name if dynamic else None,
                               run_shape=d.input_shape if dynamic else None, extra_args=extra,
                               executable=str(locate_trtexec(self.executable)))

    def _probe(self) -> tuple[tuple[int, int, int], frozenset[str]]:
        """The TensorRT version and the flags this trtexec knows, from its --help (run once)."""
        if self._probe_cache is None:
            exe = locate_trtexec(self.executable)
            if not exe:
                raise RuntimeUnavailable(f"runner {self.name} cannot run here: {self.available()}")
            proc = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
            text = proc.stdout + proc.stderr
            version = parse_trtexec_version(text)
            if version is None:
                raise EdgepruneError(f"{exe} --help printed no TensorRT version banner; is it trtexec?")
            self._probe_cache = (version, parse_help_flags(text))
        return self._probe_cache

    def _run(self, argv: Sequence[str]) -> str:
        log.debug("running %s", " ".join(argv))
        try:
            proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=self.timeout_s)
        except FileNotFoundError:
            raise RuntimeUnavailable(f"trtexec disappeared: {argv[0]} cannot be executed") from None
        except subprocess.TimeoutExpired:
            raise EdgepruneError(f"trtexec ran longer than {self.timeout_s:.0f}s and was stopped: "
                                 f"{' '.join(argv[:3])} ...") from None
        text = proc.stdout + proc.stderr
        if proc.returncode != 0 or "&&&& FAILED" in text:
            raise EdgepruneError(f"trtexec failed (exit {proc.returncode}): {_last_error(text)}")
        return text


# ---------------------------------------------------------------------------------------------------------
# Pure pieces: command line and output parsing
# ---------------------------------------------------------------------------------------------------------
def trtexec_command(onnx: Path | None, engine: Path, options: BuildOptions | None, trt_version: Sequence[int],
                    warmup_ms: int = 200, iterations: int = 100, export_times_path: Path | None = None, *,
                    duration_s: int = 0, cuda_graph: bool = False, spin_wait: bool = True,
                    data_transfers: bool = False, onnx_info: OnnxInfo | None = None,
                    input_name: str | None = None, run_shape: Sequence[int] | None = None,
                    has_dla: bool | None = None, calib_cache: Path | None = None,
                    available_flags: Collection[str] | None = None, profile_layers: bool = False,
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
    if profile_layers:
        # The per-layer profiler slows the run it is attached to; a separate run keeps the timing clean.
        argv += ["--dumpProfile", "--separateProfileRun"]
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
                                     f"{_ECHOED[key].lower()}; measure with {key}={default} or use another runner")
            assumed[key] = default
            continue
        flags.append(flag)
    return flags, assumed


def verify_settings(requested: dict[str, Any], echoed: dict[str, bool]) -> None:
    """Raise when trtexec's echoed inference options disagree with what the command asked for."""
    for key, label in _ECHOED.items():
        if key in echoed and key in requested and bool(requested[key]) != echoed[key]:
            raise EdgepruneError(f"trtexec ran with {label} {'enabled' if echoed[key] else 'disabled'} although "
                                 f"{'enabled' if requested[key] else 'disabled'} was asked for: this trtexec's "
                                 "flags differ from what edgeprune expects; report the TensorRT version")


def parse_trtexec_summary(text: str) -> dict[str, Any]:
    """The "=== Performance summary ===" block: throughput (qps), and per metric min/max/mean/median/pNN in ms.

    Keys: throughput_qps, latency, gpu_compute, enqueue, h2d, d2h (and end_to_end from older releases), each a
    dict {"min", "max", "mean", "median", "p90", "p95", "p99", ...}; total_host_walltime_s; total_gpu_compute_s.
    """
    lines = [_strip_log_prefix(line) for line in text.splitlines()]
    try:
        start = next(i for i, line in enumerate(lines) if "=== Performance summary ===" in line)
    except StopIteration:
        raise EdgepruneError("trtexec printed no '=== Performance summary ===' (did the inference run?)") from None
    entries: dict[str, str] = {}
    current = None
    for line in lines[start + 1:]:
        if line.startswith("===") or line.startswith("Explanations of the performance metrics"):
            break
        m = re.match(r"^([A-Za-z][A-Za-z0-9 \-]*?):\s*(.*)$", line)
        if m and m.group(1) in _SUMMARY_KEYS:
            current = _SUMMARY_KEYS[m.group(1)]
            entries[current] = m.group(2)
        elif current and line and not line.startswith("*"):
            entries[current] += " " + line  # a stats line wrapped by a log collector
        else:
            current = None
    out: dict[str, Any] = {}
    for key, body in entries.items():
        if key == "throughput":
            out["throughput_qps"] = _first_number(body)
        elif key.startswith("total_"):
            out[key] = _first_number(body)
        else:
            out[key] = _parse_stats(body)
    if "latency" not in out and "gpu_compute" not in out:
        raise EdgepruneError("trtexec's performance summary has no Latency or GPU Compute Time line")
    return out


def parse_export_times(records: list[dict[str, Any]] | str, metric: str = "latencyMs",
                       skip_before_ms: float | None = None) -> list[float]:
    """Per-inference milliseconds of `metric` from an --exportTimes JSON list (loaded, or its text).

    Older trtexec names ("inMs", "outMs", "startInMs"...) are accepted; a missing interval is derived from its
    start/end timestamps. Records whose compute started before `skip_before_ms` are warm-up: releases before
    8.6 wrote those too, and trtexec itself counts a run as warm-up when it starts inside --warmUp.
    """
    if isinstance(records, (str, bytes)):
        records = json.loads(records)
    if not isinstance(records, list):
        raise EdgepruneError("trtexec --exportTimes output is not a JSON list")
    out = []
    for rec in records:
        if skip_before_ms is not None and _get(rec, "startComputeMs") is not None \
                and _get(rec, "startComputeMs") < skip_before_ms:
            continue
        value = _interval(rec, metric)
        if value is None:
            raise EdgepruneError(f"trtexec --exportTimes record has no {metric} (keys: {', '.join(sorted(rec))})")
        out.append(value)
    if not out:
        raise EdgepruneError("trtexec --exportTimes holds no timed runs after warm-up")
    return out


def trtexec_stats(blocks: Sequence[list[dict[str, Any]]], warmup: int, metric: str = "latencyMs",
                  skip_before_ms: float | None = None, **meta: Any) -> LatencyStats:
    """LatencyStats from the --exportTimes lists of several trtexec runs (one run = one block)."""
    return summarize([parse_export_times(b, metric, skip_before_ms) for b in blocks], warmup,
                     **{"runtime": "trtexec", **meta})


def parse_trtexec_settings(text: str) -> dict[str, bool]:
    """The CUDA Graph / Spin-wait / Data transfers state trtexec echoes under "=== Inference Options ===."""
    out = {}
    for key, label in _ECHOED.items():
        m = re.search(rf"\b{re.escape(label)}:\s*(Enabled|Disabled)", text)
        if m:
            out[key] = m.group(1) == "Enabled"
    return out


def parse_trtexec_device(text: str) -> dict[str, str]:
    out = {}
    m = re.search(r"Selected Device:\s*(.+)", text)
    if m:
        out["gpu"] = m.group(1).strip()
    m = re.search(r"Compute Capability:\s*([\d.]+)", text)
    if m:
        out["compute_capability"] = m.group(1)
    return out


def parse_trtexec_version(text: str) -> tuple[int, int, int] | None:
    """From the banner "&&&& RUNNING TensorRT.trtexec [TensorRT v100600] ...", or a "TensorRT version:" line."""
    m = re.search(r"\[TensorRT v(\d+)\]", text)
    if m:
        return parse_trt_version("v" + m.group(1))
    m = re.search(r"TensorRT version:\s*([\d.]+)", text)
    return parse_trt_version(m.group(1)) if m else None


def parse_help_flags(text: str) -> frozenset[str]:
    return frozenset(re.findall(r"(?<![\w-])(--[A-Za-z][A-Za-z0-9]*)", text))


def parse_export_output(records: list[dict[str, Any]]) -> np.ndarray:
    """The first output tensor of an --exportOutput JSON list ({"name", "dimensions": "1x10", "values"})."""
    if not records:
        raise EdgepruneError("trtexec --exportOutput wrote no tensors")
    first = records[0]
    dims = [int(d) for d in str(first["dimensions"]).split("x") if d]
    return np.asarray(first["values"], dtype=np.float32).reshape(dims)


def locate_trtexec(executable: str | None = None) -> Path | None:
    if executable:
        found = shutil.which(executable)
        return Path(found) if found else None
    found = shutil.which("trtexec")
    if found:
        return Path(found)
    return next((Path(p) for p in TRTEXEC_PATHS if os.access(p, os.X_OK)), None)


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
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


def _strip_log_prefix(line: str) -> str:
    """Drop trtexec's "[01/10/2024-21:52:50] [I] " prefixes."""
    return re.sub(r"^(?:\s*\[[^\]]*\])+\s*", "", line).strip()


def _first_number(body: str) -> float:
    m = re.search(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", body)
    if not m:
        raise EdgepruneError(f"no number in trtexec summary line {body!r}")
    return float(m.group(0))


def _parse_stats(body: str) -> dict[str, float]:
    stats = {}
    for name, pct, value in re.findall(
            r"(min|max|mean|median|percentile\(([\d.]+)%\))\s*=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|inf|nan)",
            body):
        key = f"p{float(pct):g}" if pct else name
        stats[key] = float(value)
    return stats


def _get(rec: dict[str, Any], key: str) -> float | None:
    if key in rec:
        return float(rec[key])
    old = _OLD_KEYS.get(key)
    return float(rec[old]) if old and old in rec else None


def _interval(rec: dict[str, Any], metric: str) -> float | None:
    value = _get(rec, metric)
    if value is not None:
        return value
    spans = {"computeMs": ("startComputeMs", "endComputeMs"), "h2dMs": ("startH2dMs", "endH2dMs"),
             "d2hMs": ("startD2hMs", "endD2hMs"), "enqMs": ("startEnqMs", "endEnqMs")}
    if metric in spans:
        a, b = (_get(rec, k) for k in spans[metric])
        return None if a is None or b is None else b - a
    if metric == "latencyMs":
        parts = [_interval(rec, k) for k in ("h2dMs", "computeMs", "d2hMs")]
        return None if any(p is None for p in parts) else float(sum(parts))
    return None


def _last_error(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and "&&&&" not in line]
    tagged = [line for line in lines if "[E]" in line]
    worded = [line for line in lines if "rror" in line]
    return (tagged or worded or lines or ["no output"])[-1][:400]


__all__ = ["SETTING_FLAGS", "TrtexecCommand", "TrtexecRunner", "locate_trtexec", "parse_export_output",
           "parse_export_times", "parse_help_flags", "parse_trtexec_device", "parse_trtexec_settings",
           "parse_trtexec_summary", "parse_trtexec_version", "runtime_setting_flags", "trtexec_command",
           "trtexec_stats", "verify_settings"]
