"""User-item lists with a given train/test split: the layout of LightGCN's and the BARS matching benchmarks' data.

A folder with ``train.txt`` and ``test.txt`` (plain or gzip), one line per user: the user's integer id,
then the integer ids of the items it interacted with, separated by any whitespace::

    0 0 1 2 3 4
    1 10 11 7

(Gowalla, Yelp2018 and Amazon-Book as LightGCN ships them.) Each (user, item) pair on a line is one
interaction row of an ``implicit`` data set: ``user_key``/``item_key`` the ids as written (as integers:
"007" is "7"), and ``user_id``/``item_id`` the same ids for vocabulary tables (every id seen in train gets
a row; an id only in test shares row 0).

The split is the files' (``--split given``, this format's default): test.txt rows are test, train.txt rows
are train, except the ``--valid-fraction`` of them drawn for valid by a seeded uniform number per row
(``0``: no valid rows, train.txt kept whole, the protocol of the LightGCN paper and BARS). Other splits
(``random``, ``time`` and ``loo``, by file order: the files have no timestamps) ignore the files' split.

A malformed line (undecodable bytes, empty, an id that is not a non-negative integer, a field over
``--max-field-bytes``) is quarantined whole, with its file and line number; it counts as one bad row
against ``--max-bad-fraction``, where a good line counts its interactions. A user with no items on its
line has no interaction there and is not an error.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path

import polars as pl

from recsys.data.lines import iter_line_chunks
from recsys.data.pipeline import GIVEN_SPLIT, MAX_FIELD_BYTES, RawPart, bad_rows, too_long
from recsys.errors import RecsysError
from recsys.schema import Column, Encoding, Entity, Schema, SparseFeature, Table, Task

FILES = {"train.txt": 0, "test.txt": 2}  # file → its split code (pipeline: 0 train, 1 valid, 2 test)
COLUMNS = ["user_key", "item_key", "user_id", "item_id"]
EMBEDDING_DIM = 64  # LightGCN's and BARS's setting on these data sets


def default_schema(embedding_dim: int = EMBEDDING_DIM) -> Schema:
    """User and item ids only: what the layout holds."""
    sparse = [SparseFeature(name="user_id", entity=Entity.USER), SparseFeature(name="item_id", entity=Entity.ITEM)]
    return Schema(
        task=Task.IMPLICIT,
        sparse=sparse,
        tables=[Table(name=f.name, encoding=Encoding.VOCAB, embedding_dim=embedding_dim, min_count=1) for f in sparse],
        user_key=Column(name="user_key"),
        item_key=Column(name="item_key"),
        default_embedding_dim=embedding_dim,
    )


class InteractionsSource:
    """The interactions of ``DIR/train.txt`` then ``DIR/test.txt``, each row tagged with its file's split."""

    def __init__(self, path: str | Path, schema: Schema | None = None,
                 max_field_bytes: int = MAX_FIELD_BYTES) -> None:
        if max_field_bytes < 1:
            raise RecsysError(f"--max-field-bytes must be at least 1, got {max_field_bytes}")
        path = Path(path)
        if not path.is_dir():
            raise RecsysError(f"{path}: not a folder (expected one with {' and '.join(FILES)})")
        missing = [name for name in FILES if not (path / name).is_file()]
        if missing:
            raise RecsysError(f"{path}: no {missing[0]} (an interactions folder has {' and '.join(FILES)})")
        self.path, self.max_field_bytes = path, max_field_bytes
        self.schema = schema if schema is not None else default_schema()
        if self.schema.task is not Task.IMPLICIT:
            raise RecsysError(f"schema task is '{self.schema.task.value}'; interactions are 'implicit'")
        unknown = [c for c in self.schema.columns if c not in COLUMNS]
        if unknown:
            raise RecsysError(f"schema column '{unknown[0]}' is not in an interactions folder "
                              f"(available: {', '.join(COLUMNS)})")

    def parts(self) -> Iterator[RawPart]:
        for name in FILES:
            yield from self.file_parts(name)

    def tasks(self) -> list[Callable[[], Iterator[RawPart]]]:
        """One independent piece of parsing per file (``--engine ray`` runs them in parallel)."""
        return [functools.partial(self.file_parts, name) for name in FILES]

    def file_parts(self, name: str) -> Iterator[RawPart]:
        for chunk in iter_line_chunks(self.path / name):
            yield parse_lines(chunk.frame, chunk.source, FILES[name], self.max_field_bytes)


def parse_lines(lines: pl.DataFrame, source: str, split: int, max_field_bytes: int = MAX_FIELD_BYTES) -> RawPart:
    """Lines (line, text, undecodable) → one row per (user, item) pair, and the malformed lines."""
    tokens = pl.col("tokens")
    ids = tokens.list.eval(pl.element().cast(pl.Int64, strict=False))
    not_integer = ids.list.eval(pl.element().is_null())
    token_bytes = tokens.list.eval(pl.element().str.len_bytes()).list.max()
    checks: list[tuple[pl.Expr, str | pl.Expr]] = [
        (pl.col("undecodable"), "undecodable bytes (not UTF-8)"),
        (tokens.list.len() == 0, "empty line"),
        (token_bytes > max_field_bytes, too_long("an id", token_bytes, max_field_bytes)),
        (not_integer.list.any(), pl.concat_str(pl.lit("id '"), tokens.list.get(not_integer.list.arg_max()),
                                               pl.lit("' is not an integer"))),
        (ids.list.min() < 0, "a negative id"),
    ]
    reason: pl.Expr = pl.lit(None, pl.String)
    for condition, why in reversed(checks):
        reason = pl.when(condition.fill_null(False)).then(why if isinstance(why, pl.Expr) else pl.lit(why)) \
            .otherwise(reason)
    checked = lines.with_columns(pl.col("text").str.extract_all(r"\S+").alias("tokens")) \
        .with_columns(reason.alias("reason"))
    bad = checked.filter(pl.col("reason").is_not_null())
    good = checked.filter(pl.col("reason").is_null()).select(ids.alias("ids"))
    pairs = good.select(pl.col("ids").list.first().alias("user"), pl.col("ids").list.slice(1).alias("item")) \
        .explode("item").drop_nulls("item")  # a user alone on its line has no interaction
    user, item = pl.col("user").cast(pl.String), pl.col("item").cast(pl.String)
    rows = pairs.select(user.alias("user_key"), item.alias("item_key"), user.alias("user_id"),
                        item.alias("item_id"), pl.lit(split, pl.Int8).alias(GIVEN_SPLIT))
    return RawPart(rows=rows, bad=bad_rows(source, bad["line"], bad["reason"], bad["text"]))
