"""Generic CSV/Parquet input end to end: TabularSource → pipeline.run → prepared Parquet, vocab, quarantine."""

from __future__ import annotations

import csv
import gzip
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from recsys.data.formats.tabular import TabularSource
from recsys.data.pipeline import PrepareOptions, run
from recsys.errors import BadDataError, RecsysError
from recsys.schema import Schema

REPO = Path(__file__).resolve().parents[2]

SCHEMA_YAML = """
task: ctr
user_key: {name: user, source: user_id}
item_key: {name: item, source: item_id}
timestamp: {name: ts}
dense:
  - {name: price, entity: item}
sparse:
  - {name: user_id, entity: user, table: users}
  - {name: item_id, entity: item, table: items}
  - {name: tags, entity: item, separator: "|"}
  - {name: hour, entity: context, table: hours}
sequences:
  - {name: history, table: items, max_length: 3, separator: "|"}
tables:
  - {name: users, encoding: hash, hash_buckets: 16}
  - {name: items}
  - {name: tags}
  - {name: hours, encoding: identity, cardinality: 24}
labels:
  - {name: click}
"""

SMALL_YAML = """
task: ctr
item_key: {name: item, source: item_id}
timestamp: {name: ts}
dense:
  - {name: price, entity: item}
sparse:
  - {name: item_id, entity: item}
  - {name: tags, entity: item, separator: "|"}
labels:
  - {name: click}
"""
SMALL_HEADER = "item_id,tags,price,ts,click"

ALL_TRAIN = {"valid_fraction": 0.0, "test_fraction": 0.0}


def _schema(tmp_path: Path, text: str = SCHEMA_YAML) -> Schema:
    path = tmp_path / "schema.yaml"
    path.write_text(text)
    return Schema.load(path)


def _raw_frame(n: int = 200, seed: int = 0) -> pl.DataFrame:
    """Interactions with every kind of column, including missing prices and empty tag lists."""
    rng = np.random.default_rng(seed)
    tag_pool = ["red", "blue", "sale", "new", "kids"]
    items = [f"i{k}" for k in rng.integers(0, 30, n)]
    return pl.DataFrame({
        "user_id": [f"u{k}" for k in rng.integers(0, 40, n)],
        "item_id": items,
        "tags": [[tag_pool[j] for j in rng.choice(5, rng.integers(0, 4), replace=False)] for _ in range(n)],
        "price": [None if rng.random() < 0.1 else round(float(rng.uniform(1, 500)), 2) for _ in range(n)],
        "hour": rng.integers(0, 24, n).tolist(),
        "history": [[f"i{k}" for k in rng.integers(0, 30, rng.integers(0, 6))] for _ in range(n)],
        "ts": (1_700_000_000 + rng.permutation(n) * 60).tolist(),
        "click": rng.integers(0, 2, n).tolist(),
        "note": ["ignored"] * n,  # an extra column the schema does not read
    })


def _write_csv(frame: pl.DataFrame, path: Path, iso_time: bool = False) -> Path:
    csv_frame = frame.with_columns(pl.col("tags").list.join("|"), pl.col("history").list.join("|"))
    if iso_time:
        csv_frame = csv_frame.with_columns(
            pl.from_epoch("ts", time_unit="s").dt.strftime("%Y-%m-%dT%H:%M:%SZ").alias("ts"))
    csv_frame.write_csv(path)
    return path


def _write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    # Lists stay list columns and time a Datetime column: the other typing paths.
    frame.with_columns(pl.from_epoch("ts", time_unit="s")).write_parquet(path)
    return path


def _prepare(path: Path, schema: Schema, out: Path, file_format: str = "csv", source_args: dict | None = None,
             **options: object):
    source = TabularSource(path, schema, file_format=file_format, **(source_args or {}))
    return run(source, out, PrepareOptions(**options))  # type: ignore[arg-type]


def _split(out: Path, split: str) -> pl.DataFrame:
    files = sorted((out / split).glob("*.parquet"))
    return pl.concat([pl.read_parquet(f) for f in files]) if files else pl.DataFrame()


