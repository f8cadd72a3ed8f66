"""trtexec runner: builds and times engines with NVIDIA's command-line tool, for hosts without TensorRT's Python
package (a bare JetPack image) and as a cross-check of the in-process TensorRT runner.

The command lines are built in trtexec_cli.py and trtexec's output is read in trtexec_output.py; this module runs
the processes. Each timed block is one trtexec process (its own warm-up by time, --warmUp), scheduled by the same
interleaved-blocks schedule as every other runner (base/schedule.py).
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import EdgepruneError, RuntimeUnavailable
from ...files import scratch_dir
from ..base.runner import Deployed, gpu_parity_tolerance, run_static_batches
from ..base.schedule import interleave
from ..base.stats import LatencyStats, summarize
from .api import cuda_device_identity
from .base import TensorRTArtifacts
from .onnx_info import OnnxInfo, inspect_onnx
from .plan import BuildOptions, version_str
from .sidecar import EngineMetadata, metadata_path, read_metadata, rebuild_reason, write_metadata
from .trtexec_cli import TrtexecCommand, locate_trtexec, trtexec_command, trtexec_search_path, verify_settings
from .trtexec_output import (parse_export_output, parse_export_times, parse_help_flags, parse_trtexec_device,
                             parse_trtexec_settings, parse_trtexec_summary, parse_trtexec_version,
                             trtexec_error_line)

log = logging.getLogger(__name__)


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
        return (f"trtexec is not installed on this host (looked in {trtexec_search_path(self.executable)}); it ships with TensorRT: JetPack's "
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
            with scratch_dir("edgeprune-trtexec-") as tmp:
                inp, out = tmp / "input.bin", tmp / "output.json"
                np.ascontiguousarray(x, dtype=np.float32).tofile(inp)
                cmd = self._command(deployed, version, flags, warmup_ms=0, iterations=1, export_times=None,
                                    extra=(f"--loadInputs={deployed.input_name}:{inp}", f"--exportOutput={out}"))
                self._run(cmd.argv)
                return parse_export_output(json.loads(out.read_text()))

        return run_static_batches(run_one, np.asarray(batch, dtype=np.float32), deployed.input_shape[0])

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        version, flags = self._probe()
        summaries: list[dict[str, Any]] = [{} for _ in deployed]
        settings: list[dict[str, Any]] = [{} for _ in deployed]
        with scratch_dir("edgeprune-trtexec-") as tmp:
            count = itertools.count()

            def block_of(i: int):
                def run() -> list[float]:
                    export = tmp / f"times-{i}-{next(count)}.json"
                    cmd = self._command(deployed[i], version, flags, warmup_ms=self.warmup_ms, iterations=iters,
                                        export_times=export, duration_s=math.ceil(min_block_s))
                    text = self._run(cmd.argv)
                    verify_settings(cmd.settings, parse_trtexec_settings(text))
                    summaries[i] = self._summary(text)
                    settings[i] = cmd.settings
                    self._device = parse_trtexec_device(text) or self._device
                    return parse_export_times(json.loads(export.read_text()), self.metric,
                                              skip_before_ms=self.warmup_ms)
                return run

            times = interleave([block_of(i) for i in range(len(deployed))], blocks)
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
        # trtexec writes --saveEngine as it goes: it writes a partial name, renamed once it exits cleanly, so a
        # trtexec killed half way leaves no engine that looks complete (and the stale one is gone first).
        partial = engine_path.with_name(engine_path.name + ".partial")
        for stale in (engine_path, metadata_path(engine_path), partial):
            stale.unlink(missing_ok=True)
        cmd = trtexec_command(onnx_path, partial, self.options, version, iterations=0, onnx_info=info,
                              has_dla=self.has_dla, calib_cache=self.calib_cache, available_flags=flags,
                              cuda_graph=self.cuda_graph, spin_wait=self.spin_wait,
                              data_transfers=self.data_transfers, executable=str(locate_trtexec(self.executable)))
        try:
            text = self._run(cmd.argv)
            if not partial.is_file() or partial.stat().st_size == 0:
                raise EdgepruneError(f"trtexec reported success but wrote no engine at {partial}")
            os.replace(partial, engine_path)
        finally:
            partial.unlink(missing_ok=True)
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
        return read_metadata(engine_path) or meta  # with the engine's size and sha256

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

    @staticmethod
    def _summary(text: str) -> dict[str, Any]:
        """trtexec's own summary, kept beside edgeprune's statistics (which come from --exportTimes). One that
        trtexec cut short is kept with what it lacks under "incomplete", and said in the log."""
        summary = parse_trtexec_summary(text, require_complete=False)
        if summary.get("incomplete"):
            log.warning("trtexec's performance summary is incomplete: %s", "; ".join(summary["incomplete"]))
        return summary

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
        if proc.returncode < 0:  # killed: what it printed stops wherever the signal found it
            try:
                how = signal.Signals(-proc.returncode).name
            except ValueError:
                how = f"signal {-proc.returncode}"
            raise EdgepruneError(f"trtexec was killed by {how} before it finished ({' '.join(argv[:2])} ...): "
                                 f"nothing it produced is used; last said: {trtexec_error_line(text)}")
        if proc.returncode != 0 or "&&&& FAILED" in text:
            raise EdgepruneError(f"trtexec failed (exit {proc.returncode}): {trtexec_error_line(text)}")
        return text


__all__ = ["TrtexecRunner"]
