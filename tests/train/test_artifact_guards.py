"""Whatever is wrong with an artifact is one line naming the file: non-finite or mismatched weights, files that
are binary, changed or unreachable. Non-finite weights are never exported, and the version names the weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from recsys import artifact
from recsys.errors import RecsysError
from tests.artifacts import edit_weights, unsealed_copy
from tests.conftest import run_cli, train_cli

TABLE = "sparse_arch.ebc.embedding_bags.C1.weight"


@pytest.fixture(scope="module")
def exported(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "run"
    result = train_cli(small_ctr, out, "trainer.batch_size=256", "trainer.max_steps=6")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "artifact"


def nan_weights(state: dict[str, torch.Tensor]) -> None:
    state[TABLE][3, 1] = float("nan")


def fewer_rows(state: dict[str, torch.Tensor]) -> None:
    state[TABLE] = state[TABLE][:-1].clone()


@pytest.mark.parametrize(("edit", "expected"), [
    (nan_weights, f"weights '{TABLE}' hold NaN or infinite values"),
    (fewer_rows, f"'{TABLE}' has shape"),
])
def test_report_on_bad_weights_is_one_line(exported: Path, tmp_path: Path, edit: Callable[..., None],
                                           expected: str) -> None:
    bad = unsealed_copy(exported, tmp_path / "bad")
    edit_weights(bad, edit)
    result = run_cli("report", "--artifact", str(bad), "--out", str(tmp_path / "report.html"))
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad / "weights.safetensors") in lines[0] and expected in lines[0], result.stderr
    assert not (tmp_path / "report.html").exists()


def test_export_refuses_non_finite_weights(exported: Path, tmp_path: Path) -> None:
    loaded = artifact.load(exported)
    state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    state[TABLE][0, 0] = float("inf")
    out = tmp_path / "artifact"
    with pytest.raises(RecsysError, match=f"weights '{TABLE}' hold NaN or infinite values"):
        artifact.save(out, model_name="dlrm", state=state, schema=loaded.schema, config=loaded.config,
                      metrics=loaded.metrics, data_dir=tmp_path)
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


def test_version_names_the_weights(exported: Path, tmp_path: Path) -> None:
    digest = hashlib.sha256((exported / "weights.safetensors").read_bytes()).hexdigest()
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["version"].endswith(f"-{digest[:12]}") and manifest["sha256"]["weights.safetensors"] == digest
    assert artifact.load(exported).version == manifest["version"]
    older = unsealed_copy(exported, tmp_path / "older")
    assert artifact.load(older).version == manifest["version"]  # the digest is appended only when missing
    older_manifest = json.loads((older / "manifest.json").read_text())
    older_manifest["version"] = older_manifest["version"].rsplit("-", 1)[0]  # as earlier versions wrote it
    (older / "manifest.json").write_text(json.dumps(older_manifest))
    assert artifact.load(older).version == manifest["version"]
    edit_weights(older, lambda state: state[TABLE].mul_(0.5))
    changed = artifact.load(older).version
    assert changed != manifest["version"] and changed.startswith(older_manifest["version"])


def _binary(path: Path) -> None:
    path.write_bytes(bytes(range(256)) * 4)


@pytest.mark.parametrize(("name", "damage", "expected"), [
    ("schema.json", _binary, "not valid text: not UTF-8"),
    ("config.yaml", _binary, "unreadable config"),
    ("manifest.json", _binary, "not valid JSON"),
    ("metrics.json", lambda p: p.write_text("[" * 100_000), "not valid JSON"),
    ("schema.json", lambda p: p.write_text("[" * 100_000), "not valid JSON"),
    ("config.yaml", lambda p: p.write_text("- " * 5_000), "config"),
    ("weights.safetensors", lambda p: (p.unlink(), p.mkdir()), r"unreadable \(Is a directory\)"),
    ("weights.safetensors", lambda p: p.write_bytes(b"\xff" * 8 + b"{}"), "unreadable weights"),
])
def test_unreadable_files_are_one_line(exported: Path, tmp_path: Path, name: str, damage: Callable[[Path], None],
                                       expected: str) -> None:
    bad = unsealed_copy(exported, tmp_path / "bad")
    damage(bad / name)
    with pytest.raises(RecsysError, match=expected) as error:
        artifact.load(bad)
    assert str(bad / name) in str(error.value) and "\n" not in str(error.value)


def test_unusable_paths_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="not a usable artifact path .File name too long") as error:
        artifact.load(tmp_path / ("a" * 300))
    assert len(str(error.value)) < 400
    with pytest.raises(RecsysError, match="artifact directory not found"):
        artifact.load("nowhere\0else")
