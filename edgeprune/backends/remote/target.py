"""What a user may say about the far side, checked before anything runs: the target (`user@host:port`), the ssh
options (an allow-list: a config file from a pull request must not be able to run a local command through
ProxyCommand, LocalCommand, KnownHostsCommand, Match exec and the like), and far paths quoted for the far shell.
All pure functions."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Sequence

from ...errors import ConfigError

# The ssh_config options a measurement session has a use for: who and where to connect, which key and host keys to
# trust, and how long to wait. None of them runs a command, forwards anything or changes what runs on either side.
ALLOWED_SSH_OPTIONS = (
    "IdentityFile", "Port", "User", "StrictHostKeyChecking", "UserKnownHostsFile", "ConnectTimeout",
    "ServerAliveInterval", "ServerAliveCountMax", "IdentitiesOnly", "HostName", "HostKeyAlias", "ProxyJump",
    "LogLevel", "CertificateFile", "IdentityAgent", "PreferredAuthentications", "PubkeyAuthentication",
    "PubkeyAcceptedAlgorithms", "PubkeyAcceptedKeyTypes", "HostKeyAlgorithms", "GlobalKnownHostsFile",
    "CheckHostIP", "VerifyHostKeyDNS", "UpdateHostKeys", "HashKnownHosts", "ConnectionAttempts", "TCPKeepAlive",
    "Compression", "Ciphers", "MACs", "KexAlgorithms", "RekeyLimit", "IPQoS", "AddressFamily", "BindAddress",
    "BindInterface",
)
# The options edgeprune itself must set for the session to work; a user value would break it.
RESERVED_SSH_OPTIONS = ("BatchMode", "ControlMaster", "ControlPath", "ControlPersist")
_ALLOWED = {name.lower(): name for name in ALLOWED_SSH_OPTIONS}
_RESERVED = {name.lower() for name in RESERVED_SSH_OPTIONS}
_UNSAFE_TARGET_CHARS = "/'\"`$;&|<>(){}*?!\\"


@dataclass(frozen=True)
class SshTarget:
    user: str | None
    host: str
    port: int | None = None

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

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
    bad = (not host or any(c.isspace() or c in _UNSAFE_TARGET_CHARS for c in spec) or host.startswith("-")
           or user.startswith("-") or (port is not None and not (port.isdigit() and 0 < int(port) < 65536)))
    if bad:
        raise ConfigError(f"remote target {raw!r} is malformed: write user@host, user@host:port or a host name "
                          "from ~/.ssh/config")
    return SshTarget(user or None, host, int(port) if port is not None else None)


def check_ssh_options(options: Sequence[str]) -> tuple[str, ...]:
    """ssh -o options as `Key=Value` or `Key Value` (IdentityFile=~/.ssh/jetson, StrictHostKeyChecking=accept-new,
    ...): only the allow-listed keys (any case), each with a one-line value; returned as given."""
    return tuple(_check_ssh_option(str(opt).strip()) for opt in options)


def _check_ssh_option(opt: str) -> str:
    key, value = (re.split(r"\s*=\s*|\s+", opt, maxsplit=1) + [""])[:2]
    if not value or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key):
        raise ConfigError(f"ssh option {opt!r} is malformed: write Key=Value as in ssh_config, e.g. "
                          "IdentityFile=~/.ssh/id_jetson")
    if key.lower() in _RESERVED:
        raise ConfigError(f"ssh option {key} is set by edgeprune itself (it needs it to run unattended over "
                          "one shared connection): leave it out")
    if key.lower() not in _ALLOWED:
        raise ConfigError(f"ssh option {key} is not allowed (an option from a config file must not run commands "
                          f"or forward anything): use one of {', '.join(ALLOWED_SSH_OPTIONS)}, or set it for the "
                          "host in your own ~/.ssh/config")
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise ConfigError(f"ssh option {key} has a control character in its value: write it on one line")
    if key.lower() == "proxyjump" and value.lower() != "none":
        for hop in value.split(","):
            parse_target(hop)  # a hop is user@host:port, never an option or a command
    return opt


def remote_path_arg(path: str) -> str:
    """A path for the far shell, quoted, with a leading ~/ still meaning the far home directory."""
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


__all__ = ["ALLOWED_SSH_OPTIONS", "RESERVED_SSH_OPTIONS", "SshTarget", "check_ssh_options", "parse_target",
           "remote_path_arg"]
