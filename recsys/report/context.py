"""What sections read: the artifacts, their test-split scores, train counts and benchmark results.

Expensive pieces (scoring a test split, counting train rows per key) are computed on
first use and cached, so a section that needs them pays once and one that does not
costs nothing.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from recsys import artifact as artifacts
from recsys.data.layout import STATS_FILE, split_files
from recsys.errors import RecsysError
from recsys.schema import SCHEMA_FILE
from recsys.tasks import task_spec

log = logging.getLogger(__name__)

# The trainer's run folder (recsys.train.trainer's names; not imported: it pulls in the distributed stack).
METRICS_LOG, ARTIFACT_DIR = "metrics.jsonl", "artifact"


@dataclass
class Scored:
    """The test split scored by one artifact's model, in split order (row ids ascending)."""

    labels: np.ndarray  # (N,) float64, 0/1
    scores: np.ndarray  # (N,) float64 probabilities
    row_ids: np.ndarray  # (N,) int64 positions in the split
    split_rows: int  # rows in the split; N < split_rows when --max-rows capped the scoring

    @property
    def rows(self) -> int:
        return len(self.labels)

    @property
    def capped(self) -> bool:
        return self.rows < self.split_rows


@dataclass
class ReportArtifact:
    label: str  # unique column name in the report
    artifact: artifacts.Artifact
    data_dir: Path | None  # None: no data to score on (``data_note`` says why)
    data_note: str = ""

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def run_dir(self) -> Path:
        return self.artifact.path.resolve().parent

    @property
    def metrics(self) -> dict[str, Any]:
        return self.artifact.metrics

    @property
    def is_retriever(self) -> bool:
        """A retrieval artifact (its manifest describes item vectors): judged by full ranking, not row scores."""
        return isinstance(self.artifact.manifest.get("retrieval"), dict)

    @cached_property
    def model_sizes(self) -> dict[str, int]:
        """Bytes of the embedding tables (torchrec collections, whatever the scheme) and of the rest."""
        from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

        def size(module: Any) -> int:
            return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])

        model = self.artifact.model
        tables = sum(size(m) for m in model.modules() if isinstance(m, EmbeddingBagCollection | EmbeddingCollection))
        return {"embedding_bytes": tables, "dense_bytes": size(model) - tables}


@dataclass
class BenchFile:
    name: str  # file name inside the bench folder
    data: Any = None  # the parsed JSON, when it parsed
    error: str = ""  # why it did not


