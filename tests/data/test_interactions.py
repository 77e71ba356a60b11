"""``prepare --format interactions`` (LightGCN/BARS user-item lists) and the leave-one-out split.

A small layout is written by hand, with malformed lines, and decoded back through the vocabularies;
the real Gowalla files are read when ../shared/datasets has them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from recsys.data.formats.interactions import InteractionsSource
from recsys.data.layout import split_protocol
from recsys.data.pipeline import PrepareOptions, RawPart, run
from recsys.errors import BadDataError, RecsysError
from recsys.schema import Column, Encoding, Entity, Schema, SparseFeature, Table, Task
from tests.conftest import run_cli, shared_dataset

SPLITS = ("train", "valid", "test")
TRAIN = [  # (line text, reason when malformed); ids separated by any whitespace
    ("0 10 11 12", None),
    ("1\t12  13", None),
    ("2 10 x 11", "id 'x' is not an integer"),
    ("", "empty line"),
    ("3 11 12 13 10", None),
    ("4", None),  # a user with no item: no interaction, no error
    ("5 -7 10", "a negative id"),
    ("  6 007 10  ", None),  # "007" is item 7
]
TEST = [("0 13", None), ("1 10 11", None), ("3 99", None), ("7 12", None), ("   ", "empty line")]


def _write(folder: Path) -> Path:
    folder.mkdir()
    (folder / "train.txt").write_text("\n".join(text for text, _ in TRAIN) + "\n")
    (folder / "test.txt").write_text("\n".join(text for text, _ in TEST))  # no final newline
    return folder


def _pairs(lines: list[tuple[str, str | None]]) -> list[tuple[str, str]]:
    out = []
    for text, reason in lines:
        ids = text.split()
        if reason is None:
            out += [(str(int(ids[0])), str(int(item))) for item in ids[1:]]
    return out


def _decoded(out: Path) -> dict[str, list[tuple[str, str]]]:
    """Each split's (user_key, item_key) rows, checked against their vocabulary-encoded ids."""
    vocab = {name: dict(pl.read_parquet(out / "vocab" / f"{name}.parquet").select("index", "value").iter_rows())
             for name in ("user_id", "item_id")}
    result = {}
    for split in SPLITS:
        files = sorted((out / split).glob("*.parquet"))
        if not files:
            result[split] = []
            continue
        frame = pl.read_parquet(files)
        for key, feature in (("user_key", "user_id"), ("item_key", "item_id")):
            decoded = [vocab[feature].get(index, "<oov>") for index in frame[feature]]
            known = [k if k in vocab[feature].values() else "<oov>" for k in frame[key]]
            assert decoded == known, (split, feature)
        result[split] = list(frame.select("user_key", "item_key").iter_rows())
    return result


def test_given_split_is_kept_and_bad_lines_quarantined(tmp_path: Path) -> None:
    data = _write(tmp_path / "lists")
    result = run(InteractionsSource(data), tmp_path / "out",
                 PrepareOptions(split="given", valid_fraction=0.0, max_bad_fraction=0.5))
    rows = _decoded(tmp_path / "out")
    assert rows["train"] == _pairs(TRAIN) and rows["valid"] == [] and rows["test"] == _pairs(TEST)
    assert ("6", "7") in rows["train"]
    stats = result.stats
    bad = [(i + 1, reason) for i, (_, reason) in enumerate(TRAIN) if reason] + \
          [(i + 1, reason) for i, (_, reason) in enumerate(TEST) if reason]
    assert stats["bad_rows"] == len(bad)
    assert stats["rows_read"] == len(_pairs(TRAIN)) + len(_pairs(TEST)) + len(bad)
    assert stats["protocol"]["split"] == "given" and stats["protocol"]["valid"].startswith("none")
    assert split_protocol(stats) == "given train/test split (no valid split)"
    records = [json.loads(line) for line in (tmp_path / "out" / "quarantine" / "bad_rows.jsonl").read_text().splitlines()]
    assert [(Path(r["source"]).name, r["line"], r["reason"]) for r in records] == \
        [("train.txt", line, reason) for line, reason in bad[:3]] + [("test.txt", bad[3][0], bad[3][1])]
    assert records[0]["raw"] == "2 10 x 11"
    # Item 99 and user 7 are only in test: they share the vocabularies' row 0.
    assert result.schema.table("item_id").cardinality == len({i for _, i in _pairs(TRAIN)}) + 1
    assert result.schema.task is Task.IMPLICIT and result.schema.features_of(Entity.ITEM) == ["item_id"]


