"""--remote: measurement over SSH, for real, against an OpenSSH server on 127.0.0.1 that these tests start
(tests/sshd.py), with this checkout's virtual environment as the far side's Python and the onnxruntime runner
there. Skips, with the reason, where sshd is not installed."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeprune.config import BuildConfig
from edgeprune.errors import BudgetNotMet, ConfigError, RuntimeUnavailable
from edgeprune.backends.remote.runner import RemoteRunner
from edgeprune.backends.remote.session import SshSession, ssh_failure, worker_failure
from edgeprune.backends.remote.target import SshTarget, check_ssh_options, parse_target, remote_path_arg

from conftest import TINY_SHAPE
from sshd import free_port, is_running, sshd  # noqa: F401  (sshd: the fixture)

VENV_PYTHON = sys.executable  # the far side runs this checkout's edgeprune


# -- pure pieces -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, user, host, port, shown", [
    ("nvidia@orin.local", "nvidia", "orin.local", None, "nvidia@orin.local"),
    ("nvidia@192.168.55.1:2222", "nvidia", "192.168.55.1", 2222, "nvidia@192.168.55.1:2222"),
    ("jetson", None, "jetson", None, "jetson"),
    ("ssh://root@10.0.0.7:22", "root", "10.0.0.7", 22, "root@10.0.0.7:22"),
    ("me@[fe80::1]:2200", "me", "fe80::1", 2200, "me@[fe80::1]:2200"),
    ("me@fe80::1", "me", "fe80::1", None, "me@fe80::1"),
])
def test_targets(text, user, host, port, shown):
    t = parse_target(text)
    assert (t.user, t.host, t.port) == (user, host, port)
    assert str(t) == shown


@pytest.mark.parametrize("text", ["", "user@", "user@host:0", "user@host:99999", "user@host:ssh", "-oProxy=x",
                                  "user@-host", "user@host;rm", "user@ho st", "me@[fe80::1]x"])
def test_malformed_targets_are_config_errors(text):
    with pytest.raises(ConfigError, match="user@host:port"):
        parse_target(text)


def test_ssh_options_are_key_value_and_cannot_take_over_the_session():
    assert check_ssh_options(["IdentityFile=~/.ssh/jetson", "Port 2222"]) == ("IdentityFile=~/.ssh/jetson",
                                                                               "Port 2222")
    with pytest.raises(ConfigError, match="Key=Value"):
        check_ssh_options(["-i key"])
    with pytest.raises(ConfigError, match="set by edgeprune"):
        check_ssh_options(["ControlPath=/tmp/x"])
    with pytest.raises(ConfigError, match="set by edgeprune"):
        check_ssh_options(["batchmode=no"])


def test_far_paths_keep_the_far_home():
    assert remote_path_arg("~/venv/bin/python") == '"$HOME"/venv/bin/python'
    assert remote_path_arg("/opt/my python/bin/python3") == "'/opt/my python/bin/python3'"


def test_failure_messages_say_what_to_do():
    t = SshTarget("nvidia", "orin", 2222)
    assert "accept-new" in ssh_failure(t, "Host key verification failed.\n", 255)
    assert "IdentityFile" in ssh_failure(t, "nvidia@orin: Permission denied (publickey).\n", 255)
    msg = worker_failure(t, "python3", 1, ["/usr/bin/python3: Error while finding module specification for "
                                           "'edgeprune.backends.remote.worker' (ModuleNotFoundError: "
                                           "No module named 'edgeprune')"], "")
    assert msg.startswith("edgeprune is not installed for python3 on nvidia@orin:2222") and "\n" not in msg
    assert "was not found" in worker_failure(t, "/opt/py", 127, ["sh: 1: exec: /opt/py: not found"], "")


def test_config_takes_remote_settings_from_yaml(tmp_path):
    path = tmp_path / "build.yaml"
    path.write_text("device: jetson-orin-nano\nremote: nvidia@orin.local:2222\nremote-python: ~/venv/bin/python\n"
                    "remote_ssh_options: [IdentityFile=~/.ssh/jetson, StrictHostKeyChecking=accept-new]\n")
    cfg = BuildConfig.from_yaml(path)
    assert cfg.remote == "nvidia@orin.local:2222" and cfg.remote_python == "~/venv/bin/python"
    assert cfg.remote_ssh_options == ("IdentityFile=~/.ssh/jetson", "StrictHostKeyChecking=accept-new")
    assert cfg.to_dict()["remote_ssh_options"] == list(cfg.remote_ssh_options)
    with pytest.raises(ConfigError, match="malformed"):
        BuildConfig(remote="nvidia@orin:notaport")
    with pytest.raises(ConfigError, match="set by edgeprune"):
        BuildConfig(remote="nvidia@orin", remote_ssh_options=("ControlMaster=no",))


# -- against a real sshd -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def session(sshd):
    s = SshSession.open(sshd.target, python=VENV_PYTHON, ssh_options=sshd.ssh_options)
    yield s
    s.close()


@pytest.fixture
def own_session(sshd):
    """A session of the test's own, for tests that break or change it."""
    s = open_session(sshd)
    yield s
    s.close()