@dataclass
class ReportContext:
    artifacts: list[ReportArtifact]
    max_rows: int
    batch_size: int = 8192
    bench_dir: Path | None = None
    bench: dict[str, BenchFile] = field(default_factory=dict)
    claimed: set[str] = field(default_factory=set)  # bench files some section rendered
    progress: bool = True
    _scored: dict[str, Scored] = field(default_factory=dict)
    _keys: dict[Path, dict[str, np.ndarray]] = field(default_factory=dict)
    _counts: dict[tuple[Path, str], np.ndarray] = field(default_factory=dict)
    _ranked: dict[str, dict[str, float | int]] = field(default_factory=dict)

    # ---- scoring -------------------------------------------------------------------------------
    def scored(self, item: ReportArtifact) -> Scored | None:
        """The artifact's scores on its data's test split (at most ``max_rows`` rows); None without data, and
        for a retriever, whose forward scores training pairs, not rows (``ranked`` evaluates it)."""
        if item.data_dir is None or item.is_retriever:
            return None
        if item.label not in self._scored:
            self._scored[item.label] = _score(item, self.max_rows, self.batch_size, self.progress)
        return self._scored[item.label]

    def with_scores(self) -> Iterator[tuple[int, ReportArtifact, Scored]]:
        """(index, artifact, scores) for every artifact that has data, index = its colour."""
        for index, item in enumerate(self.artifacts):
            scored = self.scored(item)
            if scored is not None:
                yield index, item, scored

    def ranked(self, item: ReportArtifact) -> dict[str, float | int] | None:
        """A retriever's full-ranking metrics on its data's test split, recomputed from the artifact's model
        (``recsys.eval.retrieval``, the trainer's code); None without data or for a ranking model."""
        if item.data_dir is None or not item.is_retriever:
            return None
        if item.label not in self._ranked:
            from recsys.eval.retrieval import evaluate_retriever

            model = item.artifact.model
            log.info("ranking the catalogue for %s's test users", item.label)
            self._ranked[item.label] = evaluate_retriever(model.user_vectors, model.item_vectors, model.similarity,
                                                          item.data_dir, "test")
        return self._ranked[item.label]

    @property
    def only_retrievers(self) -> bool:
        """Every artifact is a retriever: the sections of per-row scores have nothing to show and are left out."""
        return all(item.is_retriever for item in self.artifacts)

    def no_data_note(self) -> str:
        """Why row-scoring sections are empty or partial: one line per artifact without data or row scores."""
        notes = [f"{item.label}: {item.data_note}" for item in self.artifacts if item.data_dir is None]
        notes += [f"{item.label}: a retriever, judged by full ranking (section Retrieval), not per-row scores."
                  for item in self.artifacts if item.data_dir is not None and item.is_retriever]
        return " ".join(notes)

    def scoring_note(self) -> str:
        """Which rows were scored, for the sections that show scores."""
        parts = []
        for _, item, scored in self.with_scores():
            cap = (f"the first {scored.rows:,} of {scored.split_rows:,} rows (capped by --max-rows {self.max_rows})"
                   if scored.capped else f"all {scored.rows:,} rows (within --max-rows {self.max_rows})")
            parts.append(f"{item.label}: {cap} of {item.data_dir}/test")
        return "Scored " + "; ".join(parts) + "." if parts else ""

    # ---- keys and train counts -----------------------------------------------------------------
    def test_keys(self, data_dir: Path, column: str) -> np.ndarray:
        """The test split's ``column`` (a string key) in split order."""
        keys = self._keys.setdefault(data_dir, {})
        if column not in keys:
            import pyarrow as pa
            import pyarrow.parquet as pq

            files = split_files(data_dir, "test")
            try:
                chunks = [pq.read_table(f, columns=[column]).column(column) for f in files]
            except (OSError, KeyError, pa.ArrowException) as exc:
                raise RecsysError(f"{data_dir / 'test'}: cannot read column '{column}' "
                                  f"({str(exc).splitlines()[0]})") from None
            keys[column] = pa.chunked_array([c for chunk in chunks for c in chunk.chunks],
                                            type=chunks[0].type).to_numpy(zero_copy_only=False)
        return keys[column]

    def train_counts(self, data_dir: Path, column: str) -> np.ndarray:
        """(split rows,) int64: for each test row, the train rows with the same ``column`` value (0: unseen).

        A lazy polars scan of the one column over the train split, grouped and joined to the test keys.
        """
        key = (data_dir, column)
        if key not in self._counts:
            import polars as pl

            files = [str(f) for f in split_files(data_dir, "train")]
            try:
                counts = pl.scan_parquet(files).group_by(column).agg(pl.len().alias("n")).collect()
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise RecsysError(f"{data_dir / 'train'}: cannot count '{column}' "
                                  f"({str(exc).splitlines()[0]})") from None
            test = pl.DataFrame({column: self.test_keys(data_dir, column)}, schema={column: counts.schema[column]})
            joined = test.join(counts, on=column, how="left", maintain_order="left")
            self._counts[key] = joined["n"].fill_null(0).to_numpy().astype(np.int64)
        return self._counts[key]

    # ---- data stats ----------------------------------------------------------------------------
    @cached_property
    def data_stats(self) -> dict[Path, dict[str, Any]]:
        """stats.json of each data folder in use (those with a readable one)."""
        stats: dict[Path, dict[str, Any]] = {}
        for item in self.artifacts:
            if item.data_dir is None or item.data_dir in stats:
                continue
            try:
                loaded = json.loads((item.data_dir / STATS_FILE).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(loaded, dict):
                stats[item.data_dir] = loaded
        return stats


def _score(item: ReportArtifact, max_rows: int, batch_size: int, show_progress: bool) -> Scored:
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from recsys.data.reader import ParquetReader

    assert item.data_dir is not None
    reader = ParquetReader(item.data_dir, "test", batch_size, schema=item.artifact.schema)
    total = min(reader.total_rows, max_rows)
    labels, logits, row_ids = [], [], []
    done = 0
    model = item.artifact.model
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), disable=not show_progress, transient=True) as progress, \
            torch.inference_mode():
        task = progress.add_task(f"scoring {item.label}", total=total)
        for batch, ids in reader.iter_with_row_ids():
            take = min(len(ids), total - done)
            out = model(batch).double()  # (B,)
            logits.append(out[:take].numpy())
            labels.append(batch.labels[:take].double().numpy())
            row_ids.append(ids[:take].numpy())
            done += take
            progress.update(task, completed=done)
            if done >= total:
                break
    if not done:
        raise RecsysError(f"{item.data_dir / 'test'}: no rows to score")
    scores = task_spec(item.artifact.schema).link_numpy(np.concatenate(logits))
    order = np.argsort(np.concatenate(row_ids), kind="stable")
    return Scored(labels=np.concatenate(labels)[order], scores=scores[order],
                  row_ids=np.concatenate(row_ids)[order], split_rows=reader.total_rows)