def test_valid_is_drawn_from_train_by_seed(tmp_path: Path) -> None:
    data = _write(tmp_path / "lists")
    splits = {}
    for seed in (0, 1):
        run(InteractionsSource(data), tmp_path / f"out{seed}",
            PrepareOptions(split="given", valid_fraction=0.5, seed=seed, max_bad_fraction=0.5))
        rows = _decoded(tmp_path / f"out{seed}")
        assert sorted(rows["train"] + rows["valid"]) == sorted(_pairs(TRAIN))
        assert rows["test"] == _pairs(TEST)
        splits[seed] = rows["valid"]
        stats = json.loads((tmp_path / f"out{seed}" / "stats.json").read_text())
        assert split_protocol(stats) == f"given train/test split (valid: 50% of the train rows, seed {seed})"
    assert splits[0] and splits[1] and splits[0] != splits[1]


def test_too_many_bad_lines_write_nothing(tmp_path: Path) -> None:
    data = _write(tmp_path / "lists")
    with pytest.raises(BadDataError, match="train.txt:3: id 'x' is not an integer"):
        run(InteractionsSource(data), tmp_path / "out", PrepareOptions(split="given"))
    assert not (tmp_path / "out").exists()


def test_folder_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="not a folder"):
        InteractionsSource(tmp_path / "nothing")
    (tmp_path / "train.txt").write_text("0 1\n")
    with pytest.raises(RecsysError, match="no test.txt"):
        InteractionsSource(tmp_path)
    with pytest.raises(RecsysError, match="--split given needs an input"):
        run(_Rows(pl.DataFrame({"user_key": ["a"], "item_key": ["b"], "timestamp": [1]})), tmp_path / "out",
            PrepareOptions(split="given"))


def test_cli_defaults_to_the_given_split(tmp_path: Path) -> None:
    data = _write(tmp_path / "lists")
    result = run_cli("data", "prepare", "--format", "interactions", "--input", str(data), "--out",
                     str(tmp_path / "out"), "--max-bad-fraction", "0.5", "--valid-fraction", "0")
    assert result.returncode == 0, result.stderr
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["split"] == "given"
    assert stats["splits"]["test"]["rows"] == len(_pairs(TEST))


def test_gowalla(tmp_path: Path) -> None:
    """The LightGCN copy of Gowalla: 29,858 users, 40,981 items, 810,128 train and 217,242 test interactions
    (counted from the files: every user and item of test is also in train)."""
    data = shared_dataset("gowalla")
    result = run(InteractionsSource(data), tmp_path / "gowalla", PrepareOptions(split="given", valid_fraction=0.0))
    stats = result.stats
    assert stats["bad_rows"] == 0
    assert {split: counts["rows"] for split, counts in stats["splits"].items()} == \
        {"train": 810_128, "valid": 0, "test": 217_242}
    assert stats["vocab_sizes"] == {"user_id": 29_858, "item_id": 40_981}
    test = pl.read_parquet(sorted((tmp_path / "gowalla" / "test").glob("*.parquet")))
    assert test["user_key"].n_unique() == 29_858 and test["item_id"].min() > 0  # no test item is out of vocabulary


# ---- leave one out ----------------------------------------------------------------------------------

class _Rows:
    """A source of given raw rows (user_key, item_key, timestamp), as one part."""

    def __init__(self, rows: pl.DataFrame, timestamp: bool = True) -> None:
        sparse = [SparseFeature(name="item_id", entity=Entity.ITEM, source="item_key")]
        self.schema = Schema(task=Task.IMPLICIT, sparse=sparse,
                             tables=[Table(name="item_id", encoding=Encoding.VOCAB)],
                             user_key=Column(name="user_key"), item_key=Column(name="item_key"),
                             timestamp=Column(name="timestamp") if timestamp else None)
        self.rows = rows.with_columns(pl.col("item_key").alias("item_id"))
        if not timestamp:
            self.rows = self.rows.drop("timestamp")

    def parts(self) -> Iterator[RawPart]:
        yield RawPart(rows=self.rows)


