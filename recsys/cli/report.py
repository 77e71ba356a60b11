"""``recsys report``: an offline evaluation report of one or more artifacts (public interface, keep flags stable)."""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    artifact: list[Path] = typer.Option(..., "--artifact", help="An artifact directory (RUN/artifact); repeat to "
                                        "compare several side by side."),
    out: Path = typer.Option(..., "--out", help="The HTML file to write (self-contained); its numbers go to the "
                             "same name with .json beside it."),
    data: Path | None = typer.Option(None, "--data", help="Prepared data directory whose test split is scored "
                                     "(default: each artifact's manifest data_dir, when it exists)."),
    bench: Path | None = typer.Option(None, "--bench", help="Benchmark results folder (e.g. benchmarks/results) "
                                      "or one results file: training throughput, serving latency, comparisons."),
    max_rows: int = typer.Option(1_000_000, "--max-rows", min=1, help="Score at most this many test rows per "
                                 "artifact (the first ones; the report says when it capped)."),
    batch_size: int = typer.Option(8192, "--batch-size", min=1, help="Rows per forward pass when scoring."),
) -> None:
    """Write an HTML report (metrics, curves, calibration, segments, training curves, benchmarks) and its JSON.

    Example: recsys report --artifact runs/dlrm/artifact --bench benchmarks/results --out report.html
    """
    import logging

    from recsys.report import ReportOptions, build_report

    progress = logging.getLogger("recsys").isEnabledFor(logging.INFO)
    paths = build_report(ReportOptions(artifacts=artifact, out=out, data=data, bench=bench, max_rows=max_rows,
                                       batch_size=batch_size, progress=progress))
    logging.getLogger(__name__).info("report built in %.1f s; numbers in %s", paths.seconds, paths.json)
    print(paths.html)
