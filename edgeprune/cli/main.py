"""The `edgeprune` command group: the library's errors and bad options become one line and an exit code."""
from __future__ import annotations

import errno
import json
import logging
import signal
import sys
import threading
from typing import Any

import click

from .. import __version__
from ..errors import EdgepruneError, Terminated

log = logging.getLogger("edgeprune")


class _Group(click.Group):
    """Turns the library's errors into one line and an exit code; a traceback only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        previous = _on_sigterm_unwind()
        try:
            return super().invoke(ctx)
        except EdgepruneError as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"edgeprune: error: {exc.message}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # a bad option of a command: one line too, with where to read more
            if ctx.obj and ctx.obj.get("debug"):
                raise
            where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            click.echo(f"edgeprune: error: {exc.format_message()}{where}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            how, code = ("terminated (SIGTERM)", 143) if isinstance(exc, Terminated) else ("interrupted", 130)
            click.echo(f"edgeprune: {how}; nothing was written to the output directory (a build continues "
                       "from its last finished attempt with --resume)", err=True)
            ctx.exit(code)
        except OSError as exc:  # a full disk anywhere (an artifact, the cache, a scratch file) is one line too
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or (ctx.obj and ctx.obj.get("debug")):
                raise
            where = f" writing {exc.filename}" if exc.filename else ""
            click.echo(f"edgeprune: error: no space left on the device{where}: free some space and run again",
                       err=True)
            ctx.exit(2)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _on_sigterm_unwind():
    """SIGTERM (CI cancelling a job, `kill`, a container stopping) unwinds like Ctrl-C, so the staging and scratch
    directories are removed by the same `finally` blocks; a second SIGTERM during that cleanup is ignored.
    Returns the previous handler (None off the main thread, where Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def unwind(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    return signal.signal(signal.SIGTERM, unwind)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Prune a vision model until its latency, measured on the target runtime, meets a budget."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def remote_options(f):
    """--remote and how to reach it, shared by build and profile."""
    f = click.option("--remote-ssh-option", "remote_ssh_options", multiple=True,
                     help="An ssh -o option for the connection, e.g. IdentityFile=~/.ssh/jetson or "
                          "StrictHostKeyChecking=accept-new (repeatable; ~/.ssh/config applies too).")(f)
    f = click.option("--remote-python", help="The far side's Python, with edgeprune installed.  [default: python3]")(f)
    return click.option("--remote", help="Measure on USER@HOST[:PORT] over SSH (key-based login; edgeprune "
                                         "installed there).")(f)


def print_json(obj: Any) -> None:
    from ..files import json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")


