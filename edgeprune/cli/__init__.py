"""The command line: a thin click layer over the library, with rich progress on a terminal."""
from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from .. import __version__
from ..errors import EdgepruneError
from ..registry import ALLOCATIONS, CRITERIA, POLICIES, choice

log = logging.getLogger("edgeprune")


class _Group(click.Group):
    """Turns the library's errors into one line and an exit code; a traceback only with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
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
        except KeyboardInterrupt:
            click.echo("edgeprune: interrupted; nothing was written to the output directory", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeprune")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Prune a vision model until its latency, measured on the target runtime, meets a budget."""
    ctx.obj = {"debug": debug}
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _remote_options(f):
    """--remote and how to reach it, shared by build and profile."""
    f = click.option("--remote-ssh-option", "remote_ssh_options", multiple=True,
                     help="An ssh -o option for the connection, e.g. IdentityFile=~/.ssh/jetson or "
                          "StrictHostKeyChecking=accept-new (repeatable; ~/.ssh/config applies too).")(f)
    f = click.option("--remote-python", help="The far side's Python, with edgeprune installed.  [default: python3]")(f)
    return click.option("--remote", help="Measure on USER@HOST[:PORT] over SSH (key-based login; edgeprune "
                                         "installed there).")(f)


@main.command()
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="YAML file of build options; flags override it.")
@click.option("--model", help="resnet20 | resnet56 | torchvision:NAME | pkg.module:factory | file.py:factory | model.pt")
@click.option("--weights", type=click.Path(dir_okay=False), help="State dict or checkpoint for --model.")
@click.option("--input-shape", help="C,H,W of one input, e.g. 3,224,224.")
@click.option("--data", help="digits | imagefolder:PATH  [default: digits]")
@click.option("--device", help="A device from `edgeprune devices`, 'jetson', or a device YAML.  [default: cpu]")
@click.option("--policy", type=choice(POLICIES, "auto"),
              help="What to optimise; auto picks from the budgets given (none: latency-sensitive at 0.5x).  [default: auto]")
@click.option("--max-accuracy-drop", type=float, help="Accuracy tolerance in points against the unpruned artifact (accuracy-critical default 0.5).")
@click.option("--memory-budget-mb", type=float, help="Memory budget of the deployed artifact in MB.")
@click.option("--memory-metric", type=click.Choice(["weights", "peak"]), help="What the memory budget counts: ONNX weights or the runtime's measured peak.  [default: weights]")
@click.option("--latency-budget", help="Fraction of the unpruned latency ('0.5x') or milliseconds ('2.5ms').  [default: 0.5x]")
@click.option("--latency-budget-ms", type=float, help="Latency budget in milliseconds.")
@click.option("--percentile", type=click.Choice(["p50", "p90", "p99", "mean"]), help="Statistic the budget applies to.  [default: p50]")
@click.option("--batch-size", type=int, help="Batch size of the deployed artifact.  [default: 1]")
@click.option("--threads", type=int, help="Runtime threads (CPU).  [default: the device's]")
@click.option("--criterion", type=choice(CRITERIA), help="Filter importance (how a channel is ranked).  [default: l1]")
@click.option("--allocation", type=choice(ALLOCATIONS), help="Per-layer pruning allocation.  [default: uniform]")
@click.option("--channel-multiple", type=int, help="Round kept widths to this multiple.  [default: the device's]")
@click.option("--distill/--no-distill", default=None, help="Distil from the unpruned model while fine-tuning.  [default: no]")
@click.option("--bn-recalibration/--no-bn-recalibration", default=None, help="Recalibrate BatchNorm statistics after pruning.  [default: yes]")
@click.option("--finetune-epochs", type=int, help="Fine-tuning epochs after each prune.  [default: 5]")
@click.option("--train-epochs", type=int, help="Epochs to train a built-in model (cached).  [default: 10]")
@click.option("--max-iterations", type=int, help="Cap on pruning attempts.  [default: 6]")
@click.option("--measure-blocks", type=int, help="Interleaved timing blocks per measurement.  [default: 6]")
@click.option("--measure-iters", type=int, help="Timed runs per block.  [default: 200]")
@click.option("--seed", type=int, help="Seed for data split, training and fine-tuning.  [default: 0]")
@click.option("--out", type=click.Path(file_okay=False), help="Output directory.  [default: out]")
@_remote_options
@click.option("--remote-dir", help="Directory on the far side to work in (a temporary one inside it, removed after).  [default: its temp directory]")
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def build(config_file: str | None, latency_budget_ms: float | None, quiet: bool, as_json: bool, **flags: Any) -> None:
    """Prune, export, measure and loop until the budgets are met; write the artifacts to --out."""
    from ..config import BuildConfig, parse_shape
    from ..errors import BudgetNotMet, ConfigError
    from ..pipeline.loop import build as run_build

    if latency_budget_ms is not None:
        if flags.get("latency_budget"):
            raise ConfigError("give either --latency-budget or --latency-budget-ms, not both")
        flags["latency_budget"] = f"{latency_budget_ms}ms"
    if flags.get("input_shape"):
        flags["input_shape"] = parse_shape(flags["input_shape"])
    given = {k: v for k, v in flags.items() if v is not None and v != ()}
    config = BuildConfig.from_yaml(config_file, **given) if config_file else BuildConfig(**given)
    progress = _progress(quiet or as_json)
    try:
        with progress:
            result = run_build(config, progress=progress)
    except BudgetNotMet as exc:
        if as_json:
            _print_json(exc.result.report)
        raise
    if as_json:
        _print_json(result.report)
    elif not quiet:
        click.echo(summary_line(result.report) + f" -> {result.out}")


