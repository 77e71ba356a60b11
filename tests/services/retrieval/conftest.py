"""Retrieval fixtures: item-vector artifacts of random vectors (for the index), and a ranker and a retriever
trained on one small MovieLens-shaped log (same user and item keys), each materialised in its own namespace of
one real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from safetensors.numpy import save_file

from recsys import artifact as artifacts
from recsys.models import model_names
from services.feature_store.embedded import EmbeddedRedis
from services.feature_store.materialize import materialize
from services.feature_store.redis_store import RedisFeatureStore
from services.retrieval.index import build_artifact_index
from tests.conftest import train_cli

RETRIEVER_PREFIX = "recsys-retriever"


def vectors_artifact(out: Path, vectors: np.ndarray, similarity: str = "dot") -> Path:
    """A directory with interface 2's files for ``vectors`` (N, d) and a manifest digesting them (and small
    stand-ins for the weights, schema and config, which the index never reads)."""
    (out / "retrieval").mkdir(parents=True, exist_ok=True)
    save_file({"vectors": np.ascontiguousarray(vectors, dtype=np.float32)},
              str(out / "retrieval" / "item_vectors.safetensors"))
    pq.write_table(pa.table({"item_key": pa.array([f"i{i}" for i in range(len(vectors))], pa.string())}),
                   out / "retrieval" / "items.parquet")  # as the exporter writes it
    save_file({"unused": np.zeros(1, np.float32)}, str(out / artifacts.WEIGHTS))
    (out / artifacts.SCHEMA).write_text("{}")
    (out / artifacts.CONFIG).write_text("{}\n")
    names = [*artifacts.DIGESTED, "retrieval/items.parquet", "retrieval/item_vectors.safetensors"]
    manifest = {"model": "mf", "retrieval": {"similarity": similarity, "items": len(vectors), "dim": vectors.shape[1]},
                "sha256": {name: artifacts.sha256_file(out / name) for name in names}}
    (out / artifacts.MANIFEST).write_text(json.dumps(manifest))
    return out


def clustered(items: int, dim: int, seed: int = 0, points: int = 0, clusters: int = 200) -> np.ndarray:
    """``items`` vectors around ``clusters`` centres of ``seed``; ``points`` seeds the draws around them (another
    value: other points of the same distribution, e.g. queries)."""
    centres = np.random.default_rng(seed).standard_normal((clusters, dim)).astype(np.float32)
    rng = np.random.default_rng([seed, points])
    return centres[rng.integers(0, len(centres), items)] + 0.35 * rng.standard_normal((items, dim)).astype(np.float32)


def movielens_log(out: Path, users: int = 300, items: int = 200, per_user: int = 20, seed: int = 0) -> Path:
    """A MovieLens "latest" folder (ratings.csv, movies.csv): users rate items of their own taste group mostly."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance"]
    group = rng.integers(0, len(genres), items)
    rows = []
    for user in range(1, users + 1):
        taste = rng.integers(0, len(genres))
        own, other = np.flatnonzero(group == taste), np.flatnonzero(group != taste)
        picked = np.unique(np.concatenate([rng.choice(own, per_user * 3 // 4, replace=False),
                                           rng.choice(other, per_user // 4, replace=False)]))
        for j, item in enumerate(picked):
            rating = rng.choice([4.0, 5.0]) if group[item] == taste else rng.choice([1.0, 2.0, 3.0, 4.0])
            rows.append((user, int(item) + 1, float(rating), 1_600_000_000 + user * 1000 + j))
    pl.DataFrame(rows, schema=["userId", "movieId", "rating", "timestamp"], orient="row").write_csv(
        out / "ratings.csv")
    pl.DataFrame({"movieId": np.arange(1, items + 1), "title": [f"Movie {i} ({1980 + i % 40})" for i in range(items)],
                  "genres": [genres[g] for g in group]}).write_csv(out / "movies.csv")
    return out


@dataclass
class TwoStage:
    """A ranker (dlrm, CTR) and a retriever (mf, implicit) of the same MovieLens-shaped log, with its index."""

    ranker_data: Path
    ranker: Path
    retriever_data: Path
    retriever: Path
    second_retriever: Path  # another seed: what a reload swaps in


def _prepare(raw: Path, out: Path, task: str) -> Path:
    """``recsys data prepare --format movielens --task TASK --split random``, in process."""
    from recsys.data.formats.movielens import MovieLensSource
    from recsys.data.pipeline import PrepareOptions, run

    run(MovieLensSource(raw, task=task), out, PrepareOptions(split="random", seed=0))
    return out


def _train_retriever(data: Path, out: Path, seed: int, steps: int) -> Path:
    """mf, then its index (exact at this size), as `recsys index build` writes it."""
    result = train_cli(data, out, f"trainer.max_steps={steps}", "trainer.batch_size=256", model="mf",
                       extra=("--seed", str(seed)))
    assert result.returncode == 0, result.stderr[-3000:]
    build_artifact_index(out / "artifact")
    return out / "artifact"


@pytest.fixture(scope="session")
def two_stage(tmp_path_factory: pytest.TempPathFactory) -> TwoStage:
    if "mf" not in model_names():
        pytest.skip("no 'mf' retriever registered yet (helper core's slice)")
    root = tmp_path_factory.mktemp("two-stage")
    raw = movielens_log(root / "raw")
    ranker_data = _prepare(raw, root / "ctr", "ctr")
    retriever_data = _prepare(raw, root / "implicit", "implicit")
    result = train_cli(ranker_data, root / "dlrm", "trainer.max_steps=30", "trainer.batch_size=256")
    assert result.returncode == 0, result.stderr[-3000:]
    return TwoStage(ranker_data, root / "dlrm" / "artifact", retriever_data,
                    _train_retriever(retriever_data, root / "mf", 0, 60),
                    _train_retriever(retriever_data, root / "mf-second", 7, 5))


@pytest.fixture(scope="session")
def two_stage_redis(two_stage: TwoStage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real Redis with the ranker's features under 'recsys' and the retriever's under 'recsys-retriever'."""
    server = EmbeddedRedis.start(tmp_path_factory.mktemp("redis-two-stage"))
    for prefix, data, artifact in (("recsys", two_stage.ranker_data, two_stage.ranker),
                                   (RETRIEVER_PREFIX, two_stage.retriever_data, two_stage.retriever)):
        store = RedisFeatureStore.from_url(server.url, prefix=prefix)
        materialize(store, data, artifact)
        store.close()
    yield server
    server.kill()
