"""The command line explains itself and fails in one line."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), ["data"]),
        (("data",), ["synth", "prepare", "summary"]),
        (("data", "synth"), ["--kind", "--rows", "--out", "--seed", "Bayes"]),
        (("data", "prepare"), ["--format", "--input", "--schema", "--split", "--max-bad-fraction"]),
        (("data", "summary"), ["data_dir", "prepared data directory"]),
    ],
)
def test_help_explains_every_command(args: tuple[str, ...], expected: list[str]) -> None:
    result = run_cli(*args, "--help")
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout


def test_summary_of_a_non_data_dir_is_one_line(tmp_path) -> None:
    result = run_cli("data", "summary", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "not a prepared data directory" in result.stderr


def test_bad_schema_file_is_one_line(tmp_path) -> None:
    schema = tmp_path / "s.yaml"
    schema.write_text("sparse:\n  - {name: a, entity: planet}\nlabels: [{name: y}]\n")
    result = run_cli("data", "prepare", "--format", "csv", "--input", str(tmp_path), "--schema", str(schema), "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "sparse[0]('a').entity" in result.stderr.replace("\n", "")
