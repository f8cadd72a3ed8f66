"""manifest.json read safely: every name it lists must stay inside the artifact directory.

A manifest is input like any other: a name such as `/etc/passwd`, `../../x` or a symlink leading out of the
directory must not make `edgeprune report` or `edgeprune check` read (and hash) a file elsewhere. Names are resolved
with symlinks followed and refused when they land outside; only then are the bytes compared (files.verify_manifest).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import EdgepruneError
from ..files import MANIFEST, verify_manifest


class UnsafeArtifact(EdgepruneError):
    """A manifest or a path that points outside its artifact directory, or a manifest that cannot be read."""

    exit_code = 2


def inside(directory: str | Path, name: str) -> Path:
    """directory/name, refused (UnsafeArtifact) when it resolves outside the directory, symlinks included."""
    root = Path(directory).resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise UnsafeArtifact(f"{Path(directory) / name} resolves outside the artifact directory {root} "
                             f"(to {path}): refusing to read it")
    return path


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of `directory` with every listed name checked to stay inside; None when there is none."""
    directory = Path(directory)
    if not (directory / MANIFEST).is_file():
        return None
    path = inside(directory, MANIFEST)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UnsafeArtifact(f"{directory / MANIFEST} cannot be read ({type(exc).__name__}: {exc}): fix or "
                             "remove it") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                              for v in files.values()):
        raise UnsafeArtifact(f"{directory / MANIFEST} is malformed: it needs files: {{name: {{sha256: ...}}}}")
    for name in files:
        inside(directory, name)
    return manifest


def modified_files(directory: str | Path) -> list[str] | None:
    """Files whose bytes differ from manifest.json (missing ones included); None when there is no manifest."""
    if read_manifest(directory) is None:
        return None
    return verify_manifest(Path(directory))
