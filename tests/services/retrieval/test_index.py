"""``recsys index build`` and ``load_index``: kinds, tuning to the recall target, and index files refused at load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.models.retriever import Similarity
from services.retrieval.index import (
    IndexKind, build_artifact_index, build_index, default_kind, exact_neighbours, load_index, recall_at,
)
from tests.conftest import run_cli
from tests.services.retrieval.conftest import clustered, vectors_artifact

ITEMS = 10_000


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    vectors = clustered(ITEMS, 32)
    return vectors_artifact(tmp_path_factory.mktemp("catalogue") / "a", vectors), vectors


def _copy(artifact: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(artifact, copy)
    return copy


@pytest.mark.parametrize("similarity", ["dot", "l2"])
@pytest.mark.parametrize("kind", ["exact", "ivf", "hnsw"])
def test_index_finds_the_exact_neighbours(kind: str, similarity: str, catalogue: tuple[Path, np.ndarray]) -> None:
    """Every kind, both similarities: recall@100 against brute force on *other* queries than the tuning ones
    reaches the target (exact: all of them), and the scores are the retriever's (ip, or −squared distance)."""
    _, vectors = catalogue
    sim = Similarity(similarity)
    index, report = build_index(vectors, sim, IndexKind(kind), 0.95)
    queries = clustered(200, 32, points=1)
    truth = exact_neighbours(vectors, queries, sim, 100)
    from services.retrieval.index import ItemIndex

    served = ItemIndex(index, [str(i) for i in range(len(vectors))], sim, {"kind": kind}, None, report.max_norm)
    scores, rows = served.search(queries, 100)
    recall = recall_at(rows, truth)
    assert recall >= (1.0 if kind == "exact" else 0.93)  # tuned to 0.95 on its own queries: a little slack
    if kind != "exact":
        assert report.recall is not None and report.recall >= 0.95
    expected = queries @ vectors.T if sim is Similarity.DOT else \
        -((queries[:, None, :] - vectors[None, :, :]) ** 2).sum(-1)
    found = rows >= 0  # an IVF search may find fewer than k in the cells it probes: rows -1
    assert found.mean() > 0.9
    np.testing.assert_allclose(scores[found], np.take_along_axis(expected, np.maximum(rows, 0), 1)[found],
                               rtol=1e-4, atol=1e-3)
    assert all((np.diff(s[f]) <= 1e-4).all() for s, f in zip(scores, found))  # best first


def test_default_kind_by_size() -> None:
    assert default_kind(50_000) is IndexKind.EXACT
    assert default_kind(1_000_000) is IndexKind.IVF


