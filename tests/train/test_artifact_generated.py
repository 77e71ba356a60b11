"""An artifact trained on a generated data set carries the generated features' lookup tables (``generated/``),
digested in the manifest as in the schema's recipes; loading reads and checks every one, and whatever is wrong
with one (changed, missing, malformed, outside generated/) is one line naming it."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from recsys import artifact
from recsys.errors import RecsysError
from recsys.features.recipes import Lookups
from recsys.schema import Schema
from services.ranking.served import ServedModel
from tests.generated import generated_run

LOOKUP = "generated/g_freq.parquet"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    return generated_run(tmp_path_factory.mktemp("generated-artifact"), rows=8_000, seed=4)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reseal(copy: Path) -> None:
    """Recompute every digest in the manifest: an artifact edited by someone who also edited its manifest."""
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["sha256"] = {name: _sha(copy / name) for name in manifest["sha256"] if (copy / name).exists()}
    (copy / "manifest.json").write_text(json.dumps(manifest))


def _edit_recipe(copy: Path, feature: str, **changes: object) -> None:
    data = json.loads((copy / "schema.json").read_text())
    for entry in [*data["dense"], *data["sparse"]]:
        if entry["name"] == feature:
            entry["derived"].update(changes)
    (copy / "schema.json").write_text(json.dumps(data))


def test_the_artifact_carries_the_lookups_digested(run: tuple[Path, Path, Path]) -> None:
    _, data_dir, artifact_dir = run
    lookups = sorted(p.name for p in (data_dir / "generated").iterdir())
    assert lookups == ["g_freq.parquet", "g_freq_context.parquet", "g_group_mean.parquet"]
    manifest = json.loads((artifact_dir / "manifest.json").read_text())
    for name in lookups:
        copied = artifact_dir / "generated" / name
        assert copied.read_bytes() == (data_dir / "generated" / name).read_bytes()
        assert manifest["sha256"][f"generated/{name}"] == _sha(copied)
        assert f"generated/{name}" in manifest["files"]
    loaded = artifact.load(artifact_dir)
    assert isinstance(loaded.lookups, Lookups)
    schema = Schema.load(data_dir)
    recipe = next(f.derived for f in schema.derived_features if f.name == "g_freq")
    assert recipe is not None and recipe.lookup_sha256 == _sha(artifact_dir / LOOKUP)
    keys, values, default = loaded.lookups.table(recipe)
    written = pl.read_parquet(data_dir / LOOKUP).filter(pl.col("key") >= 0)
    np.testing.assert_array_equal(keys, written["key"].to_numpy())
    np.testing.assert_array_equal(values, written["value"].to_numpy())
    assert default == 0.0


def _flip_a_byte(copy: Path) -> None:
    data = bytearray((copy / LOOKUP).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / LOOKUP).write_bytes(bytes(data))


def _rewrite_and_reseal(copy: Path) -> None:
    frame = pl.read_parquet(copy / LOOKUP).with_columns(pl.col("value") * 2)
    frame.write_parquet(copy / LOOKUP)
    _reseal(copy)  # the manifest agrees; the schema's recipe still holds the original digest


def _malformed_and_resealed(copy: Path) -> None:
    pl.read_parquet(copy / LOOKUP).filter(pl.col("key") >= 0).write_parquet(copy / LOOKUP)  # no default row
    _edit_recipe(copy, "g_freq", lookup_sha256=_sha(copy / LOOKUP))
    _reseal(copy)


def _outside_generated(copy: Path) -> None:
    shutil.copy(copy / LOOKUP, copy / "g_freq.parquet")
    _edit_recipe(copy, "g_freq", lookup_file="generated/../g_freq.parquet")
    _reseal(copy)


def _missing(copy: Path) -> None:
    (copy / LOOKUP).unlink()


@pytest.mark.parametrize(("damage", "expected"), [
    (_flip_a_byte, "changed after export"),
    (_rewrite_and_reseal, "digest differs from the schema's lookup_sha256"),
    (_malformed_and_resealed, "malformed lookup"),
    (_outside_generated, "must be a path under generated/"),
    (_missing, "missing from the artifact"),
])
def test_a_bad_lookup_refuses_to_load_in_one_line(run: tuple[Path, Path, Path], tmp_path: Path,
                                                  damage: Callable[[Path], None], expected: str) -> None:
    copy = tmp_path / "artifact"
    shutil.copytree(run[2], copy)
    damage(copy)
    for load in (artifact.load, lambda path: ServedModel.load(path, "fp32")):
        with pytest.raises(RecsysError) as caught:
            load(copy)
        message = str(caught.value)
        assert expected in message and "\n" not in message, message
        assert str(copy) in message
