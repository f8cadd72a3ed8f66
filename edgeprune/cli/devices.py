"""`edgeprune devices`: the target devices edgeprune knows."""
from __future__ import annotations

import click


@click.command()
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


