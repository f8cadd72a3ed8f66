"""Scale out (issue 16 item 5): fine-tuning under torchrun with DistributedDataParallel on gloo, for real, in
two CPU processes; rank 0 builds, the other ranks follow; ranks disagreeing on the config are refused."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeprune.config import BuildConfig
from edgeprune.training import distributed

HERE = Path(__file__).parent


def torchrun(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                                "MASTER_PORT")}
    # PYTHONFAULTHANDLER: a rank that aborts (SIGABRT) prints every thread's Python stack, kept by failure() below
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], env={**clean, "PYTHONFAULTHANDLER": "1", **(env or {})}, capture_output=True,
                          text=True, timeout=timeout,
                          cwd=HERE.parent)


def failure(done: subprocess.CompletedProcess) -> str:
    """What a failed torchrun printed: the ranks' own output first (a faulthandler dump, a traceback), then the
    launcher's summary, which alone says only which rank died of which signal."""
    err = done.stderr
    return err if len(err) <= 6000 else err[:4000] + "\n[...]\n" + err[-2000:]


def ranks(out: Path) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_two_gloo_ranks_fine_tune_one_model(tmp_path):
    done = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path))
    assert done.returncode == 0, failure(done)
    lead, follower = ranks(tmp_path)
    assert lead["world"] == follower["world"] == 2
    assert len(follower["digests"]) == 1  # it took part in the one fine-tuning step rank 0 ran
    assert follower["digests"] == lead["digests"]  # DDP kept the replicas' parameters equal
    assert lead["after"] > lead["before"] + 30  # and the model learned (digits, val split)


def test_ranks_that_disagree_on_the_config_are_refused(tmp_path):
    done = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), env={"DISAGREE": "1"})
    assert done.returncode == 0, failure(done)
    for seen in ranks(tmp_path):
        assert "disagree on the build options" in seen["error"] and "\n" not in seen["error"]
        assert "digests" not in seen


def test_a_follower_that_fails_ends_the_job_instead_of_hanging_it(tmp_path):
    """Rank 1 raises inside its fine-tuning step: it leaves without waiting at the teardown barrier, so rank 0's
    collective fails on the closed connection and the job ends non-zero (within the timeout: a hang fails here)."""
    done = torchrun(str(HERE / "ddp_worker.py"), str(tmp_path), env={"FOLLOWER_FAILS": "1"}, timeout=120)
    assert done.returncode != 0
    follower = json.loads((tmp_path / "rank1.json").read_text())
    assert follower["error"] == "rank 1's data went away"
    assert "RuntimeError" in done.stderr


def test_one_process_is_not_distributed(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed.session(BuildConfig()) as group:
        assert group is None and distributed.current() is None


def test_a_users_loop_is_not_run_under_torchrun(monkeypatch):
    from edgeprune.errors import ConfigError

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="without torchrun"):
        with distributed.session(BuildConfig(), user_loop=True):
            pass


@pytest.mark.slow
def test_torchrun_build_writes_once_from_rank_0(tmp_path):
    out = tmp_path / "out"
    done = torchrun("-m", "edgeprune", "build", "--model", "resnet20", "--input-shape", "1,16,16",
                    "--train-epochs", "1", "--finetune-epochs", "1", "--max-iterations", "1", "--measure-blocks", "2",
                    "--measure-iters", "20", "--max-accuracy-drop", "50", "--train-device", "cpu", "--out", str(out),
                    "--quiet", env={"EDGEPRUNE_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, failure(done)
    report = json.loads((out / "report.json").read_text())
    assert report["model"]["training"]["recovery"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert report["iterations"][1]["recovery"]["finetune_epochs"] == 1
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["cache", "out"]
