"""Feature-store records and request context → the model's Batch, as ``ParquetReader`` builds it.

A request scores B candidates of one user in one context. The user's record is
decoded once and repeated per candidate, the items' records are decoded together
(``RecordCodec.decode_many``), the context is encoded once (``RawEncoder``) and
repeated. Columns are placed in schema order with numpy, one operation per feature
key, never per row:

    dense   (B, D) float32          in ``schema.dense`` order
    lengths (K, B) int32            key-major, K = len(schema.sparse_keys)
    values  K arrays of int64       per key, the ids of rows 0..B-1 concatenated

so a ``RowBlock`` is the KeyedJaggedTensor's own layout, and blocks of several
requests concatenate into one forward pass (``merge``) with one numpy call per part.

Generated features (entity ``derived``, a recipe in the schema) are neither stored nor
sent: once the block's other columns are in place, each is computed from its inputs'
columns with ``recipes.derive``, the function ``features generate`` wrote the Parquet
columns with, over the same float32 / int64 inputs, so online equals offline bit for bit.
Their lookup tables are read (digest-checked) once, when the layout is built.

Ids outside the model's tables (records of another data set) are read as the
out-of-vocabulary row and the entity is reported unknown; a record that cannot be
decoded at all raises ``codec.RecordError`` naming its entity and position.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.data.transforms import OOV_INDEX
from recsys.errors import RecsysError
from recsys.features.recipes import Lookups, derive
from recsys.schema import DenseFeature, Entity, Schema
from recsys.types import Batch
from services.feature_store.codec import EntityBatch, RecordCodec
from services.feature_store.encode import RawEncoder


class ContextError(ValueError):
    """A context value the schema cannot take; the API answers 422 naming ``feature``."""

    def __init__(self, feature: str, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.feature, self.value = feature, value


@dataclass
class RowBlock:
    """One request's model inputs in KeyedJaggedTensor layout (see the module docstring)."""

    dense: np.ndarray  # (B, D) float32
    lengths: np.ndarray  # (K, B) int32
    values: list[np.ndarray]  # K arrays of int64
    # Records that held ids outside the model's tables (read as the OOV row): the user, and items by position.
    out_of_range_user: bool = False
    out_of_range_items: tuple[int, ...] = ()

    @property
    def rows(self) -> int:
        return int(self.dense.shape[0])

    def take(self, rows: Sequence[int]) -> RowBlock:
        """The block of the given rows, in that order (the top-k rows a request explains)."""
        index = np.asarray(rows, dtype=np.intp)
        values = []
        for k, ids in enumerate(self.values):
            offsets = np.concatenate([[0], np.cumsum(self.lengths[k], dtype=np.int64)])  # (B + 1,)
            values.append(np.concatenate([ids[offsets[r]:offsets[r + 1]] for r in index]) if len(index)
                          else ids[:0])
        return RowBlock(self.dense[index], self.lengths[:, index], values)


@dataclass
class EncodedContext:
    dense: np.ndarray  # (n_context_dense,) float32, in schema.dense order
    ids: list[np.ndarray]  # per context key (schema.sparse_keys order), int64


