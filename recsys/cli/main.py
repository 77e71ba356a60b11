"""Entry point: ``recsys <group> <command>``; user errors print one line, not a traceback."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape

from recsys import __version__
from recsys.cli.data import app as data_app
from recsys.cli.embeddings import app as embeddings_app
from recsys.cli.features import app as features_app
from recsys.cli.index import app as index_app
from recsys.cli.report import report
from recsys.cli.serve import serve
from recsys.cli.train import train
from recsys.errors import RecsysError
from recsys.system import available_cpus

app = typer.Typer(
    name="recsys",
    help="Recommender-systems platform: prepare data, train sharded models, serve and report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(data_app, name="data")
app.add_typer(embeddings_app, name="embeddings")
app.add_typer(features_app, name="features")
app.add_typer(index_app, name="index")
app.command()(train)
app.command()(serve)
app.command()(report)

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
    setup_logging(level)


def setup_logging(level: int) -> None:
    """Rich log lines on stderr; also called in spawned training workers (``RECSYS_LOG_LEVEL``)."""
    os.environ["RECSYS_LOG_LEVEL"] = str(level)
    # Our loggers at the chosen level; libraries (torchrec's planner, fbgemm's kernels) only when verbose,
    # else they print dry-run and kernel-construction notes on every run.
    logging.basicConfig(
        level=level if level <= logging.DEBUG else logging.ERROR, format="%(message)s", datefmt="[%X]",
        handlers=[RichHandler(console=err_console, show_path=False, rich_tracebacks=False)], force=True,
    )
    logging.getLogger("recsys").setLevel(level)
    logging.getLogger("matplotlib").setLevel(max(level, logging.INFO))  # its font scan floods debug logs
    if level > logging.DEBUG:  # deprecation notes of torch/torchrec internals, not actionable by users
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*is_fx_tracing.*")
        logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def main() -> None:
    """Console script: run the app, turning RecsysError into a one-line message and exit code 2."""
    os.environ.setdefault("POLARS_MAX_THREADS", str(available_cpus()))
    try:
        app()  # standalone: usage errors print click's message and exit 2
    except RecsysError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
