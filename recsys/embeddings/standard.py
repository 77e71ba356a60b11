"""The standard scheme: one full embedding table per schema table, in a torchrec EmbeddingBagCollection.

Tables shared by several features (``item_id`` and the ``hist_item_id`` history)
are one table with several feature names, as in torchrec. torchrec pools per
table, so when a table's features disagree (a summed id and a mean-pooled
history) the collection sums and the mean features are divided by their lengths
here; an empty bag pools to zeros either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from recsys.config import EmbeddingConfig
from recsys.embeddings import register_scheme
from recsys.schema import Pooling, Schema

_POOLING = {Pooling.SUM: PoolingType.SUM, Pooling.MEAN: PoolingType.MEAN}


class PooledEmbeddings(nn.Module):
    """Schema features → pooled embeddings.

    forward: KeyedJaggedTensor with keys ``schema.sparse_keys`` (B rows each)
             → KeyedTensor with keys ``feature_names``, values (B, sum of dims).

        embeddings = PooledEmbeddings(schema, EmbeddingConfig(dim=16))
        pooled = embeddings(batch.sparse)      # pooled.values(): (B, F * 16)
    """

    def __init__(self, schema: Schema, config: EmbeddingConfig, device: torch.device) -> None:
        super().__init__()
        poolings = {f.name: f.pooling for f in [*schema.sparse, *schema.sequences]}
        tables = []
        self._divide: list[str] = []  # mean-pooled features of summing tables
        for table in schema.tables:
            features = [f for f in schema.sparse_keys if schema.feature_table(f).name == table.name]
            if not features:
                continue
            wanted = {poolings[f] for f in features}
            pooling = wanted.pop() if len(wanted) == 1 else Pooling.SUM
            self._divide += [f for f in features if poolings[f] is Pooling.MEAN and pooling is Pooling.SUM]
            assert table.cardinality is not None  # resolved schema
            tables.append(EmbeddingBagConfig(
                name=table.name,
                embedding_dim=config.dim or table.embedding_dim,
                num_embeddings=table.cardinality,
                feature_names=features,
                pooling=_POOLING[pooling],
            ))
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        self.feature_names: list[str] = [f for t in tables for f in t.feature_names]
        self.embedding_dims: list[int] = [t.embedding_dim for t in tables for _ in t.feature_names]
        inputs = list(schema.sparse_keys)
        # (feature, position among the input keys) of each feature to divide by its length
        self._divide_at = [(f, inputs.index(f)) for f in self._divide]
        self._num_inputs = len(inputs)

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        return _in_feature_order(self.ebc(features), features, self.feature_names, self.embedding_dims,
                                 self._divide_at, self._num_inputs)


@torch.fx.wrap  # a leaf for torchrec's pipeline tracer: the branches below read the KeyedTensor's keys
def _in_feature_order(pooled: KeyedTensor, features: KeyedJaggedTensor, names: list[str], dims: list[int],
                      divide_at: list[tuple[str, int]], num_inputs: int) -> KeyedTensor:
    """Pooled embeddings in ``names`` order, mean features divided by their lengths.

    A sharded collection returns its features grouped by shard, not in table order.
    """
    keys = pooled.keys()
    if keys == names and not divide_at:
        return pooled
    parts = dict(zip(keys, pooled.values().split(pooled.length_per_key(), dim=1)))  # name → (B, dim)
    if divide_at:
        lengths = features.lengths().view(num_inputs, features.stride())  # (K, B)
        for name, key in divide_at:
            count = lengths[key].clamp(min=1).to(parts[name].dtype)  # (B,)
            parts[name] = parts[name] / count.unsqueeze(1)
    return KeyedTensor(keys=names, length_per_key=dims, values=torch.cat([parts[name] for name in names], dim=1))


@register_scheme("standard")
def standard(schema: Schema, config: EmbeddingConfig, device: torch.device) -> nn.Module:
    return PooledEmbeddings(schema, config, device)
