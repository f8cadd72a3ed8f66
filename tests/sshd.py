"""A throw-away OpenSSH server on 127.0.0.1 for the --remote tests: keys, config and pid file in a temp
directory, key-only login as the current user, torn down by the fixture that started it."""
from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


@dataclass
class Sshd:
    port: int
    user: str
    client_key: Path
    proc: subprocess.Popen
    log: Path

    @property
    def target(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    @property
    def ssh_options(self) -> tuple[str, ...]:
        return (f"IdentityFile={self.client_key}", "IdentitiesOnly=yes", "StrictHostKeyChecking=no",
                "UserKnownHostsFile=/dev/null", "LogLevel=ERROR")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A server for the module's tests, or a skip that says why there is none."""
    why = why_no_sshd()
    if why:
        pytest.skip(f"no OpenSSH server to test --remote against: {why}")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    stop_sshd(server)


def why_no_sshd() -> str | None:
    if not SSHD.is_file():
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if not shutil.which("ssh-keygen") or not shutil.which("ssh") or not shutil.which("scp"):
        return "the OpenSSH client tools (ssh, scp, ssh-keygen) are not installed"
    if not PRIVSEP_DIR.is_dir():
        try:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True)
        except OSError as exc:
            return f"sshd needs its privilege separation directory {PRIVSEP_DIR}, which cannot be made ({exc})"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_sshd(directory: Path) -> Sshd:
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)], check=True)
    shutil.copyfile(directory / "client_key.pub", directory / "authorized_keys")
    port = free_port()
    config = directory / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {directory / 'host_key'}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", f"PidFile {directory / 'sshd.pid'}",
        "UsePAM no", "StrictModes no", "Subsystem sftp internal-sftp", "MaxSessions 50", "MaxStartups 50", ""]))
    log = directory / "sshd.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stdout=fh, stderr=fh,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited at start: {log.read_text().strip()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.terminate()
        raise RuntimeError(f"sshd did not listen on port {port} in 15 s: {log.read_text().strip()[-500:]}")
    return Sshd(port, getpass.getuser(), directory / "client_key", proc, log)


def stop_sshd(sshd: Sshd) -> None:
    sshd.proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        sshd.proc.wait(timeout=10)
    if sshd.proc.poll() is None:  # did not stop on SIGTERM in 10 s
        sshd.proc.kill()
        sshd.proc.wait()


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
