"""`edgeprune check NEW BASELINE`: a regression gate for CI (logic in edgeprune/check/)."""
from __future__ import annotations

from typing import Any

import click

from .main import print_json


@click.command()
@click.argument("new", type=click.Path())
@click.argument("baseline", type=click.Path())
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="YAML of check options (keys as the options below, e.g. max_latency_increase: 10%); flags override it.")
@click.option("--max-latency-increase", help="Allowed p50 latency increase: 10% of the baseline or 0.05ms.  [default: 10%]")
@click.option("--max-latency-p90-increase", help="Allowed p90 latency increase.  [default: 20%]")
@click.option("--max-accuracy-drop", help="Allowed top-1 accuracy drop in points.  [default: 0.5]")
@click.option("--max-size-increase", help="Allowed weights size increase: 5%, 4096 (bytes), 10KB, 1MiB.  [default: 5%]")
@click.option("--max-macs-increase", help="Allowed MACs increase: 5%, 1M.  [default: 5%]  Any threshold may be 'off'.")
@click.option("--remeasure/--no-remeasure", default=None,
              help="Time both model.onnx here, interleaved, and judge the paired ratio's confidence interval.")
@click.option("--blocks", type=int, help="Interleaved blocks per artifact when re-measuring (doubled once if the "
                                         "verdict is ambiguous).  [default: 10]")
@click.option("--iters", type=int, help="Timed runs per block when re-measuring.  [default: 200]")
@click.option("--warmup", type=int, help="Warm-up runs per artifact when re-measuring.  [default: 50]")
@click.option("--allow-mismatch/--no-allow-mismatch", default=None,
              help="Compare reports from different devices, runtimes, precisions, batch sizes or input shapes.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write JUnit XML: one testcase per metric.")
@click.option("--markdown", type=click.Path(dir_okay=False),
              help="Write a markdown summary (also appended to $GITHUB_STEP_SUMMARY when set).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout instead of the table.")
@click.pass_context
def check(ctx: click.Context, new: str, baseline: str, config_file: str | None, junit: str | None,
          markdown: str | None, as_json: bool, **flags: Any) -> None:
    """Compare NEW against BASELINE (each a report.json or an artifact directory holding one).

    Exit codes: 0 pass, 1 regression, 2 cannot compare (missing or malformed report, another schema_version,
    another device / runtime / precision / batch size / input shape).
    """
    from ..errors import EdgepruneError
    from ..check import (CannotCompare, CheckOptions, cannot_compare_result, run_check, step_summary_path,
                         write_outputs)

    options = CheckOptions.from_sources(config_file, **flags)
    try:
        try:
            result = run_check(new, baseline, options)
        except (CannotCompare, KeyboardInterrupt):
            raise
        except Exception as exc:  # exit 1 means "regression" to CI: a failure to compare is exit 2, one line
            text = (exc.message if isinstance(exc, EdgepruneError) else f"{type(exc).__name__}: {exc}").splitlines()
            raise CannotCompare(f"cannot compare: {(text or ['no message'])[0][:300]}") from exc
    except CannotCompare as exc:
        # CI still gets its files, saying why nothing was compared; the group prints the one line, exit 2.
        result = cannot_compare_result(new, baseline, exc.message)
        write_outputs(result, junit, markdown, step_summary_path())
        if as_json:
            print_json(result)
        raise
    write_outputs(result, junit, markdown, step_summary_path())
    if as_json:
        print_json(result)
    else:
        print_table(result)
    ctx.exit(result["exit_code"])


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from ..check.render import format_change, format_value

    console = Console()
    n = result["new"]
    title = (f"{n['model']} on {n['device']} ({n['runtime']}, {n['precision']}, batch {n['batch size']}, "
             f"input {n['input shape']}); latency "
             + ("re-measured here, interleaved" if result["mode"] == "remeasured" else "from the stored reports"))
    table = Table("metric", "baseline", "new", "change", "threshold", "verdict", title=title, title_justify="left")
    style = {"regression": "bold red", "error": "bold yellow", "skipped": "dim", "pass": "green"}
    for m in result["metrics"]:
        table.add_row(m["label"], format_value(m["unit"], m["baseline"]), format_value(m["unit"], m["new"]),
                      format_change(m), m["threshold"], f"[{style[m['status']]}]{m['status']}[/]")
    console.print(table)
    for m in result["metrics"]:  # the why, where there is more to say than "not worse"
        if m["detail"] not in ("not worse", "not slower", "within threshold"):
            console.print(f"  {m['label']}: {escape(m['detail'])}", highlight=False)
    for w in result["warnings"]:
        console.print(f"[yellow]note:[/] {escape(w)}", highlight=False)
    color = {"pass": "green", "regression": "red"}.get(result["verdict"], "yellow")
    console.print(f"[bold {color}]{escape(result['summary'])}[/]", highlight=False)
