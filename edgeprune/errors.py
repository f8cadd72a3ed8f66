"""Errors a user can act on: each carries a one-line message that says what to do, and an exit code."""
from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, at most 200 characters (its type's name when it has none): how
    a library's failure is quoted inside a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


class EdgepruneError(Exception):
    """A failure caused by input or environment, reported as one line and a non-zero exit code."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(EdgepruneError):
    """Bad option, unknown model/device/data, malformed budget."""


class ModelLoadError(EdgepruneError):
    """A model source that cannot be loaded or traced."""


class RuntimeUnavailable(EdgepruneError):
    """The runtime a stage needs (TensorRT, CUDA, trtexec, ...) is absent on this host."""


class ParityError(EdgepruneError):
    """The exported artifact does not compute what the PyTorch model computes."""


class BudgetNotMet(EdgepruneError):
    """The loop ended without meeting the budget; the best attempt is kept and marked."""

    exit_code = 3


class OutOfSpace(EdgepruneError):
    """The disk filled up while writing: what was being written is removed, never left looking complete."""


class UnsafeArtifact(EdgepruneError):
    """A manifest or a path that points outside its artifact directory, or a manifest that cannot be read."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the build is so that it unwinds as on Ctrl-C (staging removed, one line)."""