def _quarantine(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "quarantine" / "bad_rows.jsonl").read_text().splitlines()]


def _decoder(out: Path, table: str) -> dict[int, str]:
    vocab = pl.read_parquet(out / "vocab" / f"{table}.parquet")
    assert vocab.columns == ["value", "index", "count"]
    assert vocab["index"].min() == 1  # 0 stays for out-of-vocabulary
    return dict(zip(vocab["index"].to_list(), vocab["value"].to_list(), strict=True))


# ---- end to end ----------------------------------------------------------------------------
def test_csv_and_parquet_prepare_identically(tmp_path: Path) -> None:
    frame = _raw_frame()
    schema = _schema(tmp_path)
    csv_path = _write_csv(frame, tmp_path / "in.csv", iso_time=True)
    parquet_path = _write_parquet(frame, tmp_path / "in.parquet")
    # Small chunks and batches: many parts, line numbers carried across them.
    a = _prepare(csv_path, schema, tmp_path / "a", "csv", {"chunk_bytes": 1500})
    b = _prepare(parquet_path, schema, tmp_path / "b", "parquet", {"batch_rows": 37})

    assert a.stats["rows_written"] == b.stats["rows_written"] == frame.height
    assert a.stats["bad_rows"] == b.stats["bad_rows"] == 0
    # Dense statistics are merged part by part, and the two inputs are cut into different parts:
    # equal up to the last bits of a float sum; everything else is equal exactly.
    for fa, fb in zip(a.schema.dense, b.schema.dense, strict=True):
        assert fa.mean == pytest.approx(fb.mean, rel=1e-12) and fa.std == pytest.approx(fb.std, rel=1e-12)
    unset = {"mean": None, "std": None}
    assert (a.schema.model_copy(update={"dense": [f.model_copy(update=unset) for f in a.schema.dense]})
            == b.schema.model_copy(update={"dense": [f.model_copy(update=unset) for f in b.schema.dense]}))
    for split in ("train", "valid", "test"):
        assert_frame_equal(_split(tmp_path / "a", split), _split(tmp_path / "b", split))
    for table in ("items", "tags"):
        assert_frame_equal(pl.read_parquet(tmp_path / "a" / "vocab" / f"{table}.parquet"),
                           pl.read_parquet(tmp_path / "b" / "vocab" / f"{table}.parquet"))
    # ISO text in the CSV and a Datetime column in Parquet both became the original unix seconds.
    written = pl.concat([_split(tmp_path / "a", s) for s in ("train", "valid", "test")])
    assert sorted(written["ts"].to_list()) == sorted(frame["ts"].to_list())


def test_raw_part_types_follow_the_contract(tmp_path: Path) -> None:
    path = _write_csv(_raw_frame(20), tmp_path / "in.csv")
    parts = list(TabularSource(path, _schema(tmp_path), file_format="csv").parts())
    assert len(parts) == 1 and parts[0].bad is None
    assert dict(parts[0].rows.schema) == {
        "price": pl.Float64, "user_id": pl.String, "item_id": pl.String, "tags": pl.List(pl.String),
        "hour": pl.Int64, "history": pl.List(pl.String), "click": pl.Float64, "user": pl.String,
        "item": pl.String, "ts": pl.Int64,
    }


def test_quoted_fields_keep_delimiters_and_quotes(tmp_path: Path) -> None:
    path = tmp_path / "quoted.csv"
    path.write_text(
        f"{SMALL_HEADER}\n"
        '"Smith, John",a|b,1.5,100,1\n'
        'plain,"x,y|z",2.5,200,0\n'
        '"say ""hi""",c,3.0,300,1\n'
        '5" screen,d,4.0,350,0\n'  # a quote inside an unquoted field is text, as in the csv module
        'spans,"two\n'  # a quoted field may not span lines: both lines are quarantined
        'lines",1.0,400,1\n'
    )
    result = _prepare(path, _schema(tmp_path, SMALL_YAML), tmp_path / "out", max_bad_fraction=0.5, **ALL_TRAIN)
    assert result.stats["rows_written"] == 4
    first, second = _quarantine(tmp_path / "out")
    assert first["line"] == 6 and first["reason"].startswith("malformed quoting: a quote is not closed")
    assert second["line"] == 7 and second["reason"] == "wrong field count: 4 (expected 5)"
    assert set(_decoder(tmp_path / "out", "item_id").values()) == {"Smith, John", "plain", 'say "hi"', '5" screen'}
    tags = _decoder(tmp_path / "out", "tags")
    decoded = [[tags[i] for i in row] for row in _split(tmp_path / "out", "train")["tags"].to_list()]
    assert decoded == [["a", "b"], ["x,y", "z"], ["c"], ["d"]]


