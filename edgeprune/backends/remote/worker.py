"""The far side of `--remote user@host`: serves one RemoteRunner over this process's stdin and stdout.

Started over SSH as `python -m edgeprune.backends.remote.worker [--dir PARENT]`. It makes a private
working directory (removed when the session ends), says hello, then answers one JSON request per line with one
JSON response per line ({"ok": result} or {"error": message, "type": exception class}) until "close" or the end
of its input. The runner it serves is the device's own (onnxruntime, tensorrt, trtexec, torch-cuda), wrapped in
the Jetson telemetry monitor where this host has tegrastats or jtop.

Anything else that writes to stdout (a native library, a stray print) is sent to stderr, so it cannot corrupt
the protocol; stderr goes back to the caller's logs.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

PROTOCOL = 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgeprune.backends.remote.worker",
                                     description="Serve edgeprune measurements to a RemoteRunner (JSON lines).")
    parser.add_argument("--dir", help="parent of the session's working directory (default: the temp directory)")
    args = parser.parse_args(argv)
    protocol_out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for sig in (signal.SIGHUP, signal.SIGTERM):  # the connection dropped or the caller gave up: clean up
        signal.signal(sig, lambda *_: sys.exit(1))
    parent = Path(args.dir).expanduser() if args.dir else None
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="edgeprune-remote-", dir=parent))
    try:
        worker = Worker(workdir)
        _send(protocol_out, worker.hello())
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            try:
                _send(protocol_out, {"ok": worker.handle(req)})
            except Exception as exc:  # reported to the caller as one line, with its class
                _send(protocol_out, {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}",
                                     "type": type(exc).__name__})
            if req.get("op") == "close":
                break
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


class Worker:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.runner = None
        self.deployed: dict[str, Any] = {}
        self._dirs = 0

    def hello(self) -> dict[str, Any]:
        from ... import __version__
        from ...targets.devices import detect_host
        from ..jetson.telemetry import unavailable_reason

        return {"hello": "edgeprune-remote", "protocol": PROTOCOL, "edgeprune": __version__, "pid": os.getpid(),
                "python": sys.executable, "dir": str(self.workdir), "host": detect_host().to_dict(),
                "telemetry": unavailable_reason()}

    def handle(self, req: dict[str, Any]) -> Any:
        op = req.get("op")
        handler: Callable[[dict[str, Any]], Any] | None = getattr(self, f"op_{op}", None)
        if handler is None:
            raise ValueError(f"unknown request {op!r}")
        return handler(req)

    def op_start(self, req: dict[str, Any]) -> dict[str, Any]:
        from .. import get_runner
        from ..jetson.telemetry import JetsonMonitor, MonitoredRunner

        options = dict(req.get("options") or {})
        if isinstance(options.get("options"), dict):  # TensorRT build options travel as a dict
            from ..trt.plan import BuildOptions

            options["options"] = BuildOptions.from_dict(options["options"])
        runner = get_runner(req["runner"], **options)
        # always monitored: where this host is no Jetson, the monitor records nothing and its report says why
        self.runner = MonitoredRunner(runner, JetsonMonitor(int(req.get("interval_ms") or 100)))
        return {"describe": self.runner.describe(), "parity_tolerance": list(self.runner.parity_tolerance())}

    def op_mkdir(self, req: dict[str, Any]) -> dict[str, str]:
        self._dirs += 1
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(req.get("name", "")))[:40]
        path = self.workdir / f"{self._dirs:03d}-{name}"
        path.mkdir()
        return {"path": str(path)}

    def op_stat(self, req: dict[str, Any]) -> dict[str, Any]:
        return {p: _file_info(Path(p)) for p in req["paths"]}

    def op_prepare(self, req: dict[str, Any]) -> dict[str, Any]:
        for path, digest in (req.get("sha256") or {}).items():
            info = _file_info(Path(path))
            if info is None or info["sha256"] != digest:
                from ...errors import RuntimeUnavailable

                raise RuntimeUnavailable(f"the copy of {Path(path).name} here is incomplete (sha256 differs from "
                                         "the sender's): the connection broke during the copy; run again")
        deployed = self._runner().prepare(Path(req["onnx"]), Path(req["workdir"]))
        self.deployed[str(deployed.path)] = deployed
        from ..trt.sidecar import metadata_path

        produced = [deployed.path, metadata_path(deployed.path)]
        return {"deployed": _deployed_dict(deployed),
                "files": {str(p): _file_info(p) for p in produced if Path(p).is_file()}}

    def op_infer(self, req: dict[str, Any]) -> dict[str, str]:
        import numpy as np

        batch = np.load(io.BytesIO(base64.b64decode(req["batch"])), allow_pickle=False)
        out = self._runner().infer(self._deployed(req["path"]), batch)
        buf = io.BytesIO()
        np.save(buf, np.asarray(out), allow_pickle=False)
        return {"out": base64.b64encode(buf.getvalue()).decode("ascii")}

    def op_measure(self, req: dict[str, Any]) -> dict[str, Any]:
        stats = self._runner().measure_interleaved([self._deployed(p) for p in req["paths"]], int(req["warmup"]),
                                                   int(req["iters"]), int(req["blocks"]),
                                                   float(req.get("min_block_s", 0.0)))
        return {"stats": [s.to_dict() for s in stats]}

    def op_memory(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._runner().memory(self._deployed(req["path"]))

    def op_describe(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._runner().describe()

    def op_telemetry(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._runner().telemetry()

    def op_close(self, req: dict[str, Any]) -> dict[str, Any]:
        release = getattr(self.runner, "release", None)
        if callable(release):
            release()
        return {}

    def _runner(self):
        if self.runner is None:
            raise RuntimeError("no runner: the session was not started")
        return self.runner

    def _deployed(self, path: str):
        try:
            return self.deployed[path]
        except KeyError:
            raise RuntimeError(f"{path} was not prepared in this session") from None


def _deployed_dict(d) -> dict[str, Any]:
    return {"runner": d.runner, "path": str(d.path), "input_name": d.input_name,
            "input_shape": list(d.input_shape), "meta": json.loads(json.dumps(d.meta, default=str))}


def _file_info(path: Path) -> dict[str, Any] | None:
    from ...files import sha256_file

    if not path.is_file():
        return None
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def _send(out, obj: Any) -> None:
    out.write(json.dumps(obj, default=str) + "\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
