"""A field longer than --max-field-bytes (64 KiB by default) quarantines its row in every input format, so one
huge value never becomes a vocabulary entry copied into every artifact."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import polars as pl
import pytest

from recsys.data.formats.movielens import MovieLensSource
from recsys.data.formats.tabular import TabularSource
from recsys.data.pipeline import PrepareOptions, run
from recsys.data.synth import CtrConfig, write_criteo_tsv
from recsys.schema import Schema
from tests.conftest import run_cli
from tests.data.test_movielens import write_latest

SCHEMA_YAML = """
task: ctr
item_key: {name: item, source: item_id}
sparse:
  - {name: item_id, entity: item}
  - {name: tags, entity: item, separator: "|"}
labels:
  - {name: click}
"""


def _text(size: int, seed: int) -> str:
    """Incompressible text of ``size`` bytes, as a pasted blob or a broken export would be."""
    return random.Random(seed).randbytes(size // 2).hex()


def _quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine" / "bad_rows.jsonl").read_text().splitlines()]


def _vocab_bytes(out: Path) -> tuple[int, int]:
    """Total size of the vocabulary files, and the longest value in any of them."""
    files = list((out / "vocab").glob("*.parquet"))
    longest = max((pl.read_parquet(f)["value"].str.len_bytes().max() or 0) for f in files)
    return sum(f.stat().st_size for f in files), int(longest)


def test_criteo_row_with_a_huge_field_is_quarantined_by_default(tmp_path: Path) -> None:
    day = write_criteo_tsv(CtrConfig(rows=3000, seed=5), tmp_path / "raw", overwrite=False)
    lines = day.read_text().split("\n")
    huge = _text(1 << 20, seed=1)
    for line in (11, 12):  # twice, so that a min_count of 2 would let it into the vocabulary
        fields = lines[line - 1].split("\t")
        fields[16] = huge  # C3
        lines[line - 1] = "\t".join(fields)
    day.write_text("\n".join(lines))
    out = tmp_path / "prepared"
    result = run_cli("-q", "data", "prepare", "--format", "criteo", "--input", str(day), "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]

    stats = json.loads((out / "stats.json").read_text())
    assert stats["bad_rows"] == 2 and stats["rows_written"] == 2998
    bad = _quarantine(out)
    assert [(r["source"], r["line"]) for r in bad] == [(str(day), 11), (str(day), 12)]
    assert bad[0]["reason"] == f"field 'C3' is {1 << 20} bytes, over the limit of 65536 (--max-field-bytes)"
    assert bad[0]["raw"].startswith(lines[10][:100]) and len(bad[0]["raw"]) < 5000  # cut, saying how long it was
    assert f"[cut: {len(lines[10])} characters in all]" in bad[0]["raw"]
    assert (out / "quarantine" / "bad_rows.jsonl").stat().st_size < 20_000
    total, longest = _vocab_bytes(out)
    assert longest < 100 and total < 500_000


def test_max_field_bytes_sets_the_limit_for_csv(tmp_path: Path) -> None:
    (tmp_path / "schema.yaml").write_text(SCHEMA_YAML)
    rows = [f"i{k % 40},red|blue,{k % 2}" for k in range(400)]
    rows[9] = f"{_text(1 << 20, seed=2)},red,1"  # line 11: a 1 MB id
    rows[19] = f"i1,red|{_text(5000, seed=3)},0"  # line 21: 5 kB of tags
    (tmp_path / "items.csv").write_text("item_id,tags,click\n" + "\n".join(rows) + "\n")
    prepare = ["-q", "data", "prepare", "--format", "csv", "--input", str(tmp_path / "items.csv"),
               "--schema", str(tmp_path / "schema.yaml"), "--max-bad-fraction", "0.05"]

    default = run_cli(*prepare, "--out", str(tmp_path / "default"))
    assert default.returncode == 0, default.stderr[-3000:]
    assert [(r["line"], r["reason"]) for r in _quarantine(tmp_path / "default")] == [
        (11, f"column 'item_id' is {1 << 20} bytes, over the limit of 65536 (--max-field-bytes)")]
    total, longest = _vocab_bytes(tmp_path / "default")
    assert longest == 5000  # the 5 kB tag is under the default limit: kept
    assert total < 100_000

    lowered = run_cli(*prepare, "--max-field-bytes", "4096", "--out", str(tmp_path / "lowered"))
    assert lowered.returncode == 0, lowered.stderr[-3000:]
    assert [(r["line"], r["reason"]) for r in _quarantine(tmp_path / "lowered")] == [
        (11, f"column 'item_id' is {1 << 20} bytes, over the limit of 4096 (--max-field-bytes)"),
        (21, "column 'tags' is 5004 bytes, over the limit of 4096 (--max-field-bytes)")]
    assert _vocab_bytes(tmp_path / "lowered")[1] < 10


def test_parquet_list_cell_over_the_limit_is_quarantined(tmp_path: Path) -> None:
    (tmp_path / "schema.yaml").write_text(SCHEMA_YAML)
    frame = pl.DataFrame({"item_id": [f"i{k % 7}" for k in range(100)],
                          "tags": [["red", "blue"]] * 100, "click": [k % 2 for k in range(100)]})
    frame = frame.with_columns(pl.when(pl.int_range(100) == 41).then(pl.lit(["red", "x" * 3000]))
                               .otherwise(pl.col("tags")).alias("tags"))
    frame.write_parquet(tmp_path / "items.parquet")
    source = TabularSource(tmp_path / "items.parquet", Schema.load(tmp_path / "schema.yaml"), file_format="parquet",
                           max_field_bytes=1000)
    result = run(source, tmp_path / "out", PrepareOptions(max_bad_fraction=0.05))
    assert result.stats["bad_rows"] == 1
    (bad,) = _quarantine(tmp_path / "out")
    assert (bad["line"], bad["reason"]) == (42, "column 'tags' is 3003 bytes, over the limit of 1000 (--max-field-bytes)")


def test_movielens_rating_and_movie_lines_over_the_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "ml"
    write_latest(folder)
    with (folder / "ratings.csv").open("a") as handle:
        handle.write(f"3,1,4.0,{' ' * 2000}77\n")  # a valid timestamp, padded past the limit
    with (folder / "movies.csv").open("a") as handle:
        handle.write(f"9,Padded (1999),Drama|{_text(3000, seed=4)}\n")
    with caplog.at_level(logging.WARNING):
        source = MovieLensSource(folder, max_field_bytes=1000)
    assert "movies.csv: 1 malformed movie lines with a field over 1000 bytes (--max-field-bytes) ignored" in caplog.text
    assert 9 not in source.movies["item"].to_list()  # movie 9 keeps its ratings, without features
    result = run(source, tmp_path / "out", PrepareOptions(max_bad_fraction=0.5))
    reasons = {r["line"]: r["reason"] for r in _quarantine(tmp_path / "out")}
    last = len((folder / "ratings.csv").read_bytes().splitlines())
    assert reasons[last] == "field 'timestamp' is 2002 bytes, over the limit of 1000 (--max-field-bytes)"
    assert result.stats["bad_rows"] == len(reasons)
    assert _vocab_bytes(tmp_path / "out")[1] < 100