PAIR_YAML = """
task: ctr
sparse:
  - {name: a, entity: item}
  - {name: b, entity: user}
labels:
  - {name: click}
"""


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(st.text(alphabet='ab ,;"|', max_size=6), st.text(alphabet='xy,"', max_size=4),
                               st.integers(0, 1)), min_size=1, max_size=25),
       quote_all=st.booleans())
def test_csv_parsing_matches_the_csv_module(tmp_path: Path, rows: list[tuple[str, str, int]], quote_all: bool) -> None:
    # Plain, regularly quoted and irregular lines take three paths; together they must read what csv wrote.
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL if quote_all else csv.QUOTE_MINIMAL)
    writer.writerow(["a", "b", "click"])
    writer.writerows(rows)
    path = tmp_path / "pairs.csv"
    path.write_text(buffer.getvalue())
    parts = list(TabularSource(path, _schema(tmp_path, PAIR_YAML), file_format="csv", delimiter=",").parts())
    assert all(part.bad is None for part in parts)
    got = pl.concat([part.rows for part in parts])
    assert got.rows() == [(a.strip() or None, b.strip() or None, float(c)) for a, b, c in rows]


def test_multi_valued_and_sequence_columns_become_vocab_index_lists(tmp_path: Path) -> None:
    frame = _raw_frame()
    path = _write_csv(frame, tmp_path / "in.csv")
    _prepare(path, _schema(tmp_path), tmp_path / "out", **ALL_TRAIN)
    train = _split(tmp_path / "out", "train")
    assert train.schema["tags"] == pl.List(pl.Int64)
    tags, items = _decoder(tmp_path / "out", "tags"), _decoder(tmp_path / "out", "items")
    assert [[tags[i] for i in row] for row in train["tags"].to_list()] == frame["tags"].to_list()
    assert [] in train["tags"].to_list()  # an empty cell is an empty list, not a missing row
    # Histories share the item table and keep the newest max_length=3 entries (first in the data).
    assert [[items[i] for i in row] for row in train["history"].to_list()] == [h[:3] for h in frame["history"].to_list()]
    assert train["hour"].to_list() == frame["hour"].to_list()  # identity encoding keeps the value


def test_hash_encoding_stays_within_buckets(tmp_path: Path) -> None:
    frame = _raw_frame()
    result = _prepare(_write_csv(frame, tmp_path / "in.csv"), _schema(tmp_path), tmp_path / "out", **ALL_TRAIN)
    assert result.schema.table("users").cardinality == 16
    hashed = _split(tmp_path / "out", "train").select("user_id", raw=pl.Series(frame["user_id"]))
    assert hashed["user_id"].min() >= 0 and hashed["user_id"].max() < 16
    assert hashed["user_id"].n_unique() > 5
    # The same raw id always lands in the same bucket.
    assert (hashed.group_by("raw").agg(pl.col("user_id").n_unique())["user_id"] == 1).all()
    assert not (tmp_path / "out" / "vocab" / "users.parquet").exists()


