"""Resumable builds: every finished attempt is checkpointed beside `--out` (`.NAME.resume/`), and `--resume`
continues an interrupted build from the last finished attempt.

How: the loop runs again from the top, and each attempt the checkpoint already holds (same index, ratio and
precision) is restored instead of run: its report record, its pruned weights and its ONNX files. The policies are
deterministic functions of what was measured, so replaying the restored records leads them to the same next step,
and the build goes on from there as if it had never stopped. The unpruned baseline's measurement (and the latency
probes of `--allocation latency`) are reused only when the device and runtime are the ones that measured them;
otherwise nothing measured is reused and the build runs again from its start (the attempts' ratios were timed
against the old baseline).

The checkpoint is edgeprune's own files: JSON, ONNX and weights-only tensors (torch.load(weights_only=True)), never
a pickle. It is removed when the build finishes; a build without `--resume` starts a new one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import ConfigError
from ..files import atomic_path, write_json

if TYPE_CHECKING:
    from .attempt import BuildState

log = logging.getLogger(__name__)

FORMAT = 1
# Options that change where or how a build is shown, not what it computes: a resume may change them.
NOT_THE_BUILD = ("out", "resume", "force", "overwrite", "extra")


def checkpoint_dir(out: Path) -> Path:
    out = Path(out).resolve()
    return out.parent / f".{out.name}.resume"


def config_hash(config) -> tuple[str, dict[str, Any]]:
    d = {k: v for k, v in config.to_dict().items() if k not in NOT_THE_BUILD}
    text = json.dumps(d, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest(), d


def identity(prof) -> dict[str, Any]:
    """What must match for a stored measurement to stand: the device, the runner and the machine it ran on."""
    described = prof.runner.describe()
    return {"device": prof.device.name, "runner": prof.runner.name,
            "runtime": {k: described.get(k) for k in sorted(described) if k in
                        ("onnxruntime", "tensorrt", "providers", "threads", "torch", "remote")},
            "host": {"hostname": prof.host.hostname, "cpu_model": prof.host.cpu_model}}


class Checkpoint:
    """The checkpoint of one build, written after every finished attempt."""

    def __init__(self, directory: Path, config, restored: dict[str, Any] | None = None):
        self.dir = directory
        self.hash, self.config = config_hash(config)
        self.identity: dict[str, Any] | None = None
        self.saved: dict[str, Any] = restored or {}
        self.same_machine = False
        self.attempts: list[dict[str, Any]] = list(self.saved.get("attempts") or [])

    def bind(self, prof) -> "Checkpoint":
        """Once the target is profiled: whether what the checkpoint measured was measured here."""
        self.identity = identity(prof)
        self.same_machine = bool(self.saved) and self.saved.get("identity") == self.identity
        if self.saved and not self.same_machine:
            log.warning("--resume: measured on another device or runtime before (%s): nothing measured is reused, "
                        "the build runs again from its start", self.saved.get("identity"))
            self.attempts = []
        return self

    # -- opening ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, config) -> "Checkpoint":
        """A new checkpoint, or with `config.resume` the interrupted build's, checked against this config."""
        directory = checkpoint_dir(Path(config.out))
        if not getattr(config, "resume", False):
            if directory.exists():
                log.info("a previous interrupted build's checkpoint in %s is replaced (pass --resume to "
                         "continue it)", directory)
                shutil.rmtree(directory)
            return cls(directory, config)
        state = directory / "state.json"
        if not state.is_file():
            raise ConfigError(f"--resume: no checkpoint of an interrupted build for {config.out} ({directory} "
                              "holds none): run the build without --resume")
        try:
            saved = json.loads(state.read_text(encoding="utf-8"))
            if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(
                    saved.get("attempts"), list):
                raise ValueError("not a checkpoint of this edgeprune")
        except (OSError, UnicodeDecodeError, RecursionError, ValueError) as exc:
            raise ConfigError(f"--resume: the checkpoint {state} is corrupt ({type(exc).__name__}: "
                              f"{str(exc)[:120]}): run the build without --resume to start again") from None
        ckpt = cls(directory, config, saved)
        if saved.get("config_hash") != ckpt.hash:
            old = saved.get("config") or {}
            changed = sorted(k for k in set(old) | set(ckpt.config) if old.get(k) != ckpt.config.get(k))
            raise ConfigError(f"--resume: the config changed since the interrupted build ({', '.join(changed)}): "
                              "resume with the same options, or build without --resume")
        return ckpt

    # -- what a resumed build reuses ---------------------------------------------------------------------------

    def baseline(self) -> dict[str, Any] | None:
        return self.saved.get("baseline") if self.same_machine else None

    def allocator(self) -> dict[str, Any] | None:
        return self.saved.get("allocator") if self.same_machine else None

    def restorable(self, index: int, ratio: float, precision: str) -> dict[str, Any] | None:
        """The checkpointed attempt `index` when it is the same (ratio, precision) the loop asks for now."""
        if index - 1 >= len(self.attempts):
            return None
        saved = self.attempts[index - 1]
        if saved["ratio"] != ratio or saved["precision"] != precision:
            log.warning("--resume: attempt %d differs from the checkpoint (ratio %s %s vs %s %s): running the "
                        "rest again", index, ratio, precision, saved["ratio"], saved["precision"])
            del self.attempts[index - 1:]
            return None
        return saved

    def restore_files(self, index: int, work: Path) -> tuple[dict[str, torch.Tensor] | None, dict[str, Path]]:
        """The attempt's weights and ONNX files, copied into the build's work directory."""
        src = self.dir / f"attempt{index:02d}"
        dst = work / f"iter{index:02d}restored"
        try:
            shutil.copytree(src, dst)
            weights = (torch.load(dst / "weights.pt", weights_only=True) if (dst / "weights.pt").is_file()
                       else None)
        except Exception as exc:  # noqa: BLE001 -- a damaged checkpoint of any kind is the same one line
            raise ConfigError(f"--resume: attempt {index} in the checkpoint is damaged ({type(exc).__name__}): "
                              "run the build without --resume") from None
        return weights, {p.name: p for p in dst.glob("*.onnx*")}

    # -- writing -----------------------------------------------------------------------------------------------

    def save(self, state: "BuildState", index: int, ratio: float, record: dict[str, Any], weights: bool) -> None:
        """Checkpoint attempt `index` (0: the baseline) once it is finished."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if index == 0:
            self.saved["baseline"] = record
        else:
            files = self.dir / f"attempt{index:02d}"
            if files.exists():
                shutil.rmtree(files)
            files.mkdir()
            exported = state.exports[index]
            fp32 = exported.export.path.with_name("model.onnx")
            for src in {fp32, exported.export.path}:
                shutil.copyfile(src, files / src.name)
                if src.with_name(src.name + ".data").exists():
                    shutil.copyfile(src.with_name(src.name + ".data"), files / (src.name + ".data"))
            if weights:
                with atomic_path(files / "weights.pt") as tmp:
                    torch.save(state.models[index].state_dict(), tmp)
            self.attempts[index - 1:] = [{"index": index, "ratio": ratio, "precision": record["precision"],
                                          "record": record, "onnx": exported.export.path.name}]
        if state.allocator is not None:
            self.saved["allocator"] = state.allocator.describe()
        write_json(self.dir / "state.json", {
            "format": FORMAT, "config_hash": self.hash, "config": self.config, "identity": self.identity,
            "baseline": self.saved.get("baseline"), "allocator": self.saved.get("allocator"),
            "attempts": self.attempts})

    def finish(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
