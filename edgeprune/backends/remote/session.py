"""The transport under RemoteRunner: the system's OpenSSH client (so ~/.ssh/config, keys and agents work as for
`ssh` itself), one master connection (ControlMaster) that every later call reuses, BatchMode so nothing ever waits
for a password, and one long-lived worker process on the far side (worker.py) speaking JSON lines.

Files travel over that same connection as `cat` at the far end, never through scp: legacy scp (`scp -O`, and
every scp before OpenSSH 9.0) hands the far path to the far shell unquoted, so a --remote-dir with `$(...)` or `;`
would run there. Every far path here goes through remote_path_arg (shell-quoted), and every copy is checked by
sha256 on arrival, both ways.
"""
from __future__ import annotations

import collections
import json
import logging
import re
import shutil
import subprocess
import threading
import weakref
from pathlib import Path
from typing import Any, Sequence

from ... import __version__
from ...errors import ConfigError, EdgepruneError, ModelLoadError, ParityError, RuntimeUnavailable
from ...files import work_dir
from .target import SshTarget, check_ssh_options, parse_target, remote_path_arg
from .worker import PROTOCOL

log = logging.getLogger(__name__)

WORKER_MODULE = "edgeprune.backends.remote.worker"
_ERRORS = {cls.__name__: cls for cls in (ConfigError, ModelLoadError, ParityError, RuntimeUnavailable,
                                         EdgepruneError)}


class SshSession:
    """A master SSH connection and the edgeprune worker it runs on the far side."""

    def __init__(self, target: str | SshTarget, python: str = "python3", remote_dir: str | None = None,
                 ssh_options: Sequence[str] = (), connect_timeout_s: int = 10):
        self.target = target if isinstance(target, SshTarget) else parse_target(target)
        self.python = python
        self.remote_dir = remote_dir
        self.ssh_options = check_ssh_options(ssh_options)
        self.connect_timeout_s = int(connect_timeout_s)
        self._control = work_dir("ep-ssh-")  # pid-named: a dead build's socket folder is swept by the next
        self._proc: subprocess.Popen | None = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=40)
        self._lock = threading.Lock()
        self.hello: dict[str, Any] = {}
        self.closed = False
        self._finalizer = weakref.finalize(self, _shutdown, None, self._control, self.ssh_argv())

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
        argv = [*self.ssh_argv(), "-M", "-N", "-f", "-o", "ControlPersist=60", self.target.destination]
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
        self._proc = subprocess.Popen(self.far_argv(worker_command(self.python, self.remote_dir)),
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, bufsize=1)
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, _shutdown, self._proc, self._control, self.ssh_argv())
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
        for f in files:
            self._copy(Path(f), f"{remote_dir}/{Path(f).name}", to_far=True,
                       what=f"copying {Path(f).name} to {self.target}")

    def push_file(self, local: Path, remote_file: str) -> None:
        """Copy one file to a far path, and check that it arrived whole."""
        from ...files import sha256_file

        self._copy(Path(local), remote_file, to_far=True, what=f"copying {Path(local).name} to {self.target}")
        info = self.request("stat", paths=[remote_file])[remote_file]
        if not info or info["sha256"] != sha256_file(Path(local)):
            raise RuntimeUnavailable(f"the copy of {Path(local).name} on {self.target} is incomplete (sha256 "
                                     "differs): the connection broke during the copy; run again")

    def pull(self, remote_file: str, local: Path, sha256: str) -> Path:
        """Copy a far file here, in place only once complete and matching `sha256`."""
        from ...files import sha256_file

        from ...files import atomic_path

        local = Path(local)
        with atomic_path(local) as tmp:  # in place only once complete and matching
            self._copy(tmp, remote_file, to_far=False,
                       what=f"bringing {Path(remote_file).name} back from {self.target}")
            if sha256_file(tmp) != sha256:
                raise RuntimeUnavailable(f"the copy of {Path(remote_file).name} from {self.target} is incomplete "
                                         "(sha256 differs): the connection broke during the copy; run again")
        return local

    def _copy(self, local: Path, remote_file: str, to_far: bool, what: str) -> None:
        argv = self.far_argv(copy_command(remote_file, to_far))
        with open(local, "rb" if to_far else "wb") as fh:
            proc = subprocess.run(argv, stdin=fh if to_far else subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL if to_far else fh, stderr=subprocess.PIPE)
        if proc.returncode != 0:  # the far shell's first line says why ("cannot create ...: Directory nonexistent")
            text = proc.stderr.decode(errors="replace")
            first = next((ln.strip() for ln in text.splitlines() if ln.strip()), f"exit {proc.returncode}")
            raise RuntimeUnavailable(f"{what} failed ({first[:300]}): check the connection, the far directory "
                                     "(--remote-dir) and its free space; run again")

    # -- the command lines -----------------------------------------------------------------------------------
    def ssh_argv(self) -> list[str]:
        """ssh with the user's options first (ssh keeps the first value it sees for each), then edgeprune's."""
        argv = ["ssh"]
        for o in self.ssh_options:
            argv += ["-o", o]
        for o in ("BatchMode=yes", f"ConnectTimeout={self.connect_timeout_s}", "ServerAliveInterval=15",
                  "ServerAliveCountMax=4", f"ControlPath={self._control / 'master'}"):
            argv += ["-o", o]
        return argv + (["-p", str(self.target.port)] if self.target.port else [])

    def far_argv(self, command: str) -> list[str]:
        """`command` run by the far shell over the master connection."""
        return [*self.ssh_argv(), "-o", "ControlMaster=no", self.target.destination, command]

    # -- helpers ---------------------------------------------------------------------------------------------
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


def worker_command(python: str, remote_dir: str | None) -> str:
    """The far shell's command that starts edgeprune's worker; every path in it quoted."""
    command = f"exec {remote_path_arg(python)} -m {WORKER_MODULE}"
    return command + (f" --dir {remote_path_arg(remote_dir)}" if remote_dir else "")


def copy_command(remote_file: str, to_far: bool) -> str:
    """The far shell's side of a copy over the ssh connection: write stdin to the file, or print the file."""
    return f"cat {'>' if to_far else '<'} {remote_path_arg(remote_file)}"


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


def _shutdown(proc: subprocess.Popen | None, control: Path, ssh_argv: list[str]) -> None:
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
        subprocess.run([*ssh_argv, "-O", "exit", "edgeprune-master"], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=30)
    shutil.rmtree(control, ignore_errors=True)


__all__ = ["SshSession", "copy_command", "ssh_failure", "worker_command", "worker_failure"]
