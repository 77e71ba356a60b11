"""``build_report``: load the artifacts, render every registered section, write HTML and JSON atomically."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from recsys import __version__
from recsys import artifact as artifacts
from recsys.data.layout import make_parent
from recsys.errors import RecsysError
from recsys.report import html
from recsys.report.context import ReportArtifact, ReportContext, load_bench, resolve_data_dir, unique_labels
from recsys.report.sections import section_specs
from recsys.system import write_atomic

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportOptions:
    artifacts: list[Path]
    out: Path  # the HTML file; the JSON goes beside it with the suffix .json
    data: Path | None = None  # default: each artifact's manifest data_dir, when it exists
    bench: Path | None = None  # benchmarks/results (or one results file)
    max_rows: int = 1_000_000  # test rows scored per artifact
    batch_size: int = 8192
    progress: bool = True


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    json: Path
    seconds: float


def json_path(out: Path) -> Path:
    return out.with_suffix(".json")


def build_report(options: ReportOptions) -> ReportPaths:
    """Write the report and its numbers; RecsysError (one line) for a bad artifact, data or bench path."""
    start = time.perf_counter()
    out = options.out
    if not options.artifacts:
        raise RecsysError("--artifact: give at least one artifact directory")
    if out.suffix == ".json":
        raise RecsysError(f"--out {out}: the HTML file's name (report.json is written beside it)")
    if out.is_dir():
        raise RecsysError(f"--out {out}: is a directory; name the HTML file, e.g. {out / 'report.html'}")
    if options.max_rows < 1:
        raise RecsysError(f"--max-rows must be at least 1, got {options.max_rows}")
    make_parent(out)  # before the scoring: a bad --out fails at once
    bench = load_bench(options.bench) if options.bench is not None else {}
    items = []
    for path, label in zip(options.artifacts, unique_labels(options.artifacts), strict=True):
        loaded = artifacts.load(path)
        data_dir, why = resolve_data_dir(loaded, options.data)
        items.append(ReportArtifact(label, loaded, data_dir, why))
    ctx = ReportContext(items, options.max_rows, options.batch_size, options.bench, bench, progress=options.progress)

    rendered: list[tuple[str, str, str]] = []
    numbers: dict[str, Any] = {}
    for spec in section_specs():
        tick = time.perf_counter()
        section = spec.render(ctx)
        log.debug("section %s: %.2f s", spec.name, time.perf_counter() - tick)
        if section is None:
            continue
        body = (html.note(html.esc(section.note)) if section.note else "") + section.body
        rendered.append((spec.name, spec.title, body))
        numbers[spec.name] = {"title": spec.title, "note": section.note or None, "data": section.data}

    created = datetime.now(UTC).isoformat(timespec="seconds")
    names = ", ".join(item.label for item in items)
    subtitle = (f"{html.esc(names)} · generated {created} by recsys {__version__} · "
                f"numbers in {html.esc(json_path(out).name)}")
    document = html.page(f"recsys report: {names}", subtitle, rendered)
    payload = {
        "report": {"created_at": created, "recsys_version": __version__, "html": out.name,
                   "max_rows": options.max_rows, "data": str(options.data) if options.data else None,
                   "bench": str(options.bench) if options.bench else None},
        "artifacts": [{"label": item.label, "path": str(item.path), "model": item.artifact.model_name,
                       "version": item.artifact.version,
                       "data_dir": str(item.data_dir) if item.data_dir else None} for item in items],
        "sections": numbers,
    }
    _write_atomic(json_path(out), json.dumps(_plain(payload), indent=1, allow_nan=False) + "\n")
    _write_atomic(out, document)
    return ReportPaths(out, json_path(out), time.perf_counter() - start)


def _write_atomic(path: Path, text: str) -> None:
    try:
        write_atomic(path, text)
    except OSError as exc:
        raise RecsysError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _plain(value: Any) -> Any:
    """JSON-ready: numpy scalars and arrays to Python, non-finite floats to null, paths to strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