def open_session(sshd, **kw) -> SshSession:
    return SshSession.open(sshd.target, **{"python": VENV_PYTHON, "ssh_options": sshd.ssh_options, **kw})


def test_measure_over_ssh_gives_sane_stats_and_the_far_outputs(session, tiny_onnx, tmp_path):
    model, onnx_path = tiny_onnx
    runner = RemoteRunner(session, "onnxruntime", {"threads": 1, "seed": 0})
    dep = runner.prepare(onnx_path, tmp_path)
    assert dep.path == onnx_path and dep.input_shape == (1, *TINY_SHAPE)
    far = Path(dep.meta["remote_path"])
    assert far != onnx_path and far.read_bytes() == onnx_path.read_bytes()  # the far side is this machine
    assert str(far).startswith(session.workdir)

    x = np.random.default_rng(0).standard_normal((5, *TINY_SHAPE)).astype(np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.infer(dep, x), ref, rtol=1e-4, atol=1e-5)

    stats = runner.measure(dep, warmup=3, iters=15, blocks=2)
    assert runner.parity_tolerance() == (1e-3, 1e-3)  # the far runner's
    assert stats.n == 30 and stats.blocks == 2 and 0 < stats.min <= stats.p50 <= stats.p99 < 1000
    assert stats.runtime == "onnxruntime" and stats.extra["measured_on"] == session.target.__str__()
    pair = runner.measure_interleaved([dep, dep], 2, 5, 2)
    assert [s.n for s in pair] == [10, 10]

    memory = runner.memory(dep)
    assert memory["weights_bytes"] > 0 and memory["peak_mb"] > 0
    described = runner.describe()
    assert described["runner"] == "onnxruntime" and described["threads"] == 1
    assert described["remote"]["target"] == str(session.target) and described["remote"]["transport"] == "ssh"
    telemetry = runner.telemetry()
    assert telemetry["available"] is False and "not a Jetson" in telemetry["reason"]
    assert telemetry["where"] == f"remote: {session.target}"


def test_far_errors_come_back_as_the_same_one_line_errors(session, tiny_onnx, tmp_path):
    _, onnx_path = tiny_onnx
    runner = RemoteRunner(session, "onnxruntime", {"threads": 1})
    with pytest.raises(RuntimeUnavailable, match=f"^on {session.target}: runner torch-cuda cannot run here"):
        RemoteRunner(session, "torch-cuda", {})
    dep = runner.prepare(onnx_path, tmp_path)
    with pytest.raises(Exception, match="InvalidArgument|Got invalid dimensions|rank"):
        runner.infer(dep, np.zeros((1, 2, 3), np.float32))
    assert runner.measure(dep, 1, 2, 1).n == 2  # the session survives a failed request