def test_bad_csv_lines_are_quarantined_with_line_and_reason(tmp_path: Path) -> None:
    good = ["g1,a|b,1.0,100,1", "g2,,2.0,200,0", '"g,3",c,3.0,300,1', "g4,d,,400,0"]
    bad = {
        3: ("g9,a,1.0,100", "wrong field count: 4 (expected 5)"),
        4: ("g9,a,abc,100,1", "column 'price': not a number"),
        6: ("g9,a,1.0,100,yes", "column 'click': not a number"),
        7: ("g9,\udcff,1.0,100,1", "undecodable bytes (not UTF-8)"),
        8: ("g9,a,1.0,100,", "column 'click': missing label"),
        9: ('g9,"broken,1.0,100,1', "malformed quoting"),
        10: ("g9,a,1.0,yesterday,1", "column 'ts': not unix seconds or an ISO-8601 date/time"),
    }
    lines = [SMALL_HEADER, good[0], bad[3][0], bad[4][0], good[1], bad[6][0], bad[7][0], bad[8][0], bad[9][0],
             bad[10][0], good[2], "", good[3]]
    path = tmp_path / "bad.csv"
    path.write_bytes("\n".join(lines).encode("utf-8", errors="surrogateescape") + b"\n")
    result = _prepare(path, _schema(tmp_path, SMALL_YAML), tmp_path / "out", "csv", {"chunk_bytes": 40},
                      max_bad_fraction=1.0, **ALL_TRAIN)

    records = _quarantine(tmp_path / "out")
    assert [r["line"] for r in records] == sorted(bad)
    for record in records:
        text, reason = bad[record["line"]]
        assert record["source"] == str(path)
        assert reason in record["reason"]
        if record["line"] != 7:
            assert record["raw"] == text
    assert result.stats["bad_rows"] == len(bad)
    assert _split(tmp_path / "out", "train")["item"].to_list() == ["g1", "g2", "g,3", "g4"]


