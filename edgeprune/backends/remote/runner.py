"""Measurement on another machine over SSH (`--remote user@host[:port]`), as a Runner, so the loop needs no
special case: prepare copies the ONNX artifact there and builds/loads it there with the device's own runner,
brings back what was built (a TensorRT engine and its sidecar), and measure, infer and memory run there.

The session (session.py) is one master SSH connection and one long-lived worker on the far side (worker.py)
speaking JSON lines, which keeps sessions, CUDA contexts and engines loaded between calls. edgeprune must be
installed on the far side, for the Python named by --remote-python. A failure of any kind is one line naming the
host and what to do.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError
from ..base.runner import Deployed, WrappingRunner
from ..base.stats import LatencyStats
from .session import SshSession
from .target import SshTarget, check_ssh_options, parse_target


class RemoteRunner(WrappingRunner):
    """The device's runner, run on the far side of an SshSession; files go there, results come back."""

    def __init__(self, session: SshSession, runner: str, options: dict[str, Any] | None = None,
                 interval_ms: int = 100):
        from .. import runner_class

        self.session = session
        self.name = runner
        self.inner = runner_class(runner)  # what it needs beside the ONNX and what it ships are the far runner's
        self.beside_onnx = self.inner.beside_onnx
        self.options = dict(options or {})
        self._local_cache = self._timing_cache_path()
        self._remote_cache = f"{session.workdir}/timing.cache" if self._local_cache else None
        if self._local_cache and self._local_cache.is_file():
            session.push_file(self._local_cache, self._remote_cache)
        started = session.request("start", runner=runner, options=self._far_options(), interval_ms=interval_ms)
        self._describe, self._tolerance = started["describe"], tuple(started["parity_tolerance"])

    def available(self) -> str | None:
        return None if not self.session.closed else f"the session on {self.session.target} is closed"

    def prepare(self, onnx_path: Path, workdir: Path) -> Deployed:
        from ...files import sha256_file

        onnx_path, workdir = Path(onnx_path), Path(workdir)
        files = [onnx_path, *external_data_files(onnx_path)]
        files += [onnx_path.with_name(n) for n in self.beside_onnx if onnx_path.with_name(n).exists()]
        far_dir = self.session.request("mkdir", name=onnx_path.parent.name)["path"]
        self.session.push(files, far_dir)
        far = {f"{far_dir}/{f.name}": f for f in files}
        reply = self.session.request("prepare", onnx=f"{far_dir}/{onnx_path.name}", workdir=far_dir,
                                     sha256={p: sha256_file(f) for p, f in far.items()})
        d = reply["deployed"]
        for remote_file, info in reply["files"].items():
            if remote_file not in far:  # built there: an engine and its sidecar
                far[remote_file] = self.session.pull(remote_file, workdir / Path(remote_file).name, info["sha256"])
        self._pull_timing_cache()
        return Deployed(d["runner"], far.get(d["path"], workdir / Path(d["path"]).name), d["input_name"],
                        tuple(d["input_shape"]), {**d["meta"], "remote_path": d["path"],
                                                  "remote": str(self.session.target)})

    def infer(self, deployed: Deployed, batch: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(batch), allow_pickle=False)
        reply = self.session.request("infer", path=deployed.meta["remote_path"],
                                     batch=base64.b64encode(buf.getvalue()).decode("ascii"))
        return np.load(io.BytesIO(base64.b64decode(reply["out"])), allow_pickle=False)

    def measure_interleaved(self, deployed: list[Deployed], warmup: int, iters: int, blocks: int,
                            min_block_s: float = 0.0) -> list[LatencyStats]:
        reply = self.session.request("measure", paths=[d.meta["remote_path"] for d in deployed], warmup=warmup,
                                     iters=iters, blocks=blocks, min_block_s=min_block_s)
        out = []
        for s in reply["stats"]:
            s["extra"] = {**(s.get("extra") or {}), "measured_on": str(self.session.target)}
            out.append(LatencyStats.from_dict(s))
        return out

    def memory(self, deployed: Deployed) -> dict[str, Any]:
        return self.session.request("memory", path=deployed.meta["remote_path"])

    def describe(self) -> dict[str, Any]:
        hello = self.session.hello
        return {**self._describe, "remote": {"target": str(self.session.target), "transport": "ssh",
                                             "hostname": hello["host"].get("hostname"),
                                             "python": hello.get("python"), "edgeprune": hello.get("edgeprune")}}

    def telemetry(self) -> dict[str, Any]:
        return {**self.session.request("telemetry"), "where": f"remote: {self.session.target}"}

    def parity_tolerance(self) -> tuple[float, float]:
        return self._tolerance

    def close(self) -> None:
        self.session.close()

    # -- the TensorRT timing cache lives there while the session lasts, and comes back after each build ---------
    def _timing_cache_path(self) -> Path | None:
        opts = self.options.get("options")
        cache = getattr(opts, "timing_cache", None) or (opts.get("timing_cache") if isinstance(opts, dict) else None)
        return Path(cache) if cache else None

    def _far_options(self) -> dict[str, Any]:
        out = dict(self.options)
        opts = out.get("options")
        if opts is not None:
            opts = opts.to_dict() if hasattr(opts, "to_dict") else dict(opts)
            if self._remote_cache:
                opts["timing_cache"] = self._remote_cache
            out["options"] = opts
        return out

    def _pull_timing_cache(self) -> None:
        if not self._remote_cache:
            return
        from ...files import sha256_file

        info = self.session.request("stat", paths=[self._remote_cache])[self._remote_cache]
        local = self._local_cache
        if info and (not local.is_file() or sha256_file(local) != info["sha256"]):
            self.session.pull(self._remote_cache, local, info["sha256"])


def external_data_files(onnx_path: Path) -> list[Path]:
    """The files an ONNX model's external-data initializers live in (beside it)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    names = []
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in init.external_data if e.key == "location"), None)
            if loc and loc not in names:
                names.append(loc)
    for loc in names:
        if Path(loc).name != loc:
            raise ConfigError(f"{onnx_path} keeps external data in {loc!r}, outside its own directory: save the "
                              "ONNX with its external data beside it to measure it remotely")
    return [onnx_path.with_name(n) for n in names]


__all__ = ["RemoteRunner", "SshSession", "SshTarget", "parse_target", "check_ssh_options", "external_data_files"]
