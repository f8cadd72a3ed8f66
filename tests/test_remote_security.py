"""--remote from untrusted input (a config file in a pull request, CLI flags from a script): ssh options are an
allow-list, so none can run a local command; and every far path reaches the far shell quoted, so a --remote-dir
with spaces, `$(...)`, backticks or `;` names a directory and runs nothing. Files travel over the ssh connection
itself (no scp, whose legacy protocol expands far paths in the far shell)."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeprune.config import BuildConfig
from edgeprune.errors import ConfigError
from edgeprune.backends.remote.runner import RemoteRunner
from edgeprune.backends.remote.session import SshSession, copy_command, worker_command
from edgeprune.backends.remote.target import ALLOWED_SSH_OPTIONS, check_ssh_options, remote_path_arg

from sshd import free_port, sshd  # noqa: F401  (sshd: the fixture)

HOSTILE_DIR = "far dir; touch {m}1 $(touch {m}2) `touch {m}3` && echo 'it's' \"quoted\" > {m}4"


# -- ssh options: an allow-list ------------------------------------------------------------------------------

def test_proxycommand_in_a_yaml_config_is_refused_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "build.yaml"
    path.write_text(f"remote: nvidia@orin.local\nremote_ssh_options:\n  - IdentityFile=~/.ssh/jetson\n"
                    f"  - ProxyCommand=sh -c 'touch {marker}; nc %h %p'\n")
    with pytest.raises(ConfigError) as err:
        BuildConfig.from_yaml(path)
    msg = err.value.message
    assert msg.startswith("ssh option ProxyCommand is not allowed") and "\n" not in msg
    assert "IdentityFile, Port" in msg and "StrictHostKeyChecking" in msg  # says what is allowed
    assert not marker.exists()


@pytest.mark.parametrize("option", [
    "ProxyCommand=nc %h %p", "proxycommand nc %h %p", "PROXYCOMMAND = nc %h %p", "LocalCommand=touch /tmp/x",
    "PermitLocalCommand=yes", "KnownHostsCommand=/bin/echo", "Match exec \"touch /tmp/x\"", "Include /tmp/evil",
    "RemoteCommand=id", "ForwardAgent=yes", "ForwardX11=yes", "LocalForward 8080 localhost:80",
    "DynamicForward=1080", "SendEnv=LD_PRELOAD", "SetEnv=LD_PRELOAD=/tmp/x.so", "PKCS11Provider=/tmp/x.so",
    "SecurityKeyProvider=/tmp/x.so", "RequestTTY=yes", "EscapeChar=~", "Tunnel=yes", "Host *",
])
def test_options_that_run_forward_or_load_anything_are_refused(option):
    key = option.replace("=", " ").split()[0]
    with pytest.raises(ConfigError, match=f"^ssh option {key} is not allowed .*: use one of IdentityFile"):
        check_ssh_options([option])


def test_allowed_options_in_either_form_and_any_case_pass_unchanged():
    given = ["IdentityFile=~/.ssh/jetson", "port 2222", "StrictHostKeyChecking = accept-new",
             "userknownhostsfile /dev/null", "ConnectTimeout=5", "ServerAliveInterval 10", "User=nvidia",
             "ProxyJump=me@bastion.example:2200", "IdentitiesOnly=yes", "LogLevel=ERROR"]
    assert check_ssh_options(given) == tuple(given)
    assert {"IdentityFile", "Port", "User", "StrictHostKeyChecking", "UserKnownHostsFile",
            "ConnectTimeout", "ServerAliveInterval"} <= set(ALLOWED_SSH_OPTIONS)


@pytest.mark.parametrize("option, match", [
    ("ProxyJump=-oProxyCommand=touch /tmp/x", "remote target .* is malformed"),
    ("ProxyJump=me@host;touch /tmp/x", "remote target .* is malformed"),
    ("User=me\nProxyCommand touch /tmp/x", "control character"),
    ("IdentityFile", "malformed"),
])
def test_allowed_options_with_values_that_smuggle_something_are_refused(option, match):
    with pytest.raises(ConfigError, match=match):
        check_ssh_options([option])


def test_cli_proxycommand_runs_nothing_and_is_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from edgeprune.cli import main

    marker = tmp_path / "pwned"
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["build", "--out", str(out), "--remote", f"me@127.0.0.1:{free_port()}",
                                       "--remote-ssh-option", f"ProxyCommand=touch {marker}", "--quiet"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgeprune: error: ssh option ProxyCommand is not allowed")
    assert not marker.exists() and not out.exists()


# -- far paths: always quoted for the far shell ------------------------------------------------------------------

def _far_shell(command: str, cwd: Path, stdin: bytes = b"") -> subprocess.CompletedProcess:
    """What sshd does with a command: hands it to the far user's shell (`sh -c`); here, this machine's."""
    return subprocess.run(["sh", "-c", command], cwd=cwd, input=stdin, capture_output=True)


def test_a_hostile_far_path_in_a_copy_names_a_file_and_runs_nothing(tmp_path):
    far = tmp_path / HOSTILE_DIR.format(m=tmp_path / "marker")
    far.mkdir(parents=True)
    target = far / "model.onnx"
    assert _far_shell(copy_command(str(target), to_far=True), tmp_path, b"onnx bytes").returncode == 0
    assert target.read_bytes() == b"onnx bytes"
    back = _far_shell(copy_command(str(target), to_far=False), tmp_path)
    assert back.returncode == 0 and back.stdout == b"onnx bytes"
    assert not list(tmp_path.glob("marker*"))
    assert shlex.split(copy_command(str(target), True)) == ["cat", ">", str(target)]


def test_the_worker_command_quotes_python_and_remote_dir():
    hostile = HOSTILE_DIR.format(m="/tmp/m")
    words = shlex.split(worker_command("~/my venv/bin/python", hostile))
    assert words == ["exec", "$HOME/my venv/bin/python", "-m", "edgeprune.backends.remote.worker", "--dir",
                     hostile]
    assert remote_path_arg("~/a;b") == "\"$HOME\"/'a;b'"


def test_every_copy_goes_over_ssh_with_the_far_path_quoted(tmp_path, monkeypatch):
    """The command lines push and pull build, without a server: ssh, never scp, and a quoted far path."""
    from edgeprune.backends.remote import session as session_module

    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        return subprocess.CompletedProcess(argv, 0, b"", b"")

    monkeypatch.setattr(session_module.subprocess, "run", fake_run)
    s = SshSession("me@jetson:2222", ssh_options=["IdentityFile=~/.ssh/j"])
    local = tmp_path / "model.onnx"
    local.write_bytes(b"x")
    hostile = HOSTILE_DIR.format(m="/tmp/m")
    s.push([local], hostile)
    with pytest.raises(Exception):  # the fake copy brings nothing back, so the sha256 differs
        s.pull(f"{hostile}/model.engine", tmp_path / "model.engine", "0" * 64)
    assert [argv[0] for argv in calls] == ["ssh", "ssh"]
    assert all(argv[-2] == "me@jetson" and argv[argv.index("-p") + 1] == "2222" for argv in calls)
    assert shlex.split(calls[0][-1]) == ["cat", ">", f"{hostile}/model.onnx"]
    assert shlex.split(calls[1][-1]) == ["cat", "<", f"{hostile}/model.engine"]
    assert calls[0][1:3] == ["-o", "IdentityFile=~/.ssh/j"]  # the user's options first: ssh keeps the first
    s.close()


# -- against a real sshd ------------------------------------------------------------------------------------------

def test_a_hostile_remote_dir_over_ssh_is_a_directory_name(sshd, tiny_onnx, tmp_path):
    model, onnx_path = tiny_onnx
    parent = tmp_path / HOSTILE_DIR.format(m=tmp_path / "marker")
    s = SshSession.open(sshd.target, python=sys.executable, remote_dir=str(parent), ssh_options=sshd.ssh_options)
    try:
        assert Path(s.workdir).parent == parent
        runner = RemoteRunner(s, "onnxruntime", {"threads": 1})
        dep = runner.prepare(onnx_path, tmp_path / "here")
        far = Path(dep.meta["remote_path"])
        assert far.parent.parent == Path(s.workdir) and far.read_bytes() == onnx_path.read_bytes()
        out = runner.infer(dep, np.zeros((1, *dep.input_shape[1:]), np.float32))
        assert out.shape[0] == 1
        engine = far.with_name("built.bin")  # a file the far side made, brought back through the same path
        engine.write_bytes(b"built there")
        from edgeprune.files import sha256_file

        back = s.pull(str(engine), tmp_path / "back.bin", sha256_file(engine))
        assert back.read_bytes() == b"built there"
    finally:
        s.close()
    assert not list(tmp_path.glob("marker*"))
    assert parent.is_dir() and not any(parent.iterdir())  # the far side cleaned up its session directory