def test_bad_parquet_rows_are_quarantined_with_row_numbers(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    pl.DataFrame({
        "item_id": ["a", "b", "c", "d", None, "f"],
        "tags": [["x"], [], None, ["y", "z"], ["x"], ["x"]],
        "price": ["1.5", "2", "cheap", "4", "5", ""],
        "ts": [1, 2, 3, None, 5, 6],
        "click": [1.0, 0.0, 1.0, 1.0, None, 0.0],
    }).write_parquet(path)
    result = _prepare(path, _schema(tmp_path, SMALL_YAML), tmp_path / "out", "parquet", {"batch_rows": 2},
                      max_bad_fraction=1.0, **ALL_TRAIN)
    records = _quarantine(tmp_path / "out")
    assert [(r["line"], r["reason"]) for r in records] == [
        (3, "column 'price': not a number"),
        (4, "column 'ts': missing timestamp"),
        (5, "column 'click': missing label"),
    ]
    assert json.loads(records[0]["raw"]) == {"item_id": "c", "tags": None, "price": "cheap", "ts": 3, "click": 1.0}
    train = _split(tmp_path / "out", "train")
    assert result.stats["rows_written"] == 3 and train["item"].to_list() == ["a", "b", "f"]


def test_too_many_bad_rows_fails_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "mostly_bad.csv"
    path.write_text(f"{SMALL_HEADER}\na,x,1.0,1,1\nb,x,oops,2,1\nc,x,1.0,3,maybe\n")
    out = tmp_path / "out"
    with pytest.raises(BadDataError, match="max-bad-fraction"):
        _prepare(path, _schema(tmp_path, SMALL_YAML), out, max_bad_fraction=0.5)
    assert not out.exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    kept = tmp_path / "out.bad_rows.jsonl"
    assert [json.loads(line)["line"] for line in kept.read_text().splitlines()] == [3, 4]


# ---- inputs ------------------------------------------------------------------------------
@pytest.mark.parametrize("file_format", ["csv", "parquet"])
def test_missing_column_names_column_and_file(tmp_path: Path, file_format: str) -> None:
    frame = _raw_frame(10).drop("hour")
    path = (_write_csv(frame, tmp_path / "in.csv") if file_format == "csv"
            else _write_parquet(frame, tmp_path / "in.parquet"))
    with pytest.raises(RecsysError, match=r"column 'hour' .* is not in the file") as caught:
        TabularSource(path, _schema(tmp_path), file_format=file_format)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_input_and_empty_directory(tmp_path: Path) -> None:
    schema = _schema(tmp_path, SMALL_YAML)
    with pytest.raises(RecsysError, match="nowhere.csv: input not found"):
        TabularSource(tmp_path / "nowhere.csv", schema, file_format="csv")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not data")
    with pytest.raises(RecsysError, match=r"empty: directory has no \*\.csv"):
        TabularSource(tmp_path / "empty", schema, file_format="csv")


def test_parquet_column_of_the_wrong_type_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    pl.DataFrame({"item_id": ["a"], "tags": [["x"]], "price": [[1.0]], "ts": [1], "click": [1]}).write_parquet(path)
    with pytest.raises(RecsysError, match=r"column 'price' has type .*cannot hold dense feature 'price'"):
        TabularSource(path, _schema(tmp_path, SMALL_YAML), file_format="parquet")


def test_directory_of_files_in_name_order_gzip_and_semicolons(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    header = SMALL_HEADER.replace(",", ";")
    with gzip.open(folder / "part-2.csv.gz", "wt") as handle:
        handle.write(f"{header}\nc;t;3;2024-01-02 00:00:00;1\nd;t;4;2024-01-02;0\n")
    (folder / "part-1.csv").write_text(f"{header}\na;t;1;1704067200;1\nb;t;oops;1704067260;0\n")
    (folder / "README.md").write_text("skipped")
    result = _prepare(folder, _schema(tmp_path, SMALL_YAML), tmp_path / "out", max_bad_fraction=0.5, **ALL_TRAIN)
    train = _split(tmp_path / "out", "train")
    assert train["item"].to_list() == ["a", "c", "d"]
    day2 = int(datetime(2024, 1, 2, tzinfo=UTC).timestamp())
    assert train["ts"].to_list() == [1704067200, day2, day2]
    [record] = _quarantine(tmp_path / "out")
    assert (record["source"], record["line"]) == (str(folder / "part-1.csv"), 3)
    assert result.stats["rows_read"] == 4


def test_header_only_file_has_no_rows(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text(SMALL_HEADER + "\n")
    schema = _schema(tmp_path, SMALL_YAML)
    assert list(TabularSource(path, schema, file_format="csv").parts()) == []
    with pytest.raises(BadDataError, match="no usable rows: 0 read"):
        _prepare(path, schema, tmp_path / "out")


def test_time_split_puts_latest_rows_in_test(tmp_path: Path) -> None:
    frame = _raw_frame(300)  # timestamps are shuffled, so file order is not time order
    _prepare(_write_csv(frame, tmp_path / "in.csv"), _schema(tmp_path), tmp_path / "out",
             split="time", valid_fraction=0.1, test_fraction=0.2)
    train, valid, test = (_split(tmp_path / "out", s) for s in ("train", "valid", "test"))
    assert train["ts"].max() < valid["ts"].min() and valid["ts"].max() < test["ts"].min()
    assert test["ts"].to_list() and set(test["ts"]) == set(sorted(frame["ts"])[-test.height:])
    assert 50 <= test.height <= 70


def test_cli_prepares_the_shipped_example(tmp_path: Path) -> None:
    out = tmp_path / "o"
    command = [sys.executable, "-m", "recsys.cli.main", "data", "prepare", "--format", "csv",
               "--input", "data/examples/clicks.csv", "--schema", "data/examples/clicks.schema.yaml", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    schema = json.loads((out / "schema.json").read_text())
    stats = json.loads((out / "stats.json").read_text())
    example_rows = len((REPO / "data/examples/clicks.csv").read_text().splitlines()) - 1
    assert stats["rows_read"] == stats["rows_written"] == example_rows and stats["bad_rows"] == 0
    tables = {t["name"]: t for t in schema["tables"]}
    assert tables["user_hash"]["cardinality"] == 1024
    assert tables["tags"]["cardinality"] == stats["vocab_sizes"]["tags"] + 1 > 5
    assert [f["name"] for f in schema["sparse"]] == ["user_id", "item_id", "tags"]
    assert schema["dense"][0]["std"] > 0