class FeatureLayout:
    """Where each model input comes from (user record, item record or context) for one schema."""

    def __init__(self, schema: Schema, encoder: RawEncoder, lookups: Lookups | None = None) -> None:
        """``lookups``: the generated features' lookup tables (default: read from the encoder's root, the
        artifact); every one the schema names is read and digest-checked here, never on a request."""
        self.schema, self.encoder = schema, encoder
        self.keys = list(schema.sparse_keys)
        self.derived = schema.derived_features
        self.lookups = lookups if lookups is not None else Lookups(encoder.root)
        for feature in self.derived:
            if feature.derived is not None and feature.derived.lookup_file:
                self.lookups.table(feature.derived)
        self.generated = {f.name for f in self.derived}
        self._dense_index = {f.name: i for i, f in enumerate(schema.dense)}
        # Each input of a generated feature: a column of the block's dense matrix, or a sparse key (by index).
        inputs = sorted({n for f in self.derived for n in f.derived.inputs})  # type: ignore[union-attr]
        self._derived_inputs = [(n, n in self._dense_index,
                                 self._dense_index[n] if n in self._dense_index else self.keys.index(n))
                                for n in inputs]
        self._derived_targets = [(f, self._dense_index[f.name] if isinstance(f, DenseFeature) else
                                  self.keys.index(f.name)) for f in self.derived]
        self.dense_dim = len(schema.dense)
        self.user = RecordCodec(schema, Entity.USER)
        self.item = RecordCodec(schema, Entity.ITEM)
        self._cols = {e: np.array([i for i, f in enumerate(schema.dense) if f.entity is e], dtype=np.intp)
                      for e in Entity}
        self.context_dense = [f for f in schema.dense if f.entity is Entity.CONTEXT]
        features = [*schema.sparse, *schema.sequences]
        self.context_keys = [f.name for f in features if f.entity is Entity.CONTEXT]
        self._sequence = {f.name for f in schema.sequences}
        position = {Entity.USER: self.user.keys, Entity.ITEM: self.item.keys, Entity.CONTEXT: self.context_keys,
                    Entity.DERIVED: [f.name for f in schema.sparse if f.entity is Entity.DERIVED]}
        entity_of = {f.name: f.entity for f in features}
        self._sources = [(entity_of[key], position[entity_of[key]].index(key)) for key in self.keys]
        self.context_features = {f.name for f in self.context_dense} | set(self.context_keys)
        default_dense = RecordCodec(schema, Entity.CONTEXT).default_dense
        self._default_context = EncodedContext(
            default_dense,
            # A feature the request leaves out is missing, encoded as prepare encodes an empty cell: OOV for a
            # single value, no values at all for a multi-valued feature or a sequence.
            [np.empty(0, np.int64) if self._several(key) else np.full(1, OOV_INDEX, np.int64)
             for key in self.context_keys])

    # ---- context ----------------------------------------------------------------------------
    def encode_context(self, context: Mapping[str, Any]) -> EncodedContext:
        """Raw context values → encoded ones; missing features take the default, unknown ones are errors."""
        if not context:
            return self._default_context
        for name in context:
            if name in self.generated:
                inputs = next(f.derived.inputs for f in self.derived if f.name == name)  # type: ignore[union-attr]
                raise ContextError(name, f"'{name}' is a generated feature: the service computes it from "
                                   f"{', '.join(inputs)}; it cannot be set in the context", context[name])
            if name not in self.context_features:
                known = ", ".join(sorted(self.context_features)) or "none"
                raise ContextError(name, f"unknown context feature '{name}' (the model's context features: "
                                   f"{known})", context[name])
        dense = self._default_context.dense.copy()
        for i, feature in enumerate(self.context_dense):
            if feature.name in context:
                raw = context[feature.name]
                try:
                    value = self.encoder.dense(feature.name, raw)
                except (RecsysError, OverflowError, ValueError, TypeError) as exc:
                    raise ContextError(feature.name, _one_line(exc, "expected a number"), raw) from None
                if not math.isfinite(value):
                    raise ContextError(feature.name, "the value is out of range for a float32", raw)
                dense[i] = value
        ids = list(self._default_context.ids)
        for j, key in enumerate(self.context_keys):
            if key in context:
                raw = context[key]
                if isinstance(raw, list) and key not in self._sequence and not self._multi_valued(key):
                    raise ContextError(key, "expected a single value, got a list", raw)
                try:
                    ids[j] = self.encoder.sparse(key, raw)
                except (RecsysError, OverflowError, ValueError, TypeError) as exc:
                    raise ContextError(key, _one_line(exc, "invalid value"), raw) from None
                if key in self._sequence:
                    limit = next(f.max_length for f in self.schema.sequences if f.name == key)
                    ids[j] = ids[j][:limit]
        return EncodedContext(dense, ids)

    def _multi_valued(self, key: str) -> bool:
        return any(f.name == key and f.separator is not None for f in self.schema.sparse)

    def _several(self, key: str) -> bool:
        return key in self._sequence or self._multi_valued(key)

    # ---- rows -------------------------------------------------------------------------------
    def block(self, user: bytes | None, items: Sequence[bytes | None], context: EncodedContext) -> RowBlock:
        """One user's record, B item records and the context → the B rows' model inputs."""
        users = self.user.decode_many([user])
        decoded = self.item.decode_many(list(items))
        block = self.assemble(users, decoded, context)
        block.out_of_range_user = bool(len(users.out_of_range))
        block.out_of_range_items = tuple(decoded.out_of_range.tolist())
        return block

    def assemble(self, user: EntityBatch, items: EntityBatch, context: EncodedContext) -> RowBlock:
        rows = items.dense.shape[0]
        dense = np.empty((rows, self.dense_dim), dtype=np.float32)  # (B, D)
        dense[:, self._cols[Entity.USER]] = user.dense[0]
        dense[:, self._cols[Entity.ITEM]] = items.dense
        dense[:, self._cols[Entity.CONTEXT]] = context.dense
        lengths = np.empty((len(self.keys), rows), dtype=np.int32)  # (K, B)
        values: list[np.ndarray] = []
        for k, (entity, j) in enumerate(self._sources):
            if entity is Entity.ITEM:
                lengths[k] = items.lengths[:, j]
                values.append(items.values[j])
            elif entity is Entity.DERIVED:  # filled below, from the other columns
                lengths[k] = 1
                values.append(np.empty(0, np.int64))
            else:  # user and context: the same ids in every row
                ids = user.values[j] if entity is Entity.USER else context.ids[j]
                lengths[k] = len(ids)
                values.append(np.full(rows, ids[0], dtype=np.int64) if len(ids) == 1 else np.tile(ids, rows))
        if self.derived:
            self._derive(dense, lengths, values)
        return RowBlock(dense, lengths, values)

    def _derive(self, dense: np.ndarray, lengths: np.ndarray, values: list[np.ndarray]) -> None:
        """Compute the generated features of a block in place: a dense one fills its column of ``dense``, a
        sparse one its key (one id per row), from the inputs' columns as offline (``recipes.derive``)."""
        columns: dict[str, np.ndarray] = {}
        for name, is_dense, index in self._derived_inputs:
            columns[name] = dense[:, index] if is_dense else _first_ids(lengths[index], values[index])
        for feature, index in self._derived_targets:
            computed = derive(feature, columns, self.lookups)
            if isinstance(feature, DenseFeature):
                dense[:, index] = computed
            else:
                values[index] = computed.astype(np.int64, copy=False)

    def dummy(self, rows: int) -> RowBlock:
        """Default records for ``rows`` unknown items of an unknown user: for warming a model up."""
        return self.block(None, [None] * rows, self._default_context)


