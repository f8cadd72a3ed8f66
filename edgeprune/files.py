"""Artifacts are written into a staging directory beside --out and moved into place in one rename, so an
interrupted or failed run never leaves a directory that looks complete."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError

MANIFEST = "manifest.json"


class StagedOutput:
    """A staging directory that becomes `target` only on `commit()`; removed on `discard()`."""

    def __init__(self, target: Path, overwrite: bool = True):
        self.target = Path(target).resolve()
        if self.target.exists() and not self.target.is_dir():
            raise ConfigError(f"output path {self.target} is a file: choose a directory with --out")
        if self.target.exists() and not overwrite and any(self.target.iterdir()):
            raise ConfigError(f"output directory {self.target} is not empty: remove it or allow overwriting")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=self.target.parent))
            self.path.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the artifacts are not secrets
        except OSError as exc:
            raise ConfigError(f"output directory {self.target} is not writable ({exc.strerror}): "
                              "choose another --out") from None

    def commit(self, manifest_extra: dict[str, Any]) -> Path:
        write_json(self.path / MANIFEST, {**manifest_extra, "files": file_hashes(self.path, exclude={MANIFEST})})
        old = None
        if self.target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-", dir=self.target.parent))
            os.replace(self.target, old / "previous")
        os.replace(self.path, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def file_hashes(root: Path, exclude: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if p.is_file() and rel not in exclude:
            out[rel] = {"sha256": sha256_file(p), "bytes": p.stat().st_size}
    return out


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file in the same directory, then rename)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=json_default)
        fh.write("\n")
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def verify_manifest(directory: Path) -> list[str]:
    """Files whose bytes no longer match manifest.json (missing ones included); empty when intact."""
    manifest = json.loads((Path(directory) / MANIFEST).read_text())
    bad = []
    for rel, info in manifest["files"].items():
        p = Path(directory) / rel
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")
