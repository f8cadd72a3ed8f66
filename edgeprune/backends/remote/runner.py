"""Measurement on another machine over SSH (`--remote user@host[:port]`), as a Runner, so the loop needs no
special case: prepare copies the ONNX artifact there and builds/loads it there with the device's own runner,
brings back what was built (a TensorRT engine and its sidecar), and measure, infer and memory run there.

Transport is the system's OpenSSH client (so ~/.ssh/config, keys and agents work as for `ssh` itself): one
master connection (ControlMaster) that every later ssh and scp call reuses, BatchMode so nothing ever waits for a
password, and one long-lived worker process on the far side (remote_worker.py) speaking JSON lines, which keeps
sessions, CUDA contexts and engines loaded between calls. edgeprune must be installed on the far side, for the
Python named by --remote-python. Every file copied is checked by sha256 on arrival, both ways; a failure of any
kind is one line naming the host and what to do.
"""
from __future__ import annotations

import base64
import collections
import io
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ... import __version__
from ...errors import ConfigError, EdgepruneError, ModelLoadError, ParityError, RuntimeUnavailable
from ..base.stats import LatencyStats
from ..base.runner import Deployed, Runner
from .worker import PROTOCOL

log = logging.getLogger(__name__)

WORKER_MODULE = "edgeprune.backends.remote.worker"
# The options edgeprune itself must set for the session to work; a user value would break it.
RESERVED_SSH_OPTIONS = ("batchmode", "controlmaster", "controlpath", "controlpersist")
_ERRORS = {cls.__name__: cls for cls in (ConfigError, ModelLoadError, ParityError, RuntimeUnavailable,
                                         EdgepruneError)}


@dataclass(frozen=True)
class SshTarget:
    user: str | None
    host: str
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def scp_host(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}" if self.user else host

    def __str__(self) -> str:
        if self.port is None:
            return self.destination
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"


def parse_target(text: str) -> SshTarget:
    """`user@host`, `user@host:port`, `host`, `user@[v6addr]:port` or `ssh://user@host:port` (a host name from
    ~/.ssh/config works too)."""
    raw = str(text).strip()
    spec = raw[len("ssh://"):] if raw.startswith("ssh://") else raw
    user, _, hostport = spec.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                host = ""
            port = rest[1:]
    elif hostport.count(":") == 1:
        host, port = hostport.split(":")
    bad = (not host or any(c.isspace() or c in "/'\"`$;&|" for c in spec) or host.startswith("-")
           or user.startswith("-") or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)))
    if bad:
        raise ConfigError(f"remote target {raw!r} is malformed: write user@host, user@host:port or a host name "
                          "from ~/.ssh/config")
    return SshTarget(user or None, host, int(port) if port is not None else None)


def check_ssh_options(options: Sequence[str]) -> tuple[str, ...]:
    """ssh -o options as `Key=Value` (IdentityFile=~/.ssh/jetson, StrictHostKeyChecking=accept-new, ...)."""
    out = []
    for opt in options:
        key = re.split(r"[=\s]", str(opt).strip(), maxsplit=1)[0]
        if not key or key == str(opt).strip() or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
            raise ConfigError(f"ssh option {opt!r} is malformed: write Key=Value as in ssh_config, e.g. "
                              "IdentityFile=~/.ssh/id_jetson")
        if key.lower() in RESERVED_SSH_OPTIONS:
            raise ConfigError(f"ssh option {key} is set by edgeprune itself (it needs it to run unattended over "
                              "one shared connection): leave it out")
        out.append(str(opt).strip())
    return tuple(out)


