"""Criteo parsing through the whole prepare pipeline: quarantine, vocabularies, splits, atomic output."""

from __future__ import annotations

import gzip
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import pytest

from recsys.data.formats.criteo import CriteoSource
from recsys.data.layout import SPLITS
from recsys.data.pipeline import PrepareOptions, RawPart, run
from recsys.errors import BadDataError, RecsysError
from tests.conftest import run_cli, shared_dataset


def criteo_line(label: int, dense: list[str], cats: list[str]) -> str:
    return "\t".join([str(label), *dense, *cats])


def good_lines(n: int) -> list[str]:
    lines = []
    for i in range(n):
        dense = [str((i * (j + 3)) % 50) if (i + j) % 7 else "" for j in range(13)]
        cats = [f"{(i % (k + 2)) * 2654435761 % (1 << 32):08x}" if (i + k) % 11 else "" for k in range(26)]
        lines.append(criteo_line(int(i % 3 == 0), dense, cats))
    return lines


def bad_fixture(tmp_path: Path, n_good: int = 400) -> tuple[Path, dict[int, str]]:
    """A Criteo day file with bad rows injected at known 1-based line numbers."""
    lines = good_lines(n_good)
    injected = {
        5: ("\t".join(lines[4].split("\t")[:30]), "wrong field count: 30 (expected 40)"),
        17: ("\t".join([lines[16].split("\t")[0], "x1", *lines[16].split("\t")[2:]]), "non-numeric dense value in I1"),
        42: ("2" + lines[41][1:], "label is not 0 or 1"),
        100: ("", "wrong field count: 1 (expected 40)"),
    }
    for line_no, (text, _) in injected.items():
        lines[line_no - 1] = text
    data = ("\n".join(lines) + "\n").encode()
    # Undecodable bytes on line 60.
    raw_lines = data.split(b"\n")
    raw_lines[59] = raw_lines[59].replace(b"\t", b"\t\xff\xfe", 1)
    path = tmp_path / "day_0"
    path.write_bytes(b"\n".join(raw_lines))
    reasons = {k: v[1] for k, v in injected.items()} | {60: "undecodable bytes (not UTF-8)"}
    return path, reasons


def test_bad_rows_are_counted_and_quarantined_with_line_numbers(tmp_path: Path) -> None:
    path, reasons = bad_fixture(tmp_path)
    out = tmp_path / "out"
    result = run(CriteoSource(path), out, PrepareOptions(max_bad_fraction=0.05))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_read"] == 400 and stats["bad_rows"] == 5 and stats["rows_written"] == 395
    assert sum(stats["splits"][s]["rows"] for s in SPLITS) == 395
    records = [json.loads(line) for line in (out / "quarantine" / "bad_rows.jsonl").read_text().splitlines()]
    assert {r["line"]: r["reason"] for r in records} == reasons
    assert all(r["source"] == str(path) for r in records)
    assert records[0]["raw"].count("\t") == 29
    assert result.schema.unresolved() == []


def test_gzip_input_gives_the_same_output(tmp_path: Path) -> None:
    plain = tmp_path / "plain" / "day_0"
    plain.parent.mkdir()
    plain.write_text("\n".join(good_lines(300)) + "\n")
    packed = tmp_path / "packed" / "day_0.gz"
    packed.parent.mkdir()
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    run(CriteoSource(plain.parent), tmp_path / "a", PrepareOptions())
    run(CriteoSource(packed.parent), tmp_path / "b", PrepareOptions())
    for split in SPLITS:
        assert pl.read_parquet(tmp_path / "a" / split).equals(pl.read_parquet(tmp_path / "b" / split))