def test_session_ends_cleanly_and_leaves_nothing(sshd, tiny_onnx, tmp_path):
    s = open_session(sshd)
    workdir, control = Path(s.workdir), s._control
    pid = s.hello["pid"]
    assert workdir.is_dir() and is_running(pid)
    s.close()
    assert not workdir.exists() and not control.exists()
    for _ in range(50):
        if not is_running(pid):
            break
        time.sleep(0.1)
    assert not is_running(pid)
    s.close()  # twice is harmless


def test_remote_dir_is_where_the_far_side_works(sshd, tmp_path):
    parent = tmp_path / "far"
    s = open_session(sshd, remote_dir=str(parent))
    try:
        assert Path(s.workdir).parent == parent
    finally:
        s.close()
    assert parent.is_dir() and not any(parent.iterdir())


def test_a_refused_port_is_one_clear_line(sshd):
    port = free_port()
    with pytest.raises(RuntimeUnavailable) as err:
        SshSession.open(f"{sshd.user}@127.0.0.1:{port}", ssh_options=sshd.ssh_options)
    msg = err.value.message
    assert msg.startswith(f"cannot reach {sshd.user}@127.0.0.1:{port} over SSH:") and "refused" in msg
    assert "user@host:port" in msg and "\n" not in msg


def test_a_wrong_key_is_one_clear_line(sshd, tmp_path):
    import subprocess

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    options = (f"IdentityFile={tmp_path / 'other'}", *sshd.ssh_options[1:])
    with pytest.raises(RuntimeUnavailable, match="Permission denied.*ssh-copy-id"):
        SshSession.open(sshd.target, ssh_options=options)


def test_a_far_python_without_edgeprune_is_one_clear_line(sshd):
    import subprocess

    system = "/usr/bin/python3"
    if not os.access(system, os.X_OK) or subprocess.run([system, "-c", "import edgeprune"], cwd="/",
                                                        capture_output=True).returncode == 0:
        pytest.skip(f"{system} is missing or has edgeprune")
    with pytest.raises(RuntimeUnavailable) as err:
        open_session(sshd, python=system)
    assert err.value.message == (f"edgeprune is not installed for {system} on {sshd.target}: install it there "
                                 "(pip install -e . in a checkout of edgeprune, or pip install edgeprune) or pass "
                                 "--remote-python with the Python that has it")


def test_a_far_python_that_does_not_exist_is_one_clear_line(sshd):
    with pytest.raises(RuntimeUnavailable, match=r"^/no/such/python was not found on .*--remote-python"):
        open_session(sshd, python="/no/such/python")


