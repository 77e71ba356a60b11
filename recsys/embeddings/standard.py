"""The standard scheme: one full embedding table per schema table, in torchrec collections.

Tables that no sequence feature uses are pooled by an ``EmbeddingBagCollection``
(fbgemm pools them inside the lookup). Tables that a sequence feature uses (the
item table of ``item_id`` and its history ``hist_item_id``) live in an
``EmbeddingCollection``, which returns every id's vector un-pooled: the history's
jagged vectors go to the model as they are, and both the target item and the
history are pooled here, so one table serves both and a DIN-style model compares
like with like. torchrec's ``EmbeddingCollection`` needs one dim per collection, so
sequence tables of different dims get one collection each.

Tables shared by several features are one table with several feature names, as in
torchrec. A bag pools per table, so when a bag table's features disagree (a summed
id and a mean-pooled multi-valued feature) the collection sums and the mean
features are divided by their lengths here; an empty bag pools to zeros either way.
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig as TableConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

from recsys.config import EmbeddingConfig
from recsys.embeddings import Embedded, LogicalTable, PhysicalTable, SchemeOptions, TablePart, register_scheme
from recsys.schema import Pooling, Schema

_POOLING = {Pooling.SUM: PoolingType.SUM, Pooling.MEAN: PoolingType.MEAN}


class StandardEmbeddings(nn.Module):
    """Schema features → pooled vectors for all, jagged vectors for sequences.

    forward: KeyedJaggedTensor with keys ``schema.sparse_keys`` (B rows each) → ``Embedded``.

        embeddings = StandardEmbeddings(schema, EmbeddingConfig(dim=16), torch.device("cpu"))
        out = embeddings(batch.sparse)     # out.pooled.values(): (B, F * 16)
        out.sequences["hist_item_id"]      # JaggedTensor: values (Σ lengths, 16), lengths (B,)
    """

    def __init__(self, schema: Schema, config: EmbeddingConfig, device: torch.device) -> None:
        super().__init__()
        dim_of = {t.name: config.for_table(t.name)["dim"] for t in schema.tables}
        poolings = {f.name: f.pooling for f in [*schema.sparse, *schema.sequences]}
        sequence_tables = {f.table for f in schema.sequences}
        bags: list[EmbeddingBagConfig] = []
        unpooled: dict[int, list[TableConfig]] = {}  # dim → the sequence tables of that dim
        divide: list[str] = []  # mean-pooled features of summing bag tables
        names: list[str] = []
        self.feature_tables: dict[str, str] = {}
        for table in schema.tables:
            features = [f for f in schema.sparse_keys if schema.feature_table(f).name == table.name]
            if not features:
                continue
            assert table.cardinality is not None  # resolved schema
            dim = dim_of[table.name] or table.embedding_dim
            names += features
            self.feature_tables |= dict.fromkeys(features, table.name)
            if table.name in sequence_tables:
                unpooled.setdefault(dim, []).append(TableConfig(
                    name=table.name, embedding_dim=dim, num_embeddings=table.cardinality, feature_names=features))
                continue
            wanted = {poolings[f] for f in features}
            pooling = wanted.pop() if len(wanted) == 1 else Pooling.SUM
            divide += [f for f in features if poolings[f] is Pooling.MEAN and pooling is Pooling.SUM]
            bags.append(EmbeddingBagConfig(name=table.name, embedding_dim=dim, num_embeddings=table.cardinality,
                                           feature_names=features, pooling=_POOLING[pooling]))
        self.ebc = EmbeddingBagCollection(tables=bags, device=device) if bags else None
        self.ecs = nn.ModuleList(EmbeddingCollection(tables=tables, device=device) for tables in unpooled.values())
        self.feature_names: list[str] = names
        dims = {f: dim_of[self.feature_tables[f]] or schema.feature_table(f).embedding_dim for f in names}
        self.embedding_dims: list[int] = [dims[f] for f in names]
        self.sequence_names: list[str] = [f.name for f in schema.sequences]
        self.physical_tables: dict[str, list[str]] = {t: [t] for t in dict.fromkeys(self.feature_tables.values())}
        self.schemes: dict[str, str] = dict.fromkeys(self.physical_tables, "standard")
        inputs = list(schema.sparse_keys)
        self.input_names: list[str] = inputs
        # (feature, position among the input keys) of each bag feature to divide by its length
        self._divide_at = [(f, inputs.index(f)) for f in divide]
        self._num_inputs = len(inputs)
        self._mean = [f for f in names if poolings[f] is Pooling.MEAN]

    def forward(self, features: KeyedJaggedTensor) -> Embedded:
        bags = self.ebc(features) if self.ebc is not None else None
        return _assemble(bags, [ec(features) for ec in self.ecs], features, self.feature_names,
                         self.embedding_dims, self.sequence_names, self._mean, self._divide_at, self._num_inputs)


@torch.fx.wrap  # a leaf for torchrec's pipeline tracer: the branches below read the collections' keys
def _assemble(bags: KeyedTensor | None, unpooled: list[dict[str, JaggedTensor]], features: KeyedJaggedTensor,
              names: list[str], dims: list[int], sequence_names: list[str], mean: list[str],
              divide_at: list[tuple[str, int]], num_inputs: int) -> Embedded:
    """Pooled vectors in ``names`` order (a sharded bag collection returns its features grouped by shard, not
    in table order), and the sequences' jagged vectors."""
    jagged = {name: value for part in unpooled for name, value in part.items()}
    sequences = {name: jagged[name] for name in sequence_names}
    if bags is not None and not jagged and bags.keys() == names and not divide_at:
        return Embedded(bags, sequences)
    parts: dict[str, torch.Tensor] = {}  # name → (B, dim)
    if bags is not None:
        parts |= dict(zip(bags.keys(), bags.values().split(bags.length_per_key(), dim=1)))
    if divide_at:
        lengths = features.lengths().view(num_inputs, features.stride())  # (K, B)
        for name, key in divide_at:
            count = lengths[key].clamp(min=1).to(parts[name].dtype)  # (B,)
            parts[name] = parts[name] / count.unsqueeze(1)
    rows = features.stride()
    for name, value in jagged.items():
        parts[name] = pool(value, rows, name in mean)
    return Embedded(KeyedTensor(keys=names, length_per_key=dims, values=torch.cat([parts[n] for n in names], dim=1)),
                    sequences)


def pool(jagged: JaggedTensor, rows: int, mean: bool) -> torch.Tensor:
    """(Σ lengths, D) jagged vectors → (rows, D) sums (means with ``mean``); an empty row pools to zeros."""
    values, lengths = jagged.values(), jagged.lengths()
    owner = torch.repeat_interleave(torch.arange(rows, device=values.device), lengths.long())  # (Σ lengths,)
    summed = torch.zeros(rows, values.shape[1], dtype=values.dtype, device=values.device).index_add_(0, owner, values)
    if not mean:
        return summed
    return summed / lengths.clamp(min=1).to(values.dtype).unsqueeze(1)


@register_scheme("standard", SchemeOptions)
def standard(table: LogicalTable, options: SchemeOptions) -> TablePart:
    """The full table (``ratio`` does not apply). Beside other schemes, in ``MixedEmbeddings``."""
    return TablePart(table, [PhysicalTable(table.name, table.rows, table.dim)])