def test_day_files_are_read_in_time_order(tmp_path: Path) -> None:
    days = tmp_path / "days"
    days.mkdir()
    lines = good_lines(30)
    for day in (0, 2, 10):  # name order would put day_10 before day_2; only day_10 has clicks
        rows = [str(int(day == 10)) + line[1:] for line in lines[day:day + 10]]
        (days / f"day_{day}").write_text("\n".join(rows) + "\n")
    (days / "_SUCCESS").write_text("")
    assert [p.name for p in CriteoSource(days).files] == ["day_0", "day_2", "day_10"]
    out = tmp_path / "out"
    run(CriteoSource(days), out, PrepareOptions(split="time", valid_fraction=0.0, test_fraction=1 / 3))
    assert pl.read_parquet(out / "test")["label"].to_list() == [1.0] * 10
    assert pl.read_parquet(out / "train")["label"].sum() == 0


def test_vocabulary_threshold_and_transforms(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    path.write_text("\n".join(good_lines(600)) + "\n")
    out = tmp_path / "out"
    result = run(CriteoSource(path), out, PrepareOptions(valid_fraction=0.0, test_fraction=0.0))
    train = pl.read_parquet(out / "train")
    vocab = pl.read_parquet(out / "vocab" / "C5.parquet")
    assert vocab["count"].min() >= 2, "Criteo's default min_count is 2"
    assert vocab["index"].to_list() == list(range(1, vocab.height + 1))
    assert result.schema.table("C5").cardinality == vocab.height + 1
    assert train["C5"].min() >= 0 and train["C5"].max() <= vocab.height
    # Dense features are log1p-standardised on train: mean 0, std 1.
    assert abs(train["I3"].mean()) < 1e-5 and train["I3"].std() == pytest.approx(1.0, abs=1e-3)
    assert train["I3"].dtype == pl.Float32 and train["C5"].dtype == pl.Int64


def test_time_split_follows_file_order(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    path.write_text("\n".join(good_lines(1000)) + "\n")
    out = tmp_path / "out"
    run(CriteoSource(path), out, PrepareOptions(split="time", valid_fraction=0.1, test_fraction=0.2))
    stats = json.loads((out / "stats.json").read_text())
    assert [stats["splits"][s]["rows"] for s in SPLITS] == [700, 100, 200]


def test_over_the_bad_fraction_fails_and_writes_nothing(tmp_path: Path) -> None:
    path, _ = bad_fixture(tmp_path, n_good=100)  # 5 of 100 rows are bad
    out = tmp_path / "out"
    with pytest.raises(BadDataError, match=r"5 of 100 rows are malformed \(5.00%, above --max-bad-fraction 0.01\)"):
        run(CriteoSource(path), out, PrepareOptions())
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [".out.lock"]  # the lock stays
    kept = tmp_path / "out.bad_rows.jsonl"
    assert len(kept.read_text().splitlines()) == 5


def test_an_empty_input_is_an_error_not_an_empty_data_set(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    path.write_text("")
    with pytest.raises(BadDataError, match="no usable rows: 0 read, 0 malformed"):
        run(CriteoSource(path), tmp_path / "out", PrepareOptions())
    assert not (tmp_path / "out").exists()


class _FailingSource:
    """A real Criteo source that dies after its first part, like a job killed half way."""

    def __init__(self, path: Path) -> None:
        self.inner = CriteoSource(path)
        self.schema = self.inner.schema

    def parts(self) -> Iterator[RawPart]:
        for part in self.inner.parts():
            yield part
            raise OSError("disk went away")


def test_an_aborted_run_leaves_no_partial_output(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    path.write_text("\n".join(good_lines(200)) + "\n")
    out = tmp_path / "out"
    with pytest.raises(OSError, match="disk went away"):
        run(_FailingSource(path), out, PrepareOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "day_0"]
    # An existing data set survives a failed --overwrite untouched.
    run(CriteoSource(path), out, PrepareOptions())
    before = (out / "stats.json").read_text()
    with pytest.raises(OSError):
        run(_FailingSource(path), out, PrepareOptions(overwrite=True))
    assert (out / "stats.json").read_text() == before
    with pytest.raises(RecsysError, match="already exists"):
        run(CriteoSource(path), out, PrepareOptions())


def test_folders_of_killed_runs_are_cleaned_up(tmp_path: Path) -> None:
    path = tmp_path / "day_0"
    path.write_text("\n".join(good_lines(50)) + "\n")
    abandoned = tmp_path / ".out.tmp-999999999"  # no such process
    (abandoned / "_spool").mkdir(parents=True)
    exited = subprocess.Popen(["true"])
    exited.wait()  # reaped: its pid names no process now
    replaced = tmp_path / f".out.old-{exited.pid}"  # a run killed while deleting the data set it replaced
    (replaced / "train").mkdir(parents=True)
    (replaced / "train" / "part-00000.parquet").write_bytes(b"x" * 1000)
    run(CriteoSource(path), tmp_path / "out", PrepareOptions())
    assert not abandoned.exists() and not replaced.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "day_0", "out"]


def test_schema_column_that_criteo_lacks_is_named(tmp_path: Path) -> None:
    from recsys.data.formats.criteo import default_schema

    path = tmp_path / "day_0"
    path.write_text("\n".join(good_lines(10)) + "\n")
    data = default_schema().model_dump(mode="json")
    data["dense"][0]["name"] = "I99"
    from recsys.schema import Schema

    with pytest.raises(RecsysError, match="schema column 'I99' is not a Criteo field"):
        CriteoSource(path, Schema.model_validate(data))


def test_real_criteo_sample_with_header(tmp_path: Path) -> None:
    sample = shared_dataset("criteo-sample/criteo_sample.txt")
    out = tmp_path / "out"
    run(CriteoSource(sample), out, PrepareOptions())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows_read"] == 200 and stats["bad_rows"] == 0
    positives = sum(stats["splits"][s]["positive_rate"] * stats["splits"][s]["rows"] for s in SPLITS)
    assert round(positives) == 49


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    missing = run_cli("data", "prepare", "--format", "criteo", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 2
    assert "Traceback" not in missing.stderr
    assert f"{tmp_path / 'nope'}: input not found" in missing.stderr.replace("\n", "")
    unknown = run_cli("data", "prepare", "--format", "excel", "--input", "x", "--out", "y")
    assert unknown.returncode == 2 and "excel" in unknown.stderr


def test_cli_prepare_then_summary(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    made = run_cli("data", "synth", "--kind", "ctr", "--format", "criteo-tsv", "--rows", "3000", "--out", str(raw))
    assert made.returncode == 0, made.stderr
    prepared = run_cli("data", "prepare", "--format", "criteo", "--input", str(raw), "--out", str(tmp_path / "p"))
    assert prepared.returncode == 0, prepared.stderr
    summary = run_cli("data", "summary", str(tmp_path / "p"))
    assert summary.returncode == 0 and "train" in summary.stdout and "C26" in summary.stdout


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.text(alphabet=st.sampled_from("01\t -x.eé\x00ab"), max_size=60), max_size=25),
       positions=st.lists(st.integers(min_value=0, max_value=40), max_size=25))
def test_any_line_is_either_parsed_or_quarantined(tmp_path_factory, garbage: list[str], positions: list[int]) -> None:
    """Whatever the lines hold, parsing never crashes and every line is accounted for exactly once."""
    lines = good_lines(40)
    for text, at in zip(garbage, positions):
        lines.insert(at, text.replace("\n", ""))
    path = tmp_path_factory.mktemp("fuzz") / "day_0"
    path.write_text("\n".join(lines) + "\n")
    parts = list(CriteoSource(path).parts())
    good = sum(p.rows.height for p in parts)
    bad = pl.concat([p.bad for p in parts if p.bad is not None])
    assert good + bad.height == len(lines)
    assert good >= 40, "every well-formed line is kept"
    assert bad["line"].is_unique().all() and bad["reason"].null_count() == 0
    for row in bad.iter_rows(named=True):
        assert lines[row["line"] - 1] == row["raw"]
