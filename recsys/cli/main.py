"""Entry point: ``recsys <group> <command>``; user errors print one line, not a traceback."""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.logging import RichHandler

from recsys import __version__
from recsys.cli.data import app as data_app
from recsys.errors import RecsysError

app = typer.Typer(
    name="recsys",
    help="Recommender-systems platform: prepare data, train sharded models, serve and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")

err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        print(f"recsys {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug detail."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Log warnings and errors only."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """Recommender-systems platform: prepare data, train sharded models, serve and report."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(
        level=level, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)], force=True,
    )


def main() -> None:
    """Console script: run the app, turning RecsysError into a one-line message and exit code 2."""
    os.environ.setdefault("POLARS_MAX_THREADS", str(os.cpu_count() or 1))
    try:
        app()  # standalone: usage errors print click's message and exit 2
    except RecsysError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