LOO_ROWS = pl.DataFrame([  # user, item, timestamp in file order
    ("a", "1", 30), ("a", "2", 10), ("a", "3", 20), ("a", "4", 40),  # newest 4 (40) → test, 1 (30) → valid
    ("b", "1", 5), ("b", "2", 5), ("b", "3", 5),  # a tie: file order decides, 3 → test, 2 → valid
    ("c", "1", 1), ("c", "2", 2),  # two interactions: both stay in train
    ("d", "9", 7),
], schema=["user_key", "item_key", "timestamp"], orient="row")


def _split_of(out: Path) -> dict[tuple[str, str], str]:
    return {(user, item): split for split in SPLITS for files in [sorted((out / split).glob("*.parquet"))] if files
            for user, item in pl.read_parquet(files).select("user_key", "item_key").iter_rows()}


def test_leave_one_out_by_timestamp_then_file_order(tmp_path: Path) -> None:
    result = run(_Rows(LOO_ROWS), tmp_path / "out", PrepareOptions(split="loo"))
    assert _split_of(tmp_path / "out") == {
        ("a", "1"): "valid", ("a", "2"): "train", ("a", "3"): "train", ("a", "4"): "test",
        ("b", "1"): "train", ("b", "2"): "valid", ("b", "3"): "test",
        ("c", "1"): "train", ("c", "2"): "train", ("d", "9"): "train",
    }
    assert result.stats["protocol"] == {**result.stats["protocol"], "split": "loo", "order": "timestamp",
                                        "min_interactions": 3, "held_out_users": 2}
    assert split_protocol(result.stats).startswith("leave-one-out split by timestamp")
    # Without a timestamp the file order is the time order: a's last rows are 3 (valid) and 4 (test).
    run(_Rows(LOO_ROWS, timestamp=False), tmp_path / "plain", PrepareOptions(split="loo"))
    split = _split_of(tmp_path / "plain")
    assert (split[("a", "4")], split[("a", "3")], split[("a", "1")]) == ("test", "valid", "train")


def _check_held_out(out: Path, strict: bool) -> int:
    """Per user with 3+ rows: one test row, one valid row, test newest, valid next (strictly, when timestamps are
    distinct per user); fewer: all train. Returns the users held out."""
    frames = [pl.read_parquet(sorted((out / split).glob("*.parquet"))).select("user_key", "timestamp")
              .with_columns(pl.lit(split).alias("split")) for split in SPLITS]
    per_user = pl.concat(frames).group_by("user_key").agg(
        pl.len().alias("n"), *((pl.col("split") == split).sum().alias(split) for split in ("test", "valid")),
        *(pl.col("timestamp").filter(pl.col("split") == split).max().alias(f"{split}_time") for split in SPLITS),
    )
    held = per_user.filter(pl.col("n") >= 3)
    assert (held["test"] == 1).all() and (held["valid"] == 1).all()
    if strict:
        assert (held["test_time"] > held["valid_time"]).all() and (held["valid_time"] > held["train_time"]).all()
    else:
        assert (held["test_time"] >= held["valid_time"]).all() and (held["valid_time"] >= held["train_time"]).all()
    small = per_user.filter(pl.col("n") < 3)
    assert (small["test"] == 0).all() and (small["valid"] == 0).all()
    return held.height


def test_synthetic_implicit_leave_one_out_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "imp"
    result = run_cli("data", "synth", "--kind", "implicit", "--rows", "3000", "--split", "loo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert _check_held_out(out, strict=True) > 0


def test_movielens_implicit_leave_one_out(tmp_path: Path) -> None:
    from recsys.data.formats.movielens import MovieLensSource

    data = shared_dataset("movielens/ml-latest-small")
    result = run(MovieLensSource(data, task="implicit"), tmp_path / "ml", PrepareOptions(split="loo"))
    # Ratings entered together share a timestamp: ties are broken by file order, so not strictly newer.
    assert _check_held_out(tmp_path / "ml", strict=False) == result.stats["protocol"]["held_out_users"] == 608