def test_a_copy_that_arrives_truncated_is_refused(own_session, tiny_onnx, tmp_path):
    s = own_session
    _, onnx_path = tiny_onnx
    runner = RemoteRunner(s, "onnxruntime", {})
    push = s.push

    def broken_push(files, remote_dir):  # the connection broke half way through the copy
        push(files, remote_dir)
        far = Path(remote_dir) / Path(files[0]).name
        far.write_bytes(far.read_bytes()[: far.stat().st_size // 2])

    s.push = broken_push
    with pytest.raises(RuntimeUnavailable, match="incomplete .*connection broke during the copy; run again"):
        runner.prepare(onnx_path, tmp_path)


def test_what_the_far_side_built_comes_back_whole(own_session, tiny_onnx, tmp_path):
    s = own_session
    _, onnx_path = tiny_onnx
    runner = RemoteRunner(s, "onnxruntime", {})
    push = s.push
    sidecar = b'{"built_with": "far side"}\n'

    def push_and_build(files, remote_dir):  # stands in for a runner that writes a sidecar beside its artifact
        push(files, remote_dir)
        (Path(remote_dir) / (Path(files[0]).name + ".json")).write_bytes(sidecar)

    s.push = push_and_build
    local = tmp_path / "here"
    runner.prepare(onnx_path, local)
    assert (local / (onnx_path.name + ".json")).read_bytes() == sidecar
    assert not [p for p in local.iterdir() if p.name.endswith(".part")]


def test_the_timing_cache_goes_there_and_comes_back(own_session, tiny_onnx, tmp_path):
    from edgeprune.backends.trt.plan import BuildOptions

    s = own_session
    _, onnx_path = tiny_onnx
    cache = tmp_path / "tensorrt.timing-cache"
    cache.write_bytes(b"timing cache v1")
    request, started = s.request, {}

    def start_without_options(op, **fields):  # onnxruntime stands in for TensorRT, the runner that takes them
        if op == "start":
            started.update(fields["options"].pop("options"))
        return request(op, **fields)

    s.request = start_without_options
    runner = RemoteRunner(s, "onnxruntime", {"options": BuildOptions(timing_cache=str(cache))})
    assert started["timing_cache"] == f"{s.workdir}/timing.cache"  # the far runner is told the far copy
    far = Path(s.workdir) / "timing.cache"
    assert far.read_bytes() == b"timing cache v1"
    far.write_bytes(b"timing cache v2, after a build there")
    runner.prepare(onnx_path, tmp_path / "w")
    assert cache.read_bytes() == b"timing cache v2, after a build there"


def test_a_far_side_that_dies_mid_session_is_one_clear_line(own_session, tiny_onnx, tmp_path):
    s = own_session
    _, onnx_path = tiny_onnx
    runner = RemoteRunner(s, "onnxruntime", {})
    dep = runner.prepare(onnx_path, tmp_path)
    os.kill(s.hello["pid"], signal.SIGKILL)  # the worker this test started, by its pid
    with pytest.raises(RuntimeUnavailable, match=f"^the edgeprune session on {s.target} ended during measure"):
        runner.measure(dep, 1, 2, 1)
    shutil.rmtree(s.workdir)  # a killed worker cannot remove its working directory


def test_telemetry_comes_back_from_a_far_jetson(sshd, tiny_onnx, tmp_path):
    """The far side has (stand-in) tegrastats, nvpmodel and jetson_clocks on its PATH: the far runner is
    monitored, and its telemetry, with the unlocked-clocks warning, comes back."""
    from test_telemetry import ORIN_CLOCKS_UNLOCKED, ORIN_NANO_JP6

    _, onnx_path = tiny_onnx
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (tmp_path / "line.txt").write_text(ORIN_NANO_JP6 + "\n")
    (tmp_path / "clocks.txt").write_text(ORIN_CLOCKS_UNLOCKED)
    tools = {"tegrastats": f'while :; do cat "{tmp_path}/line.txt"; sleep 0.05; done',
             "nvpmodel": 'printf "NV Power Mode: MAXN\\n0\\n"',
             "jetson_clocks": f'cat "{tmp_path}/clocks.txt"',
             "python": f'PATH="{bindir}:$PATH" exec "{VENV_PYTHON}" "$@"'}
    for name, body in tools.items():
        (bindir / name).write_text("#!/bin/sh\n" + body + "\n")
        (bindir / name).chmod(0o755)
    s = open_session(sshd, python=str(bindir / "python"))
    try:
        assert s.hello["telemetry"] is None  # available there
        runner = RemoteRunner(s, "onnxruntime", {"threads": 1}, interval_ms=50)
        dep = runner.prepare(onnx_path, tmp_path / "w")
        runner.measure(dep, 5, 200, 3, min_block_s=0.1)
        t = runner.telemetry()
    finally:
        s.close()
    assert t["available"] is True and t["where"] == f"remote: {sshd.target}" and t["windows"] == 1
    assert t["power_mode"] == {"name": "MAXN", "id": 0} and t["clocks_locked"] is False
    assert "not locked" in t["warning"] and "sudo jetson_clocks" in t["warning"]
    assert t["samples"] >= 1 and t["power_mw"]["VDD_IN"]["mean"] == 7412.0
    assert t["gpu_load_pct"]["max"] == 87.0 and t["ram_used_mb"] == {"peak": 2871.0, "total": 7620.0}


# -- the build loop and the CLI --------------------------------------------------------------------------------

FAST = dict(model="resnet20", input_shape=(1, 16, 16), train_epochs=1, finetune_epochs=0, max_iterations=2,
            measure_blocks=2, measure_iters=20, latency_budget="0.9x")


@pytest.mark.slow
@pytest.mark.usefixtures("edgeprune_cache")
def test_build_measured_remotely_says_so(sshd, tmp_path):
    import edgeprune
    from edgeprune.files import verify_manifest

    out = tmp_path / "out"
    controls = set(Path(tempfile.gettempdir()).glob("ep-ssh-*"))
    try:
        edgeprune.build(BuildConfig(**FAST, out=str(out), remote=sshd.target, remote_python=VENV_PYTHON,
                                    remote_ssh_options=sshd.ssh_options))
    except BudgetNotMet:  # timing on a shared machine; the report is written all the same
        pass
    report = json.loads((out / "report.json").read_text())
    assert report["runner"]["runner"] == "onnxruntime"
    assert report["runner"]["remote"]["target"] == sshd.target and report["runner"]["remote"]["transport"] == "ssh"
    assert report["config"]["remote"] == sshd.target
    assert report["telemetry"]["available"] is False and report["telemetry"]["where"] == f"remote: {sshd.target}"
    for it in report["iterations"]:
        assert it["latency"]["extra"]["measured_on"] == sshd.target and it["latency"]["p50"] > 0
        assert it["accuracy"] is not None  # evaluated through the far runner
    assert f"on {sshd.target} over SSH" in (out / "report.md").read_text()
    assert verify_manifest(out) == []
    assert {p.name for p in out.iterdir()} == {"model.onnx", "model.pt", "report.json", "report.md",
                                               "manifest.json"}
    assert set(Path(tempfile.gettempdir()).glob("ep-ssh-*")) <= controls  # the session was closed


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client here")
def test_cli_build_with_an_unreachable_remote_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from edgeprune.cli import main

    out = tmp_path / "out"
    port = free_port()
    result = CliRunner().invoke(main, ["build", "--out", str(out), "--remote", f"nobody@127.0.0.1:{port}",
                                       "--remote-ssh-option", "StrictHostKeyChecking=no", "--quiet"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgeprune: error: cannot reach nobody@127.0.0.1:{port}")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_cli_profile_over_ssh_reports_the_far_host(sshd):
    from click.testing import CliRunner

    from edgeprune.cli import main

    args = ["profile", "--device", "cpu", "--remote", sshd.target, "--remote-python", VENV_PYTHON, "--json"]
    for opt in sshd.ssh_options:
        args += ["--remote-ssh-option", opt]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["remote"] == sshd.target and out["measurable_here"] is True
    assert out["host"]["onnxruntime"] and out["host"]["python"]


def test_check_tells_a_remote_measurement_from_a_local_one(tmp_path, tiny_onnx):
    from click.testing import CliRunner

    from edgeprune.cli import main
    from synthetic_reports import make_report, write_artifact

    _, onnx_path = tiny_onnx
    remote = make_report()
    remote["runner"]["remote"] = {"target": "nvidia@orin.local:22", "transport": "ssh"}
    new = write_artifact(tmp_path / "new", remote, onnx_path)
    base = write_artifact(tmp_path / "base", make_report(), onnx_path)
    res = CliRunner().invoke(main, ["check", str(new), str(base)])
    assert res.exit_code == 2 and "differ in runtime" in res.stderr and "nvidia@orin.local:22" in res.stderr
    same = write_artifact(tmp_path / "same", remote, onnx_path)
    assert CliRunner().invoke(main, ["check", str(new), str(same)]).exit_code == 0
    res = CliRunner().invoke(main, ["check", str(new), str(same), "--remeasure"])
    assert res.exit_code == 2 and "measured on nvidia@orin.local:22 over SSH" in res.stderr


def test_a_copy_that_fails_is_one_clear_line(session, tiny_onnx):
    _, onnx_path = tiny_onnx
    with pytest.raises(RuntimeUnavailable, match=f"^copying {onnx_path.name} to {session.target} failed "
                                                 r"\(.*(No such file or directory|nonexistent).*\): .*run again$"):
        session.push([onnx_path], "/nonexistent/edgeprune/dir")
