"""Writing files safely: the one atomic write of the package, the staged output directory, and containment.

Artifacts are written into a staging directory beside --out and moved into place in one rename, so an
interrupted or failed run never leaves a directory that looks complete. Only a directory edgeprune wrote (its
manifest.json says so and lists everything in it) is ever replaced; commits to one --out from several processes
are serialised by a lock; the staging directories of builds that died (SIGKILL, power loss) carry their pid in
their name and are swept by the next build.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import ConfigError, OutOfSpace, UnsafeArtifact

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WORK_PREFIX = "edgeprune-work-"
# A directory that holds one of these is somebody's project: never replaced, even with --force.
_PROJECT_MARKERS = (".git", ".hg", ".svn")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class StagedOutput:
    """A staging directory that becomes `target` only on `commit()`; removed on `discard()`.

    `target` may be absent, empty, or a directory edgeprune wrote; anything else is refused unless `force`
    (and a project directory, the working directory, the home directory or a filesystem root always)."""

    def __init__(self, target: Path, overwrite: bool = True, force: bool = False):
        self.target = Path(target).resolve()
        self.force = force
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"output directory {self.target} is not writable ({exc.strerror}): "
                              "choose another --out") from None
        # Under the lock: another process's commit may be between its two renames (target briefly absent).
        with _locked(self.target.parent):
            sweep_dead_staging(self.target)
            if self.target.is_dir() and not overwrite and any(self.target.iterdir()):
                raise ConfigError(f"output directory {self.target} is not empty: remove it or allow overwriting")
            check_replaceable(self.target, force)  # fails before any work starts
        try:
            self.path = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-{os.getpid()}-",
                                              dir=self.target.parent))
            self.path.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the artifacts are not secrets
        except OSError as exc:
            raise ConfigError(f"output directory {self.target} is not writable ({exc.strerror}): "
                              "choose another --out") from None

    def commit(self, manifest_extra: dict[str, Any]) -> Path:
        write_json(self.path / MANIFEST, {**manifest_extra, "files": file_hashes(self.path, exclude={MANIFEST})})
        old = None
        # Two renames are not one: without the lock a second committer could move the target away between them
        # (FileNotFoundError) or put one back (ENOTEMPTY). A dead committer's half-done swap is repaired by the
        # sweep, which runs under the same lock.
        with _locked(self.target.parent):
            sweep_dead_staging(self.target)
            check_replaceable(self.target, self.force)  # it may have changed while the build ran
            try:
                if self.target.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.old-{os.getpid()}-",
                                                dir=self.target.parent))
                    os.replace(self.target, old / "previous")
                os.replace(self.path, self.target)
            except BaseException:  # Ctrl-C / SIGTERM / a failed rename between the two: the previous output back
                if old is not None and not self.target.exists() and (old / "previous").is_dir():
                    os.replace(old / "previous", self.target)
                    shutil.rmtree(old, ignore_errors=True)
                raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.target

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def check_replaceable(target: Path, force: bool = False) -> None:
    """Raise ConfigError unless `target` is absent, empty, or an output directory edgeprune wrote."""
    target = Path(target).resolve()
    if not target.exists():
        return
    if not target.is_dir():
        raise ConfigError(f"output path {target} is a file: choose a directory with --out")
    entries = sorted(p.name for p in target.iterdir())
    if not entries:
        return
    home, cwd = Path.home().resolve(), Path.cwd().resolve()
    protected = ("the working directory" if target == cwd else "a parent of the working directory"
                 if target in cwd.parents else "the home directory" if target == home
                 else "a filesystem root" if target.parent == target
                 else "a project directory (it holds " + next(m for m in _PROJECT_MARKERS if m in entries) + ")"
                 if any(m in entries for m in _PROJECT_MARKERS) else None)
    if protected:
        raise ConfigError(f"--out {target} is {protected}, which a build would replace whole: "
                          "choose a new directory for --out (--force does not apply here)")
    if force:
        return
    foreign = _not_written_by_edgeprune(target, entries)
    if foreign:
        shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
        raise ConfigError(f"output directory {target} holds files edgeprune did not write ({shown}): choose "
                          "another --out, or pass --force to replace the directory and everything in it")


def _not_written_by_edgeprune(target: Path, entries: list[str]) -> list[str]:
    """The entries of `target` that its manifest does not account for (all of them without an edgeprune one)."""
    try:
        manifest = json.loads((target / MANIFEST).read_text(encoding="utf-8"))
        tool = manifest.get("tool") or {}
        listed = manifest["files"]
        if tool.get("name") != "edgeprune" or not isinstance(listed, dict):
            raise ValueError
    except (OSError, ValueError, AttributeError, KeyError, TypeError, RecursionError):
        return entries
    tops = {str(name).split("/", 1)[0] for name in listed} | {MANIFEST}
    return [e for e in entries if e not in tops]


# -- staging directories of dead builds -------------------------------------------------------------------------

def work_dir(prefix: str = WORK_PREFIX) -> Path:
    """A fresh scratch directory in the temp folder, named with this pid; those of dead builds are swept first."""
    root = Path(tempfile.gettempdir())
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+)-")
    for p in _dead(root, pattern):
        shutil.rmtree(p, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=root))


@contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A work_dir() (named with this pid, private, those of dead processes swept first) removed on exit. For
    every scratch folder edgeprune makes (quantization, trtexec, check, the ssh control socket): a build killed
    with SIGKILL leaves one behind, and the next run with the same prefix removes it."""
    path = work_dir(prefix)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep_dead_staging(target: Path) -> list[Path]:
    """Remove the `.NAME.partial-PID-*` / `.NAME.old-PID-*` directories of builds no longer running; a dead
    commit that had moved the previous output aside without putting the new one in its place gets it back.
    Call under `_locked(target.parent)`."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:partial|old)-(\d+)-")
    swept = []
    for p in _dead(target.parent, pattern):
        previous = p / "previous"
        if ".old-" in p.name and not target.exists() and previous.is_dir():
            os.replace(previous, target)
        shutil.rmtree(p, ignore_errors=True)
        swept.append(p)
    return swept


def _dead(root: Path, pattern: re.Pattern) -> list[Path]:
    out = []
    try:
        candidates = list(root.iterdir())
    except OSError:
        return out
    for p in candidates:
        m = pattern.match(p.name)
        try:
            mine = p.is_dir() and not p.is_symlink() and p.stat().st_uid == os.getuid()
        except OSError:
            continue
        if m and mine and not _alive(int(m.group(1))):
            out.append(p)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # somebody else's process: alive
        return True
    except OverflowError:
        return False
    try:  # a killed process its parent has not reaped yet still answers signal 0
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on `directory` itself: no lock file to leave behind, released if the process dies."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        raise ConfigError(f"cannot open {directory} ({exc.strerror}): choose an --out in a folder you can "
                          "read and write") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks (some NFS mounts): one build at a time still works
            log.debug("cannot lock %s (%s): committing without the lock", directory, exc.strerror)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# -- atomic writes ----------------------------------------------------------------------------------------------

@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` for the caller (or a library, or a subprocess) to write; renamed onto
    `path` when the block ends without error, removed when it fails. Readers see the old file or the new one,
    never a part. A full disk is an OutOfSpace error naming the file."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        _raise_no_space(exc, path)
        raise
    try:
        yield Path(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the bytes reach the disk before the name points at them
        finally:
            os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; what edgeprune writes is not secret
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            _raise_no_space(exc, path)
        raise


def atomic_write_bytes(path: Path, data: bytes | bytearray | memoryview) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def _raise_no_space(exc: OSError, path: Path) -> None:
    if exc.errno in _NO_SPACE:
        raise OutOfSpace(f"no space left on the device writing {path}: free some space (or choose another "
                         "--out) and run again") from None


# -- reading back -----------------------------------------------------------------------------------------------

def inside(directory: str | Path, name: str) -> Path:
    """directory/name, refused (UnsafeArtifact) when it resolves outside the directory, symlinks included."""
    root = Path(directory).resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise UnsafeArtifact(f"{Path(directory) / name} resolves outside the artifact directory {root} "
                             f"(to {path}): refusing to read it")
    return path


def verify_manifest(directory: Path) -> list[str]:
    """Files whose bytes no longer match manifest.json (missing ones included); empty when intact. A name that
    leads outside `directory` is refused (UnsafeArtifact) before anything is read."""
    manifest = json.loads(inside(directory, MANIFEST).read_text())
    bad = []
    for rel, info in manifest["files"].items():
        p = inside(directory, rel)
        if not p.is_file() or sha256_file(p) != info["sha256"]:
            bad.append(rel)
    return bad


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
