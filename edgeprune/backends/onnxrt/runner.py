"""ONNX Runtime runner: CPU provider, or CUDA when onnxruntime-gpu is installed."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import EdgepruneError
from ..base.stats import LatencyStats, summarize
from ..base.runner import PARITY_TOLERANCE, Deployed, RunContext, Runner, run_static_batches
from .worker import make_session

log = logging.getLogger(__name__)


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                 seed: int = 0):
        self.providers = tuple(providers)
        self.threads = threads
        self.seed = seed
        self._sessions: dict[Path, Any] = {}

    @classmethod
    def options_for(cls, context: RunContext) -> dict[str, Any]:
        return {"threads": context.threads, "seed": context.seed}

    @classmethod
    def int8_profile(cls) -> str:
        # ORT's fast integer kernels are U8S8 with its own Q/DQ placement (export/quantize.py, measured there)
        return "onnxruntime"

    @classmethod
    def host_support(cls, providers: tuple[str, ...], host: Any) -> str | None:
        if host.onnxruntime is None:
            return "onnxruntime is not installed"
        missing = [p for p in providers if p not in host.ort_providers]
        return f"onnxruntime here lacks {', '.join(missing)}" if missing else None

    def available(self) -> str | None:
        try:
            import onnxruntime as ort
        except Exception as exc:
            return f"onnxruntime cannot be imported ({exc})"
        missing = [p for p in self.providers if p not in ort.get_available_providers()]
        if missing:
            hint = (" (install the gpu extra, then keep onnxruntime-gpu alone: README, 'What to install where')"
                    if "CUDAExecutionProvider" in missing else "")
            return f"onnxruntime {ort.__version__} lacks {', '.join(missing)}{hint}"
        return None

    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        sess = self._session(Path(onnx_path))
        inp = sess.get_inputs()[0]
        shape = tuple(d if isinstance(d, int) else 1 for d in inp.shape)
        return Deployed(self.name, Path(onnx_path), inp.name, shape, {"providers": list(sess.get_providers())})

    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        sess = self._session(deployed.path)
        run_one = lambda x: sess.run(None, {deployed.input_name: x})[0]  # noqa: E731
        return run_static_batches(run_one, batch.astype(np.float32), deployed.input_shape[0])

    def release(self) -> None:
        """Drop in-process sessions (their threads would otherwise compete with timing)."""
        self._sessions.clear()

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        self.release()
        out = self._worker({"mode": "time", "models": [str(d.path) for d in deployed], "warmup": warmup,
                            "iters": iters, "blocks": blocks, "min_block_s": min_block_s})
        return [summarize(times, warmup, batch_size=d.input_shape[0], runtime=self.name,
                          threads=self.threads, versions=out["versions"],
                          extra={"providers": list(self.providers), "process": "isolated worker",
                                 "intra_op_spinning": False})
                for d, times in zip(deployed, out["times_ms"])]

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        out = self._worker({"mode": "memory", "models": [str(deployed.path)], "warmup": 5})
        return {"weights_bytes": onnx_weight_bytes(deployed.path), "peak_mb": out["session_peak_mb"],
                "peak_source": "ONNX Runtime session: peak resident memory (VmHWM) of a fresh process after "
                               "creating the session and 5 runs, minus its resident memory before"}

    def parity_tolerance(self) -> tuple[float, float]:
        gpu = any(p in self.providers for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider"))
        return PARITY_TOLERANCE["tf32" if gpu else "fp32"]  # the CUDA provider's use_tf32 is on by default

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {"runner": self.name, "onnxruntime": ort.__version__, "providers": list(self.providers),
                "threads": self.threads}

    def _session(self, path: Path):
        if path not in self._sessions:
            self._sessions[path] = make_session(str(path), list(self.providers), self.threads)
        return self._sessions[path]

    def _worker(self, req: dict) -> dict:
        req = {**req, "providers": list(self.providers), "threads": self.threads, "seed": self.seed}
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads or "")} if self.threads else dict(os.environ)
        proc = subprocess.run([sys.executable, "-m", "edgeprune.backends.onnxrt.worker"],
                              input=json.dumps(req), capture_output=True, text=True, env=env)
        try:
            out = json.loads(proc.stdout)
        except json.JSONDecodeError:
            out = {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
        if proc.returncode or "error" in out:
            raise EdgepruneError(f"ONNX Runtime measurement failed: {out.get('error')}")
        return out



class OnnxRuntimeCudaRunner(OnnxRuntimeRunner):
    """ONNX Runtime on the CUDA provider (onnxruntime-gpu), the CPU provider for what CUDA does not run."""

    name = "onnxruntime-cuda"

    def __init__(self, providers: Sequence[str] = ("CUDAExecutionProvider", "CPUExecutionProvider"),
                 threads: int | None = None, seed: int = 0):
        super().__init__(providers, threads, seed)

def onnx_weight_bytes(path: Path) -> int:
    """Bytes of the initializers (weights) in an ONNX file, external data included."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    total = 0
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            total += int(next((e.value for e in init.external_data if e.key == "length"), 0))
        else:
            n = int(np.prod(init.dims)) if init.dims else 1
            total += n * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
    return total


__all__ = ["OnnxRuntimeRunner", "onnx_weight_bytes"]
