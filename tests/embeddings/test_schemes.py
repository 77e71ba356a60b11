"""Each scheme's index maths and the mixed module's pooling, sizes, config errors and logical sharding names."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from kernels.quantize import quantize_tables, served_embedding_bytes
from recsys import artifact
from recsys.config import EmbeddingConfig, ShardingConfig, TrainConfig
from recsys.data.layout import load_schema
from recsys.distributed.sharding import constraints
from recsys.embeddings import (LogicalTable, build_embeddings, embedding_tables, full_table_bytes, model_bytes,
                               table_vectors)
from recsys.embeddings.hash import PRIME, hash_coefficients
from recsys.embeddings.qr import QROptions, QRPart, radices
from recsys.errors import RecsysError
from recsys.models import build_model, model_names, model_spec
from recsys.schema import Schema
from tests.conftest import REPO_ROOT, train_cli
from tests.trained_runs import assert_learns_from_a_batch

# Retrievers need an implicit schema: tests/models/test_retriever_contract.py runs them through the schemes.
RANKERS = [n for n in model_names() if not model_spec(n).retriever]


def _schema(rows: dict[str, int], dim: int = 4, multi: str | None = None) -> Schema:
    """One user feature per table (``multi`` mean-pooled and multi-valued), identity tables."""
    return Schema.from_dict({
        "sparse": [{"name": t, "entity": "user", **({"separator": "|", "pooling": "mean"} if t == multi else {})}
                   for t in rows],
        "tables": [{"name": t, "encoding": "identity", "cardinality": n, "embedding_dim": dim} for t, n in rows.items()],
        "labels": [{"name": "label"}],
    })


def _embeddings(schema: Schema, *settings: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_embeddings(schema, TrainConfig.load(None, list(settings)).embedding)


@pytest.mark.parametrize("operation", ["mult", "add", "concat"])
@pytest.mark.parametrize("partitions", [2, 3])
@pytest.mark.parametrize("ratio", [1, 4, 16])
def test_qr_gives_every_id_its_own_vector(operation: str, partitions: int, ratio: int) -> None:
    schema = _schema({"t": 1000}, dim=8)
    module = _embeddings(schema, "embedding.scheme=qr", f"embedding.operation={operation}",
                         f"embedding.partitions={partitions}", f"embedding.ratio={ratio}")
    vectors = table_vectors(module, "t", torch.arange(1000))
    assert vectors.shape == (1000, 8)
    assert len({tuple(v) for v in vectors.round(decimals=5).tolist()}) == 1000


def test_qr_digits_rebuild_the_id_and_fit_the_budget() -> None:
    part = QRPart(LogicalTable("t", 10_000, 16, ("t",), False), QROptions(ratio=16, partitions=2))
    ids = torch.arange(10_000)
    remainder, quotient = part.remap("t", ids)
    assert bool((quotient * part.radices[0] + remainder == ids).all())
    assert int(remainder.max()) < part.radices[0] and int(quotient.max()) < part.radices[1]
    assert sum(part.radices) <= 10_000 / 16 and part.budget_met
    # the smallest remainder table that fits: one fewer would need more rows than the budget
    c = part.radices[0]
    assert (c - 1) + math.ceil(10_000 / (c - 1)) > 10_000 / 16
    # below the smallest possible size (2 * sqrt(rows) rows) the tables take that size
    assert radices(10_000, 2, 50) == [100, 100]
    assert not QRPart(LogicalTable("t", 10_000, 16, ("t",), False), QROptions(ratio=1000)).budget_met


def test_hashing_collides_as_computed() -> None:
    schema = _schema({"t": 1000})
    module = _embeddings(schema, "embedding.scheme=hash", "embedding.ratio=10")
    (name, _), = embedding_tables(module).items()
    weight = dict(module.named_parameters())[name]
    assert weight.shape == (100, 4)
    a, b = hash_coefficients("t")
    rows = [((a * i + b) % PRIME) % 100 for i in range(1000)]
    vectors = table_vectors(module, "t", torch.arange(1000))
    torch.testing.assert_close(vectors, weight.detach()[rows])
    # ids sharing a row share a vector, and the expected number of rows is used
    assert len(set(rows)) == len({tuple(v) for v in vectors.tolist()}) > 90


def test_unified_tables_share_one_table_with_their_own_hashes() -> None:
    schema = _schema({"a": 400, "b": 600})
    module = _embeddings(schema, "embedding.scheme=unified", "embedding.ratio=4")
    (name, (_, table)), = embedding_tables(module).items()
    assert table == "unified__all" and dict(module.named_parameters())[name].shape == (100 + 150, 4)
    assert module.physical_tables == {"a": ["unified__all"], "b": ["unified__all"]}
    same_ids = torch.arange(1, 400)
    # the same id of two features lands on other rows (their hashes differ)
    differ = (table_vectors(module, "a", same_ids) != table_vectors(module, "b", same_ids)).any(dim=1)
    assert float(differ.float().mean()) > 0.9
    with pytest.raises(RecsysError, match="tables sharing one need one dim"):
        _embeddings(schema, "embedding.scheme=unified", "embedding.tables.b.dim=8")


@pytest.mark.parametrize("settings", [("embedding.scheme=qr", "embedding.operation=mult"),
                                      ("embedding.scheme=qr", "embedding.operation=add"),
                                      ("embedding.scheme=hash", "embedding.ratio=3")])
def test_multi_valued_features_pool_the_combined_vectors(settings: tuple[str, ...]) -> None:
    """A mean-pooled bag gives the mean of its ids' vectors, whether fbgemm pooled the physical tables (linear
    combinations) or the module pooled per-id products (mult)."""
    schema = _schema({"tags": 50, "city": 7}, multi="tags")
    module = _embeddings(schema, *settings)
    features = KeyedJaggedTensor(keys=["tags", "city"], values=torch.tensor([3, 7, 11, 5, 2, 6, 0]),
                                 lengths=torch.tensor([3, 0, 1, 1, 1, 1]))  # tags: [3,7,11], [], [5]
    pooled = module(features).pooled
    tags = table_vectors(module, "tags", torch.tensor([3, 7, 11, 5]))
    expected = torch.stack([tags[:3].mean(0), torch.zeros(4), tags[3]])
    torch.testing.assert_close(pooled["tags"], expected)
    torch.testing.assert_close(pooled["city"], table_vectors(module, "city", torch.tensor([2, 6, 0])))


def test_sizes_and_a_mix_of_schemes() -> None:
    schema = _schema({"a": 1000, "b": 1000, "c": 1000}, dim=8)
    config = TrainConfig.load(None, ["embedding.scheme=hash", "embedding.ratio=8", "embedding.tables.b.scheme=qr",
                                     "embedding.tables.c.scheme=standard"]).embedding
    module = build_embeddings(schema, config)
    assert module.schemes == {"a": "hash", "b": "qr", "c": "standard"}
    sizes = model_bytes(module)
    part = module.parts["b"]
    assert sizes["embedding_bytes"] == 4 * 8 * (125 + sum(part.radices) + 1000)
    assert full_table_bytes(schema, config) == 3 * 1000 * 8 * 4
    # a full table keeps its name, so its weights are named as the standard scheme names them
    assert any(table == "c" for _, table in embedding_tables(module).values())


def test_sharding_constraints_name_logical_tables() -> None:
    schema = _schema({"a": 1000, "b": 1000})
    module = _embeddings(schema, "embedding.scheme=qr", "embedding.operation=add")
    config = ShardingConfig.model_validate({"tables": {"a": {"sharding_types": ["column_wise"]}}})
    found = constraints(module, config)
    assert found["a__qr0"].sharding_types == found["a__qr1"].sharding_types == ["column_wise"]
    assert found["b__qr0"].sharding_types == ["table_wise", "column_wise", "table_column_wise"]
    with pytest.raises(RecsysError, match="sharding.tables: unknown table 'z'; tables: a, b"):
        constraints(module, ShardingConfig.model_validate({"tables": {"z": {}}}))


def test_bad_settings_name_the_table_and_the_key() -> None:
    schema = _schema({"a": 100})
    with pytest.raises(RecsysError, match=r"embedding.tables.a \(scheme qr\).*operaton"):
        _embeddings(schema, "embedding.tables.a.scheme=qr", "embedding.tables.a.operaton=add")
    with pytest.raises(RecsysError, match="embedding.tables.a.scheme: unknown scheme 'qrr'"):
        _embeddings(schema, "embedding.tables.a.scheme=qrr")
    with pytest.raises(RecsysError, match="embedding.tables: unknown table 'zz'"):
        _embeddings(schema, "embedding.tables.zz.scheme=qr")
    with pytest.raises(RecsysError, match=r"embedding.ratio: Input should be greater than or equal to 1"):
        _embeddings(schema, "embedding.scheme=hash", "embedding.ratio=0.5")
    with pytest.raises(RecsysError, match=r"embedding.tables.a \(scheme hash\): group: Extra inputs"):
        _embeddings(schema, "embedding.scheme=hash", "embedding.ratio=2", "embedding.tables.a.group=x")
    assert EmbeddingConfig().for_table("a") == {"scheme": "standard", "dim": None, "ratio": 1.0}
    with pytest.raises(RecsysError, match=r"embedding.operaton: no table's scheme takes this option \(schemes in "
                                          r"use: qr\)"):
        _embeddings(schema, "embedding.scheme=qr", "embedding.operaton=add")


def test_section_options_go_to_the_tables_whose_scheme_takes_them() -> None:
    schema = _schema({"a": 100, "b": 100, "c": 100})
    module = _embeddings(schema, "embedding.scheme=qr", "embedding.operation=add", "embedding.group=g",
                         "embedding.tables.b.scheme=standard", "embedding.tables.c.scheme=unified")
    assert module.schemes == {"a": "qr", "b": "standard", "c": "unified"}
    assert module.parts["a"].operation == "add" and module.physical_tables["c"] == ["unified__g"]


@pytest.mark.parametrize("model_name", RANKERS)
def test_every_model_takes_tables_of_several_dims(model_name: str, small_ctr: Path) -> None:
    """Per-table dims (here a QR table of 8 and a hashed one of 24 among tables of the config's dim): models
    needing one dim project them (``layers.FieldMatrix``), and every parameter learns."""
    config = TrainConfig.load(REPO_ROOT / "configs" / f"{model_name}.yaml",
                              ["embedding.tables.C1.scheme=qr", "embedding.tables.C1.dim=8",
                               "embedding.tables.C2.scheme=hash", "embedding.tables.C2.dim=24"])
    schema = load_schema(small_ctr)
    torch.manual_seed(0)
    model = build_model(model_name, schema, config.model, config.embedding)
    dims = dict(zip(model.sparse_arch.feature_names, model.sparse_arch.embedding_dims))
    assert dims["C1"] == 8 and dims["C2"] == 24
    assert_learns_from_a_batch(model, small_ctr, model_name)


def test_metrics_record_bytes_as_trained_and_as_served(small_ctr: Path, tmp_path: Path) -> None:
    """A QR model recording int8 serving: metrics.json has its tables' bytes as trained and as the service holds
    them (the artifact quantised as ``recsys serve`` quantises it)."""
    out = tmp_path / "run"
    result = train_cli(small_ctr, out, "embedding.scheme=qr", "embedding.ratio=4", "embedding.serving_precision=int8",
                       "trainer.max_steps=5", "trainer.batch_size=256",
                       extra=("--config", str(REPO_ROOT / "configs" / "dlrm.yaml")))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "artifact" / "metrics.json").read_text())
    loaded = artifact.load(out / "artifact")
    assert metrics["embedding_bytes"] == model_bytes(loaded.model)["embedding_bytes"]
    assert metrics["embedding_params"] * 4 == metrics["embedding_bytes"] < metrics["embedding_bytes_full"]
    quantize_tables(loaded.model, "int8")
    assert metrics["served.precision"] == "int8"
    assert metrics["served.embedding_bytes"] == served_embedding_bytes(loaded.model) < metrics["embedding_bytes"] / 2
    assert metrics["served.dense_bytes"] == metrics["dense_bytes"]
