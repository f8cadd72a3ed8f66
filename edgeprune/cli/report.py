"""`edgeprune report OUT_DIR`: re-render report.md and a self-contained report.html from report.json."""
from __future__ import annotations

import click


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print nothing but errors.")
def report(out_dir: str, quiet: bool) -> None:
    """Rewrite OUT_DIR/report.md and write OUT_DIR/report.html (plots embedded) from OUT_DIR/report.json.

    manifest.json gets the new hashes of the files written, so the directory still verifies; files that already
    differed from the manifest are listed, not re-hashed.
    """
    from ..errors import ConfigError, EdgepruneError
    from ..report.html import write_reports

    try:
        written = write_reports(out_dir)
    except EdgepruneError:
        raise
    except Exception as exc:  # whatever else the files hold: one line and exit 2, never a traceback
        raise ConfigError(f"cannot render {out_dir}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    for w in written.warnings:
        click.echo(f"edgeprune: warning: {w}", err=True)
    if not quiet:
        where = "; manifest.json updated" if written.manifest_updated else ""
        click.echo(f"wrote {', '.join(written.files)} in {written.directory}{where}")
