"""Online/offline parity: every dense transform and sparse feature kind, through real ``prepare`` and through the
serving encoder (``RawEncoder``), on edge inputs. The two must give bit-equal model inputs and refuse the same rows.

Each row carries one edge value in one feature and ordinary values elsewhere, so a row prepare quarantines names
the value at fault. The encoder gets each value as a request would send it (a JSON value: None for a missing
cell, a Python float for a Float64 cell, a list for a list cell) and refuses a row when any value raises.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from recsys.data.formats.tabular import TabularSource
from recsys.data.layout import QUARANTINE_FILE, split_files
from recsys.data.pipeline import PrepareOptions, run
from recsys.errors import RecsysError
from recsys.schema import Schema
from services.feature_store.encode import RawEncoder

SCHEMA_YAML = """
task: ctr
user_key: {name: row}
item_key: {name: item}
dense:
  - {name: d_none, entity: context, transform: none, clip_min: null}
  - {name: d_log, entity: context, transform: log1p}
  - {name: d_log_neg, entity: context, transform: log1p, clip_min: null}
  - {name: d_std, entity: context, transform: standardize, clip_min: null, fill_value: -2.5}
  - {name: d_logstd, entity: context}
  - {name: d_bool, entity: context, transform: none}
sparse:
  - {name: c_vocab, entity: context}
  - {name: c_hash, entity: context}
  - {name: c_id, entity: context}
  - {name: c_vocab_f, entity: context}
  - {name: c_id_f, entity: context}
  - {name: m_vocab, entity: context, table: c_vocab, separator: "|"}
  - {name: m_hash, entity: context, table: c_hash, separator: "|"}
  - {name: m_id, entity: context, table: c_id, separator: "|"}
  - {name: m_list, entity: context, table: c_vocab, separator: "|"}
sequences:
  - {name: hist, entity: user, table: c_vocab, max_length: 3, separator: "|"}
tables:
  - {name: c_vocab, min_count: 2}
  - {name: c_hash, encoding: hash, hash_buckets: 64}
  - {name: c_id, encoding: identity, cardinality: 10}
  - {name: c_vocab_f}
  - {name: c_id_f, encoding: identity, cardinality: 10}
labels:
  - {name: click}
"""

DTYPES: dict[str, pl.DataType] = {
    **{name: pl.Float64() for name in ("d_none", "d_log", "d_log_neg", "d_std", "d_logstd", "c_vocab_f", "c_id_f")},
    "d_bool": pl.Boolean(),
    **{name: pl.String() for name in ("c_vocab", "c_hash", "c_id", "m_vocab", "m_hash", "m_id", "hist")},
    "m_list": pl.List(pl.String),
}
DENSE = ("d_none", "d_log", "d_log_neg", "d_std", "d_logstd", "d_bool")
SPARSE = ("c_vocab", "c_hash", "c_id", "c_vocab_f", "c_id_f", "m_vocab", "m_hash", "m_id", "m_list", "hist")

NUMBERS = [None, 0.0, -0.0, 3.0, 2.5, -0.5, -1.0, -2.0, 1e300, -1e300, 3.4e38, 1e39, 5e-324, 123456789.123,
           math.nan, math.inf, -math.inf]
EDGES: dict[str, list[Any]] = {
    **{name: NUMBERS for name in DENSE if name != "d_bool"},
    "d_bool": [None, True, False],
    "c_vocab": [None, "", "  ", " a ", "\ta\n", "A", "rare", "3", "3.0", "zzz-unseen", "a|b", "\u00a0b\u3000"],
    "c_hash": [None, "", " ", " h1 ", "h1", "3.0", "unseen"],
    "c_id": [None, "", " ", "3", " 7 ", "3.0", "-1", "10", "abc", "99999999999999999999", "+5", "1_0", "0x1",
             "007"],
    "c_vocab_f": [None, 3.0, 2.5, -0.0, -4.0, 1e20, 1e-7, math.nan, math.inf],
    "c_id_f": [None, 4.0, 9.0, 12.0, -1.0, 3.5, 1e20, math.nan, math.inf],
    "m_vocab": [None, "", "|", " ", " a | b ", "a||b", "a|rare|zzz", "a| |b", "3.0|3", "a|a"],
    "m_hash": [None, "", "||", " h1 ", "h1| |x"],
    "m_id": [None, "", "|", "1||2", " 1 | 2 ", "1|x", "1|3.0", "1|-1|11", "9|99999999999999999999"],
    "m_list": [None, [], [None], ["", " a "], ["a", None, "b"], [" "], ["a|b"]],
    "hist": [None, "", "a|b|c|a|b", " a |  | b", "||"],
}
ORDINARY: list[dict[str, Any]] = [
    {"d_none": 1.5 * k, "d_log": float(k), "d_log_neg": k - 0.5, "d_std": -3.0 * k, "d_logstd": 10.0 * k,
     "d_bool": k % 2 == 0, "c_vocab": "ab3"[k % 3], "c_hash": f"h{k % 4}", "c_id": str(k % 10),
     "c_vocab_f": [3.0, 2.5, 0.0, -4.0][k % 4], "c_id_f": float(k % 10), "m_vocab": "a|b", "m_hash": "h1|x",
     "m_id": "1|2", "m_list": ["a", "b"], "hist": "b|a"}
    for k in range(24)
]


def _rows() -> list[dict[str, Any]]:
    rows = [dict(r) for r in ORDINARY]
    for feature, values in EDGES.items():
        rows += [{**ORDINARY[0], feature: value} for value in values]
    for i, row in enumerate(rows):
        row.update(row=f"r{i}", item="i", click=float(i % 2))
    return rows


def _encode(encoder: RawEncoder, schema: Schema, row: dict[str, Any]) -> dict[str, Any] | str:
    """The encoder's model inputs for a row, or the reason it refuses it."""
    out: dict[str, Any] = {}
    max_length = {f.name: f.max_length for f in schema.sequences}
    try:
        for name in DENSE:
            out[name] = encoder.dense(name, row[name])
        for name in SPARSE:
            ids = encoder.sparse(name, row[name])
            out[name] = ids[: max_length[name]] if name in max_length else ids
    except (RecsysError, OverflowError, ValueError, TypeError) as exc:  # what the service answers 422 for
        return str(exc)
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp = tmp_path_factory.mktemp("parity")
    (tmp / "schema.yaml").write_text(SCHEMA_YAML)
    rows = _rows()
    columns = [*DTYPES, "row", "item", "click"]
    frame = pl.DataFrame([{c: r[c] for c in columns} for r in rows],
                         schema={**DTYPES, "row": pl.String(), "item": pl.String(), "click": pl.Float64()})
    frame.write_parquet(tmp / "raw.parquet")
    source = TabularSource(tmp / "raw.parquet", Schema.load(tmp / "schema.yaml"), "parquet")
    run(source, tmp / "out", PrepareOptions(valid_fraction=0.0, test_fraction=0.0, max_bad_fraction=1.0))
    return tmp / "out", rows


