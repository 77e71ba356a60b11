"""A retriever's artifact: the catalogue's item vectors (retrieval/items.parquet, retrieval/item_vectors.safetensors),
described in the manifest and digested; every way they can be missing, changed, malformed, non-finite or of the
wrong shape is a one-line error naming the file, from ``artifact.load`` and ``artifact.load_item_vectors``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from recsys import artifact
from recsys.config import TrainConfig
from recsys.data.layout import load_schema
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.train.retrieval import catalogue_vectors

CONFIG = TrainConfig.from_dict({"model": {"loss": "bpr"}})


@pytest.fixture(scope="module")
def exported(small_implicit: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    schema = load_schema(small_implicit)
    torch.manual_seed(0)
    model = build_model("mf", schema, CONFIG.model, CONFIG.embedding)
    items = catalogue_vectors(model, small_implicit, schema)
    out = tmp_path_factory.mktemp("retriever-artifact") / "artifact"
    return artifact.save(out, model_name="mf", state=model.state_dict(), schema=schema, config=CONFIG,
                         metrics={}, data_dir=small_implicit, items=items)


@pytest.fixture
def copy(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "artifact"))


def _redigest(path: Path, name: str) -> None:
    """Record a rewritten file's digest, as an exporter with a bug would: only the content checks can catch it."""
    manifest = json.loads((path / artifact.MANIFEST).read_text())
    manifest["sha256"][name] = artifact.sha256_file(path / name)
    (path / artifact.MANIFEST).write_text(json.dumps(manifest))


def test_item_vectors_round_trip_with_the_model(exported: Path) -> None:
    keys, vectors, similarity = artifact.load_item_vectors(exported)
    manifest = json.loads((exported / artifact.MANIFEST).read_text())
    assert manifest["retrieval"] == {"similarity": "dot", "items": 200, "dim": 16}
    assert {artifact.ITEMS, artifact.ITEM_VECTORS} <= set(manifest["sha256"])
    assert similarity == "dot" and vectors.shape == (200, 16) and vectors.dtype == torch.float32
    assert sorted(keys, key=int) == [str(i) for i in range(200)]  # synthetic item keys: their identity-encoded rows
    loaded = artifact.load(exported)
    table = loaded.model.state_dict()["embeddings.ebc.embedding_bags.item_id.weight"]
    torch.testing.assert_close(vectors, table[[int(key) for key in keys]])  # row i: the vector of keys[i]


def test_changed_vectors_are_refused(copy: Path) -> None:
    path = copy / artifact.ITEM_VECTORS
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    for load in (artifact.load, artifact.load_item_vectors):
        with pytest.raises(RecsysError, match="item_vectors.safetensors: changed after export") as info:
            load(copy)
        assert "\n" not in str(info.value)


def test_missing_items_are_refused(copy: Path) -> None:
    (copy / artifact.ITEMS).unlink()
    with pytest.raises(RecsysError, match="items.parquet: missing from the artifact"):
        artifact.load_item_vectors(copy)


def test_non_finite_vectors_are_refused(copy: Path) -> None:
    _, vectors, _ = artifact.load_item_vectors(copy)
    vectors[3, 1] = float("nan")
    save_file({"vectors": vectors}, str(copy / artifact.ITEM_VECTORS))
    _redigest(copy, artifact.ITEM_VECTORS)
    for load in (artifact.load, artifact.load_item_vectors):
        with pytest.raises(RecsysError, match="item_vectors.safetensors: holds NaN or infinite values"):
            load(copy)


@pytest.mark.parametrize("vectors", [torch.zeros(200, 8), torch.zeros(199, 16), torch.zeros(200, 16,
                                                                                              dtype=torch.float64)])
def test_vectors_of_the_wrong_shape_or_type_are_refused(copy: Path, vectors: torch.Tensor) -> None:
    save_file({"vectors": vectors}, str(copy / artifact.ITEM_VECTORS))
    _redigest(copy, artifact.ITEM_VECTORS)
    with pytest.raises(RecsysError, match=r"expected float32 'vectors' of shape \[200, 16\]"):
        artifact.load_item_vectors(copy)


def test_keys_that_do_not_match_the_vectors_are_refused(copy: Path) -> None:
    pq.write_table(pa.table({"item_key": pa.array([str(i) for i in range(150)])}), copy / artifact.ITEMS)
    _redigest(copy, artifact.ITEMS)
    with pytest.raises(RecsysError, match="150 item keys, but manifest.json says 200"):
        artifact.load_item_vectors(copy)
    pq.write_table(pa.table({"item_key": pa.array(range(200))}), copy / artifact.ITEMS)
    _redigest(copy, artifact.ITEMS)
    with pytest.raises(RecsysError, match="one non-null string column 'item_key'"):
        artifact.load_item_vectors(copy)


def test_a_ranking_artifact_has_no_item_vectors(copy: Path) -> None:
    manifest = json.loads((copy / artifact.MANIFEST).read_text())
    del manifest["retrieval"]
    (copy / artifact.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(RecsysError, match="no 'retrieval' entry"):
        artifact.load_item_vectors(copy)


def test_non_finite_vectors_are_never_exported(small_implicit: Path, tmp_path: Path) -> None:
    schema = load_schema(small_implicit)
    model = build_model("mf", schema, CONFIG.model, CONFIG.embedding)
    items = artifact.ItemVectors(["a", "b"], torch.tensor([[0.0], [float("inf")]]), "dot")
    with pytest.raises(RecsysError, match="not exported: the item vectors hold NaN"):
        artifact.save(tmp_path / "artifact", model_name="mf", state=model.state_dict(), schema=schema,
                      config=CONFIG, metrics={}, data_dir=small_implicit, items=items)
    assert not (tmp_path / "artifact").exists()
