"""``recsys report`` refuses a missing or corrupt artifact and a bad --bench with one line naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.errors import RecsysError
from tests.conftest import run_cli, train_cli


def _one_line(args: list[str], *expected: str) -> None:
    result = run_cli("report", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and all(e in lines[0] for e in expected), result.stderr


def test_missing_or_corrupt_artifact_is_one_line(tmp_path: Path) -> None:
    out = str(tmp_path / "report.html")
    _one_line(["--artifact", str(tmp_path / "absent"), "--out", out], str(tmp_path / "absent"),
              "artifact directory not found")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "manifest.json").write_text(json.dumps({"model": "dlrm"}))
    (corrupt / "metrics.json").write_text("{oops")
    _one_line(["--artifact", str(corrupt), "--out", out], str(corrupt / "metrics.json"), "not valid JSON")
    assert not (tmp_path / "report.html").exists()


def test_bad_bench_path_and_unreadable_results(tmp_path: Path) -> None:
    from recsys.report.context import load_bench

    with pytest.raises(RecsysError, match=r"^--bench .*nope: no such directory or results file$"):
        load_bench(tmp_path / "nope")
    (tmp_path / "bad.json").write_text("[1, 2")
    (tmp_path / "nan.json").write_text('{"runs": [{"p50_ms": NaN}]}')
    loaded = load_bench(tmp_path)
    assert loaded["bad.json"].error.startswith("not readable JSON") and loaded["nan.json"].data is not None


def test_an_out_that_cannot_be_written_is_one_line(small_ctr: Path, tmp_path: Path) -> None:
    trained = train_cli(small_ctr, tmp_path / "run", "trainer.max_steps=3")
    assert trained.returncode == 0, trained.stderr[-3000:]
    artifact = str(tmp_path / "run" / "artifact")
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder\n")
    _one_line(["--artifact", artifact, "--out", str(in_the_way / "report.html")], f"{in_the_way} is a file, not a folder")
    # Nothing can be created in /proc, even by root (chmod would not stop the root that runs the tests).
    _one_line(["--artifact", artifact, "--out", "/proc/recsys-report/report.html"], "/proc/recsys-report")
    _one_line(["--artifact", artifact, "--out", "/proc/recsys-report.html"], "/proc/recsys-report", "cannot write")
    assert in_the_way.read_text() == "not a folder\n"