class SshSession:
    """A master SSH connection and the edgeprune worker it runs on the far side."""

    def __init__(self, target: str | SshTarget, python: str = "python3", remote_dir: str | None = None,
                 ssh_options: Sequence[str] = (), connect_timeout_s: int = 10):
        self.target = target if isinstance(target, SshTarget) else parse_target(target)
        self.python = python
        self.remote_dir = remote_dir
        self.ssh_options = check_ssh_options(ssh_options)
        self.connect_timeout_s = int(connect_timeout_s)
        self._control = Path(tempfile.mkdtemp(prefix="ep-ssh-"))
        self._proc: subprocess.Popen | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self.hello: dict[str, Any] = {}
        self.closed = False
        self._finalizer = weakref.finalize(self, _shutdown, None, self._control, self._base_argv())

    # -- opening and closing ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, target: str | SshTarget, python: str = "python3", remote_dir: str | None = None,
             ssh_options: Sequence[str] = (), connect_timeout_s: int = 10) -> "SshSession":
        session = cls(target, python, remote_dir, ssh_options, connect_timeout_s)
        try:
            session._connect()
            session._start_worker()
        except BaseException:
            session.close()
            raise
        return session

    def _connect(self) -> None:
        """The master connection: authentication happens here, once; later calls ride on it."""
        log_path = self._control / "master.log"
        # ControlPersist=60: the master outlives the worker's session by a minute at most, even if this process
        # dies without closing it (the worker's session keeps it up for as long as the build runs).
        argv = [*self._base_argv(), "-M", "-N", "-f", "-o", "ControlPersist=60", *self._port_args("-p"),
                self.target.destination]
        with open(log_path, "w") as log_fh:
            try:
                proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=log_fh, stderr=log_fh,
                                      timeout=self.connect_timeout_s + 60)
            except FileNotFoundError:
                raise RuntimeUnavailable("the ssh client is not installed here: install OpenSSH's client "
                                         "(openssh-client) to measure with --remote") from None
            except subprocess.TimeoutExpired:
                raise RuntimeUnavailable(f"cannot reach {self.target} over SSH: no answer in "
                                         f"{self.connect_timeout_s + 60} s: check the host and the network") from None
        if proc.returncode != 0:
            raise RuntimeUnavailable(ssh_failure(self.target, log_path.read_text(), proc.returncode))

    def _start_worker(self) -> None:
        command = f"exec {remote_path_arg(self.python)} -m {WORKER_MODULE}"
        if self.remote_dir:
            command += f" --dir {remote_path_arg(self.remote_dir)}"
        argv = [*self._base_argv(), "-o", "ControlMaster=no", *self._port_args("-p"), self.target.destination,
                command]
        self._proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._control, self._base_argv())
        threading.Thread(target=self._drain_stderr, args=(self._proc,), daemon=True).start()
        line = self._proc.stdout.readline()
        try:
            hello = json.loads(line) if line else None
        except json.JSONDecodeError:
            hello = None
        if not isinstance(hello, dict) or hello.get("hello") != "edgeprune-remote":
            rc = self._wait_exit()
            raise RuntimeUnavailable(worker_failure(self.target, self.python, rc, list(self._stderr), line))
        if hello.get("protocol") != PROTOCOL:
            raise RuntimeUnavailable(f"edgeprune {hello.get('edgeprune')} on {self.target} speaks remote protocol "
                                     f"{hello.get('protocol')}, this edgeprune {__version__} speaks {PROTOCOL}: "
                                     "install the same edgeprune version on both machines")
        self.hello = hello
        log.info("edgeprune %s worker on %s (pid %s, %s), working in %s", hello.get("edgeprune"), self.target,
                 hello.get("pid"), hello.get("python"), hello.get("dir"))

    def close(self) -> None:
        """End the worker (it removes its working directory) and the master connection."""
        if self.closed:
            return
        self.closed = True
        if self._proc is not None and self._proc.poll() is None:
            try:
                self.request("close", _timeout=30)
            except EdgepruneError:
                pass
        self._finalizer()

    # -- requests and files ----------------------------------------------------------------------------------
    @property
    def workdir(self) -> str:
        return self.hello["dir"]

    @property
    def host(self):
        from ...targets.devices import HostInfo

        raw = dict(self.hello["host"])
        raw["ort_providers"] = tuple(raw.get("ort_providers") or ())
        return HostInfo(**raw)

    def request(self, op: str, _timeout: float | None = None, **fields: Any) -> Any:
        """One request to the far worker; its exceptions come back as the same edgeprune error classes."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                raise RuntimeUnavailable(self._lost(op))
            try:
                proc.stdin.write(json.dumps({"op": op, **fields}) + "\n")
                proc.stdin.flush()
                line = _readline(proc.stdout, _timeout)
            except (BrokenPipeError, OSError, ValueError):
                line = ""
            if not line:
                raise RuntimeUnavailable(self._lost(op))
        reply = json.loads(line)
        if "error" in reply:
            cls = _ERRORS.get(reply.get("type"), EdgepruneError)
            raise cls(f"on {self.target}: {reply['error']}")
        return reply["ok"]

    def push(self, files: Sequence[Path], remote_dir: str) -> None:
        """Copy local files into a far directory (their sha256 is checked there before use)."""
        self._scp([str(f) for f in files], f"{self.target.scp_host}:{remote_dir}/", f"copying "
                  f"{', '.join(Path(f).name for f in files)} to {self.target}")

    def push_file(self, local: Path, remote_file: str) -> None:
        """Copy one file to a far path, and check that it arrived whole."""
        from ...files import sha256_file

        self._scp([str(local)], f"{self.target.scp_host}:{remote_file}", f"copying {Path(local).name} to "
                  f"{self.target}")
        info = self.request("stat", paths=[remote_file])[remote_file]
        if not info or info["sha256"] != sha256_file(Path(local)):
            raise RuntimeUnavailable(f"the copy of {Path(local).name} on {self.target} is incomplete (sha256 "
                                     "differs): the connection broke during the copy; run again")

    def pull(self, remote_file: str, local: Path, sha256: str) -> Path:
        """Copy a far file here, in place only once complete and matching `sha256`."""
        from ...files import sha256_file

        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{local.name}.", suffix=".part", dir=local.parent)
        os.close(fd)
        try:
            self._scp([f"{self.target.scp_host}:{remote_file}"], tmp,
                      f"bringing {Path(remote_file).name} back from {self.target}")
            if sha256_file(Path(tmp)) != sha256:
                raise RuntimeUnavailable(f"the copy of {Path(remote_file).name} from {self.target} is incomplete "
                                         "(sha256 differs): the connection broke during the copy; run again")
            os.replace(tmp, local)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return local

    def _scp(self, sources: list[str], dest: str, what: str) -> None:
        argv = ["scp", "-q", "-B", *self._scp_options(), *self._port_args("-P"), *sources, dest]
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        except FileNotFoundError:
            raise RuntimeUnavailable("scp is not installed here: install OpenSSH's client (openssh-client)") from None
        if proc.returncode != 0:  # scp's first line says why ("dest open ...: No such file or directory")
            first = next((ln.strip() for ln in proc.stderr.splitlines() if ln.strip()), f"scp exit {proc.returncode}")
            raise RuntimeUnavailable(f"{what} failed ({first[:300]}): check the connection, the far directory "
                                     "(--remote-dir) and its free space; run again")

    # -- helpers ---------------------------------------------------------------------------------------------
    def _base_argv(self) -> list[str]:
        return ["ssh", *self._scp_options()]

    def _scp_options(self) -> list[str]:
        opts: list[str] = []
        for o in self.ssh_options:  # first: ssh keeps the first value it sees for each option
            opts += ["-o", o]
        for o in ("BatchMode=yes", f"ConnectTimeout={self.connect_timeout_s}", "ServerAliveInterval=15",
                  "ServerAliveCountMax=4", f"ControlPath={self._control / 'master'}"):
            opts += ["-o", o]
        return opts

    def _port_args(self, flag: str) -> list[str]:
        return [flag, str(self.target.port)] if self.target.port else []

    def _drain_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            line = line.rstrip()
            if line:
                self._stderr.append(line)
                log.debug("[%s] %s", self.target, line)

    def _wait_exit(self) -> int | None:
        try:
            return self._proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            return None

    def _lost(self, op: str) -> str:
        rc = self._wait_exit() if self._proc is not None else None
        why = _useful_tail(list(self._stderr)) or (f"exit {rc}" if rc is not None else "no answer")
        return (f"the edgeprune session on {self.target} ended during {op} ({why}): check the device (power, "
                "memory, network) and run again")


class RemoteRunner(Runner):
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

    def shipped(self, deployed: Deployed) -> dict[str, Path]:  # type: ignore[override]
        return self.inner.shipped(deployed)

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


def ssh_failure(target: SshTarget, stderr: str, rc: int) -> str:
    """One line for a failed SSH connection, with what to do."""
    msg = _useful_tail(stderr.splitlines()).rstrip(".") or f"ssh exit {rc}"
    low = msg.lower()
    if "permission denied" in low:
        hint = (f"set up key-based login (ssh-copy-id {target.destination}) or name the key with "
                "--remote-ssh-option IdentityFile=PATH")
    elif "host key verification failed" in low or "host key for" in low:
        hint = (f"connect once with `ssh {target.destination}` to accept its host key, or pass "
                "--remote-ssh-option StrictHostKeyChecking=accept-new")
    elif "could not resolve" in low:
        hint = "check the host name (or add it to ~/.ssh/config)"
    else:
        hint = "check the host, the port (user@host:port) and that sshd runs there"
    return f"cannot reach {target} over SSH: {msg}: {hint}"


def worker_failure(target: SshTarget, python: str, rc: int | None, stderr: list[str], first_line: str) -> str:
    """One line for a far side that could not start edgeprune's worker."""
    text = "\n".join(stderr)
    if re.search(r"No module named '?edgeprune'?(?![.\w])", text):
        return (f"edgeprune is not installed for {python} on {target}: install it there (pip install -e . in a "
                "checkout of edgeprune, or pip install edgeprune) or pass --remote-python with the Python that "
                "has it")
    if "No module named" in text and "edgeprune" in text:
        return (f"the edgeprune on {target} has no remote worker (older than {__version__}): install this "
                "version there")
    if rc == 127 or re.search(r"(not found|No such file or directory)\s*$", text):
        return (f"{python} was not found on {target}: pass --remote-python with the path of a Python 3.11+ "
                "that has edgeprune installed")
    if rc == 255:
        return ssh_failure(target, text, rc)
    why = _useful_tail(stderr) or (first_line.strip()[:200] if first_line else f"exit {rc}")
    return (f"edgeprune's worker did not start on {target} ({why}): check that `{python} -m {WORKER_MODULE} "
            "--help` runs there")


def remote_path_arg(path: str) -> str:
    """A path for the far shell, quoted, with a leading ~/ still meaning the far home directory."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _readline(stream, timeout: float | None) -> str:
    if timeout is None:
        return stream.readline()
    result: list[str] = []
    t = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else ""


def _useful_tail(lines: Sequence[str]) -> str:
    """The last line that says something (ssh's banner warnings and Python's traceback frames say little)."""
    for line in reversed([ln.strip() for ln in lines if ln.strip()]):
        if line.startswith(("Warning: Permanently added", "File \"", "Traceback")) or line.startswith("^"):
            continue
        return line[:300]
    return ""


def _shutdown(proc: subprocess.Popen | None, control: Path, base_argv: list[str]) -> None:
    if proc is not None:
        try:
            proc.stdin.close()
        except Exception:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    if (control / "master").exists():
        subprocess.run([*base_argv, "-O", "exit", "edgeprune-master"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    shutil.rmtree(control, ignore_errors=True)


__all__ = ["RemoteRunner", "SshSession", "SshTarget", "parse_target", "check_ssh_options", "external_data_files"]