# ---- building the context --------------------------------------------------------------------------

def _label(path: Path) -> str:
    """The run's name for RUN/artifact, else the folder's own name."""
    resolved = path.resolve()
    return resolved.parent.name if resolved.name == ARTIFACT_DIR else resolved.name


def unique_labels(paths: list[Path]) -> list[str]:
    labels = [_label(p) for p in paths]
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        if labels.count(label) > 1:
            seen[label] = seen.get(label, 0) + 1
            label = f"{label} #{seen[label]}"
        out.append(label)
    return out


def resolve_data_dir(loaded: artifacts.Artifact, data: Path | None) -> tuple[Path | None, str]:
    """--data when given (it must be a prepared folder), else the manifest's data_dir when it exists."""
    if data is not None:
        _check_data(data, "--data")
        return data.resolve(), ""
    recorded = loaded.manifest.get("data_dir")
    if not isinstance(recorded, str):
        return None, "no --data given and the manifest records no data_dir."
    path = Path(recorded)
    if not (path / SCHEMA_FILE).is_file() or not (path / "test").is_dir():
        return None, f"no --data given and the manifest's data_dir {path} is not there (pass --data DIR)."
    return path, ""


def _check_data(data: Path, flag: str) -> None:
    if not data.is_dir():
        raise RecsysError(f"{flag} {data}: directory not found")
    if not split_files(data, "test"):  # which also names a missing schema.json or test/ folder
        raise RecsysError(f"{flag} {data / 'test'}: no Parquet files")


def load_bench(path: Path) -> dict[str, BenchFile]:
    """Every ``*.json`` in the folder (or the one file), parsed; a file that does not parse keeps its error."""
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.glob("*.json"))
    else:
        raise RecsysError(f"--bench {path}: no such directory or results file")
    out: dict[str, BenchFile] = {}
    for file in files:
        try:
            out[file.name] = BenchFile(file.name, json.loads(file.read_text(), parse_constant=_no_constant))
        except (OSError, ValueError) as exc:
            out[file.name] = BenchFile(file.name, error=f"not readable JSON ({str(exc).splitlines()[0]})")
    return out


def _no_constant(name: str) -> float:  # NaN/Infinity in a results file: read as NaN, shown as –
    return math.nan