def test_prepare_and_the_encoder_agree_bit_for_bit(prepared: tuple[Path, list[dict[str, Any]]]) -> None:
    out, rows = prepared
    schema = Schema.load(out)
    encoder = RawEncoder(schema, out)
    written = {r["row"]: r for r in pl.read_parquet(split_files(out, "train")).iter_rows(named=True)}
    quarantine = {json.loads(line)["line"]: json.loads(line)["reason"]
                  for line in (out / QUARANTINE_FILE).read_text().splitlines()}
    disagreements = []
    for i, row in enumerate(rows):
        online = _encode(encoder, schema, row)
        offline = written.get(row["row"])
        edge = {k: row[k] for k in (*DENSE, *SPARSE) if repr(row[k]) != repr(ORDINARY[0][k])}
        if offline is None or isinstance(online, str):
            if not (offline is None and isinstance(online, str)):
                why = quarantine.get(i + 1, "kept") if offline is None else "kept"
                disagreements.append(f"row {i} {edge if i >= len(ORDINARY) else ''}: prepare {why!r}, "
                                     f"encoder {online if isinstance(online, str) else 'accepts'}")
            continue
        for name in DENSE:
            if np.float32(online[name]).view(np.uint32) != np.float32(offline[name]).view(np.uint32):
                disagreements.append(f"row {i} {name}={row[name]!r}: prepare {offline[name]!r}, "
                                     f"encoder {online[name]!r}")
        for name in SPARSE:
            stored = offline[name] if isinstance(offline[name], list) else [offline[name]]
            if online[name].tolist() != stored:
                disagreements.append(f"row {i} {name}={row[name]!r}: prepare {stored}, encoder {online[name].tolist()}")
    assert not disagreements, "\n".join(disagreements)
    # The edges did reach both sides: some rows are refused, and the kept ones cover OOV and real indices.
    assert 10 < len(written) < len(rows)
    assert {v for r in written.values() for v in (r["m_vocab"] or [])} >= {0, 1}


def test_a_missing_context_feature_is_encoded_like_a_missing_cell(
        prepared: tuple[Path, list[dict[str, Any]]]) -> None:
    """The service's default for a context feature left out of a request is the encoder's value for None."""
    from services.ranking.features import FeatureLayout

    out, _ = prepared
    schema = Schema.load(out)
    encoder = RawEncoder(schema, out)
    layout = FeatureLayout(schema, encoder, None)
    default = layout.encode_context({})
    for name, ids in zip(layout.context_keys, default.ids, strict=True):
        assert ids.tolist() == encoder.sparse(name, None).tolist(), name
    for value, feature in zip(default.dense, layout.context_dense, strict=True):
        assert np.float32(value) == np.float32(encoder.dense(feature.name, None)), feature.name


def test_preload_reads_the_vocabularies_up_front(prepared: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    """The service preloads its context vocabularies: a request never reads one (a missing value needs none)."""
    out, _ = prepared
    copy = tmp_path / "prepared"
    shutil.copytree(out, copy)
    schema = Schema.load(copy)
    encoder = RawEncoder(schema, copy)
    encoder.preload(["c_vocab", "c_hash", "c_id"])
    (copy / schema.table("c_vocab").vocab_file).unlink()  # type: ignore[operator]
    assert encoder.sparse("c_vocab", "a").tolist() != [0]
    with pytest.raises(RecsysError, match="unreadable"):
        RawEncoder(schema, copy).preload(["m_vocab"])  # the same table, not read yet


def test_integer_text_is_read_as_polars_reads_it() -> None:
    """The encoder parses identity ids without polars; these are the spellings where a parser could differ."""
    from services.feature_store.encode import _parse_int

    texts = ["+5", "-0", "007", "\u0663", "1 ", "", "-", "+", "1_0", "0x1", "1e3", "\uff11\uff12", "--1",
             "9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809"]
    assert [_parse_int(t) for t in texts] == pl.Series(texts).cast(pl.Int64, strict=False).to_list()
