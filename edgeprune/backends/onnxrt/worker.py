"""Timing and memory measurement for ONNX Runtime, run in a fresh process.

A separate process keeps the timed session away from PyTorch's threads and gives a clean peak-memory reading.
It imports only numpy, onnxruntime and the standard-library timing schedule (base/schedule.py). Request (JSON on stdin) -> result (JSON on stdout):
  {"mode": "time", "models": [path, ...], "providers": [...], "threads": 1, "warmup": 50, "iters": 200,
   "blocks": 6, "min_block_s": 0.0, "seed": 0}
  -> {"times_ms": [[[block of run times] per block] per model], "versions": {...}}
  {"mode": "memory", "models": [path], ...} -> {"rss_before_mb": .., "peak_mb": .., "session_peak_mb": ..}
Also usable on a remote device: `python -m edgeprune.backends.onnxrt.worker < request.json`.
"""
from __future__ import annotations

import json
import sys
import time

from ..base.schedule import interleave_blocks


def make_session(path: str, providers: list[str], threads: int | None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # An idle session's spinning intra-op threads steal cores from the one being timed; with sessions
    # interleaved, spinning is off for all of them so each is timed alike.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=providers)


def _feed(sess, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    feed = {}
    for inp in sess.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        feed[inp.name] = rng.standard_normal(shape).astype(np.float32)
    return feed


def time_models(req: dict) -> dict:
    sessions = [make_session(p, req["providers"], req.get("threads")) for p in req["models"]]
    feeds = [_feed(s, req.get("seed", 0)) for s in sessions]
    times = interleave_blocks([_timer(s, f) for s, f in zip(sessions, feeds)], int(req["warmup"]),
                              int(req["iters"]), int(req["blocks"]), float(req.get("min_block_s", 0)))
    return {"times_ms": times, "versions": _versions(), "threads": req.get("threads")}


def _timer(sess, feed):
    """One run of `sess` on `feed`, in milliseconds of wall time."""
    def run() -> float:
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        return (time.perf_counter_ns() - t0) / 1e6
    return run


def memory_of_model(req: dict) -> dict:
    import onnxruntime  # noqa: F401  imported before the baseline reading, so it is not counted

    before = _status_mb("VmRSS")
    sess = make_session(req["models"][0], req["providers"], req.get("threads"))
    feed = _feed(sess, req.get("seed", 0))
    for _ in range(max(5, int(req.get("warmup", 5)))):
        sess.run(None, feed)
    peak = _status_mb("VmHWM")
    return {"rss_before_mb": before, "peak_mb": peak,
            "session_peak_mb": None if peak is None or before is None else round(peak - before, 2),
            "versions": _versions()}


def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def _versions() -> dict:
    import numpy
    import onnxruntime

    return {"onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__}


def main() -> int:
    req = json.load(sys.stdin)
    try:
        out = time_models(req) if req["mode"] == "time" else memory_of_model(req)
    except Exception as exc:  # reported to the parent as one line
        json.dump({"error": f"{type(exc).__name__}: {exc}"}, sys.stdout)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
