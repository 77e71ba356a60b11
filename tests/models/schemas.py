"""The small hand-built schema, batches and gradient check the per-model tests share.

An ``item_id`` target with a ``hist_item_id`` history over the same table, user fields
beside it, identity tables of dim 4 unless ``dims`` says otherwise, ``dense`` dense features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.schema import Schema
from recsys.types import Batch

CARDINALITY = {"item_id": 10, "city": 3, "device": 4, "hour": 24}


def small_schema(dense: int = 3, fields: Sequence[str] = ("city",), dims: Mapping[str, int] | None = None) -> Schema:
    dims = dims or {}
    return Schema.from_dict({
        "dense": [{"name": f"d{i}", "entity": "user", "transform": "none"} for i in range(dense)],
        "sparse": [{"name": "item_id", "entity": "item"}, *({"name": f, "entity": "user"} for f in fields)],
        "sequences": [{"name": "hist_item_id", "table": "item_id", "max_length": 5}],
        "tables": [{"name": t, "encoding": "identity", "cardinality": CARDINALITY[t], "embedding_dim": dims.get(t, 4)}
                   for t in ["item_id", *fields]],
        "labels": [{"name": "label"}],
    })


def three_rows(schema: Schema) -> Batch:
    """Rows of ``small_schema()``: item 1 / city 0 / history [2, 3]; item 4 / city 2 / empty; item 5 / city 1 / [6]."""
    sparse = KeyedJaggedTensor(keys=schema.sparse_keys, values=torch.tensor([1, 4, 5, 0, 2, 1, 2, 3, 6]),
                               lengths=torch.tensor([1, 1, 1, 1, 1, 1, 2, 0, 1], dtype=torch.int32))
    return Batch(dense=torch.randn(3, len(schema.dense)), sparse=sparse, labels=torch.tensor([1.0, 0.0, 1.0]))


def random_rows(schema: Schema, rows: int, shortest_history: int) -> Batch:
    """Seeded random ids, histories of ``shortest_history``..3 items, random dense values and labels."""
    generator = torch.Generator().manual_seed(1)
    values, lengths = [], []
    for key in schema.sparse_keys:
        table = schema.feature_table(key).name
        for _ in range(rows):
            length = int(torch.randint(shortest_history, 4, (1,), generator=generator)) if key.startswith("hist") else 1
            values.append(torch.randint(0, CARDINALITY[table], (length,), generator=generator))
            lengths.append(length)
    sparse = KeyedJaggedTensor(keys=schema.sparse_keys, values=torch.cat(values),
                               lengths=torch.tensor(lengths, dtype=torch.int32))
    return Batch(dense=torch.randn(rows, len(schema.dense), generator=generator), sparse=sparse,
                 labels=torch.randint(0, 2, (rows,), generator=generator).float())


def assert_every_parameter_learns(model: nn.Module, batch: Batch, labels: torch.Tensor) -> None:
    """One logit per row, and a binary cross-entropy backward reaches every parameter with a non-zero gradient."""
    logits = model(batch)
    assert logits.shape == labels.shape
    F.binary_cross_entropy_with_logits(logits, labels).backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
