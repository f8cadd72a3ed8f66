"""manifest.json read safely: every name it lists must stay inside the artifact directory.

A manifest is input like any other: a name such as `/etc/passwd`, `../../x` or a symlink leading out of the
directory must not make `edgeprune report` or `edgeprune check` read (and hash) a file elsewhere. Names are resolved
with symlinks followed and refused when they land outside; only then are the bytes compared (files.verify_manifest).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UnsafeArtifact
from ..files import MANIFEST, inside, verify_manifest

__all__ = ["UnsafeArtifact", "inside", "modified_files", "read_manifest"]


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