def test_cli_builds_and_records(catalogue: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    artifact = _copy(catalogue[0], tmp_path)
    result = run_cli("index", "build", "--artifact", str(artifact), "--kind", "ivf", "--recall-target", "0.9")
    assert result.returncode == 0, result.stderr
    assert "recall@100" in result.stdout and "Saved" in result.stdout
    meta = json.loads((artifact / "index" / "meta.json").read_text())
    assert meta["kind"] == "ivf" and meta["items"] == ITEMS and meta["dim"] == 32
    assert meta["recall"]["value"] >= 0.9 and meta["recall"]["target"] == 0.9
    assert 1 <= meta["params"]["nprobe"] <= meta["params"]["nlist"]
    assert meta["build_seconds"] >= 0
    loaded = load_index(artifact)
    assert loaded.kind is IndexKind.IVF and loaded.index.nprobe == meta["params"]["nprobe"]
    # The default for a catalogue this small is exact.
    assert run_cli("-q", "index", "build", "--artifact", str(artifact)).returncode == 0
    assert json.loads((artifact / "index" / "meta.json").read_text())["kind"] == "exact"


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    result = run_cli("index", "build", "--artifact", str(tmp_path))
    assert result.returncode == 2
    assert "not a retriever artifact" in result.stderr and "Traceback" not in result.stderr


# ---- bad index files ---------------------------------------------------------------------------------------
def _meta(artifact: Path) -> dict:
    return json.loads((artifact / "index" / "meta.json").read_text())


def _write_meta(artifact: Path, meta: dict) -> None:
    (artifact / "index" / "meta.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def built_once(catalogue: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifact = _copy(catalogue[0], tmp_path_factory.mktemp("built"))
    build_artifact_index(artifact, IndexKind.HNSW, 0.9)
    return artifact


@pytest.fixture
def built(built_once: Path, tmp_path: Path) -> Path:
    """An artifact with an hnsw index of a dot retriever (the MIPS → L2 reduction), for a test to spoil."""
    return _copy(built_once, tmp_path)


def _refused(artifact: Path, match: str) -> None:
    with pytest.raises(RecsysError, match=match) as caught:
        load_index(artifact)
    assert "\n" not in str(caught.value)


def test_loads_when_intact(built: Path) -> None:
    assert load_index(built).items == ITEMS


def test_refuses_index_of_other_vectors(built: Path) -> None:
    """The artifact exported again (other vectors, same shape): the index is stale."""
    vectors_artifact(built, clustered(ITEMS, 32, seed=9))
    _refused(built, "built from other item vectors")


def test_refuses_changed_index_file(built: Path) -> None:
    path = built / "index" / "index.faiss"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    _refused(built, "sha256 differs")


def test_refuses_unreadable_index_even_with_matching_digest(built: Path) -> None:
    from recsys.artifact import sha256_file

    path = built / "index" / "index.faiss"
    path.write_bytes(b"not a faiss index" * 10)
    _write_meta(built, {**_meta(built), "index_sha256": sha256_file(path)})
    _refused(built, "faiss cannot read it")


def test_refuses_index_holding_other_vectors(built: Path, tmp_path: Path) -> None:
    """A well-formed index of the right size whose meta was rewritten to match it: the spot check catches it."""
    from recsys.artifact import sha256_file

    other = vectors_artifact(tmp_path / "other", clustered(ITEMS, 32, seed=9))
    build_artifact_index(other, IndexKind.HNSW, 0.9)
    shutil.copy(other / "index" / "index.faiss", built / "index" / "index.faiss")
    _write_meta(built, {**_meta(built), "index_sha256": sha256_file(built / "index" / "index.faiss"),
                        "mips_max_norm": _meta(other)["mips_max_norm"]})
    _refused(built, "not the artifact's item vectors")


def test_refuses_index_of_wrong_shape_or_metric(built: Path) -> None:
    from recsys.artifact import sha256_file

    path = built / "index" / "index.faiss"
    for index, match in ((faiss.IndexHNSWFlat(33, 32, faiss.METRIC_INNER_PRODUCT), "metric"),
                         (faiss.IndexHNSWFlat(34, 32), "d 34"), (faiss.IndexFlatL2(33), "IndexFlat")):
        index.add(np.zeros((ITEMS, index.d), np.float32))
        faiss.write_index(index, str(path))
        _write_meta(built, {**_meta(built), "index_sha256": sha256_file(path)})
        _refused(built, match)


@pytest.mark.parametrize(("change", "match"), [
    ({"kind": "lsh"}, "kind 'lsh'"),
    ({"format": 2}, "format 2"),
    ({"items": ITEMS - 1}, f"items {ITEMS - 1}"),
    ({"similarity": "l2"}, "similarity 'l2'"),
    ({"params": {"M": 32, "efSearch": 0}}, "params.efSearch 0"),
    ({"mips_max_norm": None}, "mips_max_norm"),
])
def test_refuses_bad_meta(built: Path, change: dict, match: str) -> None:
    _write_meta(built, {**_meta(built), **change})
    _refused(built, match)


def test_refuses_missing_or_malformed_meta(built: Path) -> None:
    (built / "index" / "meta.json").write_text("{not json")
    _refused(built, "not valid JSON")
    (built / "index" / "meta.json").unlink()
    _refused(built, "build the index first")