@main.command()
def devices() -> None:
    """List the target devices edgeprune knows (edgeprune/targets/devices/*.yaml)."""
    from rich.console import Console
    from rich.table import Table

    from ..targets.devices import list_devices

    console = Console()
    rows = [(spec.name, spec.runner, ",".join(spec.precisions), f"{spec.memory_mb} MB" if spec.memory_mb else "host",
             str(spec.channel_multiple), spec.description) for spec in list_devices().values()]
    header = ("device", "runner", "precisions", "memory", "channel multiple", "description")
    if not console.is_terminal:  # piped: whole names, one device a line, for grep and scripts
        click.echo("\n".join("\t".join(row) for row in [header, *rows]))
        return
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)


@main.command()
@click.option("--device", default="cpu", show_default=True, help="Device to check this host against.")
@_remote_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def profile(device: str, remote: str | None, remote_python: str | None, remote_ssh_options: tuple[str, ...],
            as_json: bool) -> None:
    """Report what this host (or the --remote one) has and whether DEVICE can be measured there."""
    from ..backends import measurable_here
    from ..targets.devices import detect_host, resolve_device

    if remote:
        from ..backends.remote.runner import SshSession

        session = SshSession.open(remote, python=remote_python or "python3", ssh_options=remote_ssh_options)
        try:
            host = session.host
        finally:
            session.close()
    else:
        host = detect_host()
    spec = resolve_device(device, host)
    why = measurable_here(spec, host)
    out = {"device": spec.to_dict(), "host": host.to_dict(), "measurable_here": why is None, "reason": why,
           "remote": remote}
    if as_json:
        _print_json(out)
        return
    h = host
    lines = [f"host: {h.hostname} ({h.machine}), {h.cpu_model}, {h.cpu_cores} cores, {h.memory_mb} MB",
             f"python {h.python}, torch {h.torch}, onnxruntime {h.onnxruntime} ({', '.join(h.ort_providers)})",
             f"CUDA: {h.cuda or 'none'}{' on ' + h.gpu if h.gpu else ''}; TensorRT: {h.tensorrt or 'not installed'}; "
             f"trtexec: {h.trtexec or 'not found'}; Jetson: {h.jetson_model or 'no'}",
             f"device {spec.name}: {spec.description}; runner {spec.runner}, precisions {', '.join(spec.precisions)}, "
             f"channel multiple {spec.channel_multiple}",
             f"measurable {'on ' + remote if remote else 'here'}: {'yes' if why is None else 'no: ' + why}"]
    click.echo("\n".join(lines))


def _progress(silent: bool):
    from rich.console import Console

    console = Console(stderr=True)
    if silent:
        return _Silent()
    return _RichProgress(console)


class _Silent:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def stage(self, name: str, detail: str = "") -> None:
        pass

    def iteration(self, record: dict[str, Any]) -> None:
        pass


class _RichProgress(_Silent):
    """A spinner with the current stage on a terminal; plain lines when stderr is not a terminal."""

    def __init__(self, console):
        self.console = console
        self.status = console.status("starting") if console.is_terminal else None

    def __enter__(self):
        if self.status:
            self.status.start()
        return self

    def __exit__(self, *exc):
        if self.status:
            self.status.stop()
        return False

    def stage(self, name: str, detail: str = "") -> None:
        text = f"[bold]{name}[/bold] {detail}"
        if self.status:
            self.status.update(text)
        elif name not in ("train", "recover"):  # per-epoch lines only on a terminal
            self.console.print(text, highlight=False)

    def iteration(self, record: dict[str, Any]) -> None:
        mark = "[green]met[/green]" if record.get("budget_met") else "[red]over[/red]"
        self.console.print(f"iteration {record['index']}: {record['summary'].rsplit(' ', 2)[0]} {mark}"
                           if record.get("budget_met") is not None else f"iteration {record['index']}: {record['summary']}",
                           highlight=False)


def summary_line(report: dict[str, Any]) -> str:
    f, b = report["final"], report["budget"]
    if b is None:
        where = (f"{f['latency_ratio']:.3f}x of the unpruned latency ({f['percentile']} {f['latency_ms']:.3f} ms "
                 f"vs {f['baseline_latency_ms']:.3f} ms, side by side)")
    elif b["kind"] == "relative":
        where = (f"{f['latency_ratio']:.3f}x of the unpruned latency (budget {b['spec']}; {b['percentile']} "
                 f"{f['latency_ms']:.3f} ms vs {f['baseline_latency_ms']:.3f} ms, measured side by side)")
    else:
        where = f"{b['percentile']} {f['latency_ms']:.3f} ms (budget {f['target_ms']:.3f} ms)"
    memory = report.get("constraints", {}).get("memory")
    if memory:
        where += f", {memory['final_mb']:.3f} MB {memory['metric']} (budget {memory['budget_mb']:g} MB)"
    return (f"budget {'met' if report['budget_met'] else 'NOT met'} ({report.get('policy')}): {where}, "
            f"{f['speedup']:.2f}x faster, "
            f"{f['macs_reduction']:.2f}x fewer MACs, accuracy {_pct(f['accuracy'])} "
            f"(unpruned {_pct(f['baseline_accuracy'])})")


def _print_json(obj: Any) -> None:
    from ..files import _default

    sys.stdout.write(json.dumps(obj, indent=2, default=_default) + "\n")


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}%"


# Commands kept in their own modules (edgeprune/commands/).
from .check import check as _check_cmd  # noqa: E402
from .report import report as _report_cmd  # noqa: E402

main.add_command(_check_cmd)
main.add_command(_report_cmd)


if __name__ == "__main__":
    main()