def merge(blocks: Sequence[RowBlock], keys: list[str]) -> Batch:
    """Requests' blocks → one Batch, rows in block order (what the batcher scores in one forward)."""
    if len(blocks) == 1:
        block = blocks[0]
        dense, lengths = block.dense, block.lengths.reshape(-1)
        values = np.concatenate(block.values) if block.values else np.empty(0, np.int64)
    else:
        dense = np.concatenate([b.dense for b in blocks])  # (ΣB, D)
        lengths = np.concatenate([b.lengths for b in blocks], axis=1).reshape(-1)  # (K * ΣB,)
        parts = [b.values[k] for k in range(len(keys)) for b in blocks]
        values = np.concatenate(parts) if parts else np.empty(0, np.int64)
    rows = dense.shape[0]
    sparse = KeyedJaggedTensor(keys=keys, values=torch.from_numpy(values), lengths=torch.from_numpy(lengths))
    return Batch(dense=torch.from_numpy(dense), sparse=sparse, labels=torch.zeros(rows))


def _first_ids(lengths: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """One id per row of a single-valued key ((B,) lengths, their ids concatenated): the row's id, the first of
    a list an online update may have stored, OOV for an empty one."""
    if len(ids) == len(lengths) and (lengths == 1).all():
        return ids
    starts = np.cumsum(lengths, dtype=np.int64) - lengths
    if len(ids) == 0:
        return np.full(len(lengths), OOV_INDEX, np.int64)
    return np.where(lengths > 0, ids[np.minimum(starts, len(ids) - 1)], OOV_INDEX).astype(np.int64)


def _one_line(exc: BaseException, fallback: str) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else fallback
