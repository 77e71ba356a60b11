"""Entity records: one packed byte string per user or item, laid out by the Schema.

A record holds every model input that describes one entity, already encoded as
``prepare`` encodes it (dense values transformed, categorical values as table row
indices, histories newest first and capped), so serving does no per-feature work.
Layout, little-endian, for the entity's features in schema order::

    float32[n_dense]      dense features (schema.dense with this entity)
    int32[n_keys]         lengths of the sparse then sequence features (schema order)
    int64[sum(lengths)]   their row indices, feature after feature

One record per key lets a request read its user and all its items with one MGET.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import log1p

import numpy as np

from recsys.data.transforms import OOV_INDEX
from recsys.errors import RecsysError
from recsys.schema import DenseFeature, Entity, Schema

_F32, _I32, _I64 = np.dtype("<f4"), np.dtype("<i4"), np.dtype("<i8")


def transform_dense(feature: DenseFeature, raw: float | None) -> float:
    """One raw value → the model input, exactly as ``recsys.data.transforms.dense_expr`` does it."""
    value = feature.fill_value if raw is None else float(raw)
    if feature.clip_min is not None:
        value = max(value, feature.clip_min)
    if feature.transform.uses_log1p:
        value = log1p(value)
    if feature.transform.standardizes:
        if feature.mean is None or feature.std is None:
            raise RecsysError(f"schema: dense feature '{feature.name}' has no mean/std")
        value = (value - feature.mean) / (feature.std if feature.std > 0 else 1.0)
    return float(np.float32(value))


@dataclass
class EntityBatch:
    """Decoded records of n entities: ``dense`` (n, n_dense) float32, ``lengths`` (n, n_keys) int32,
    ``values[k]`` the concatenated int64 indices of key k over the n entities."""

    dense: np.ndarray
    lengths: np.ndarray
    values: list[np.ndarray]


class RecordCodec:
    """Packs and unpacks the records of one entity (user or item) of a schema."""

    def __init__(self, schema: Schema, entity: Entity) -> None:
        self.entity = entity
        self.dense_features = [f for f in schema.dense if f.entity is entity]
        self.keys = [f.name for f in [*schema.sparse, *schema.sequences] if f.entity is entity]
        self.sequence_keys = {f.name for f in schema.sequences if f.entity is entity}
        self.n_dense, self.n_keys = len(self.dense_features), len(self.keys)
        self._head = self.n_dense * 4 + self.n_keys * 4
        # What an unknown entity gets: dense fill values transformed, index 0 (OOV) for
        # categorical features, empty histories.
        self.default_dense = np.array([transform_dense(f, None) for f in self.dense_features], dtype=np.float32)
        self.default_lengths = np.array([0 if k in self.sequence_keys else 1 for k in self.keys], dtype=np.int32)
        self.default = self.encode(self.default_dense, [np.full(n, OOV_INDEX, np.int64) for n in self.default_lengths])

    def encode(self, dense: np.ndarray, ids: list[np.ndarray]) -> bytes:
        """``dense`` (n_dense,) and one int array per key → the record's bytes."""
        if len(ids) != self.n_keys or np.shape(dense) != (self.n_dense,):
            raise RecsysError(f"{self.entity} record: expected {self.n_dense} dense values and {self.n_keys} "
                              f"id lists, got {np.shape(dense)} and {len(ids)}")
        lengths = np.array([len(v) for v in ids], dtype=_I32)
        values = np.concatenate([np.asarray(v, dtype=_I64) for v in ids]) if ids else np.empty(0, _I64)
        return np.asarray(dense, dtype=_F32).tobytes() + lengths.tobytes() + values.astype(_I64).tobytes()

    def decode(self, blob: bytes) -> tuple[np.ndarray, list[np.ndarray]]:
        """The inverse of ``encode``."""
        batch = self.decode_many([blob])
        return batch.dense[0], [v.copy() for v in batch.values]

    def decode_many(self, blobs: list[bytes | None]) -> EntityBatch:
        """Records (None for unknown entities → the default record) → one EntityBatch.

        Records of one size (every item with scalar features, the common case) decode in a
        few vectorised numpy calls; mixed sizes fall back to one slice per record.
        """
        blobs = [self.default if b is None else b for b in blobs]
        n = len(blobs)
        if n and len(set(map(len, blobs))) == 1:
            width = len(blobs[0])
            raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(n, width)
            dense = raw[:, : self.n_dense * 4].copy().view(_F32)
            lengths = raw[:, self.n_dense * 4 : self._head].copy().view(_I32)
            if (lengths == lengths[0]).all():
                values = raw[:, self._head :].copy().view(_I64)  # (n, sum of lengths)
                if (lengths[0] == 1).all():  # one id per key: a key's ids are a column
                    columns = np.ascontiguousarray(values.T)  # (n_keys, n)
                    return EntityBatch(dense, lengths, list(columns))
                bounds = np.concatenate([[0], np.cumsum(lengths[0])])
                return EntityBatch(dense, lengths,
                                   [values[:, bounds[k] : bounds[k + 1]].reshape(-1) for k in range(self.n_keys)])
        dense = np.empty((n, self.n_dense), dtype=np.float32)
        lengths = np.empty((n, self.n_keys), dtype=np.int32)
        per_key: list[list[np.ndarray]] = [[] for _ in range(self.n_keys)]
        for row, blob in enumerate(blobs):
            if len(blob) < self._head:
                raise RecsysError(f"{self.entity} record of {len(blob)} bytes is shorter than its "
                                  f"{self._head}-byte header: written by another schema?")
            dense[row] = np.frombuffer(blob, _F32, self.n_dense)
            lengths[row] = np.frombuffer(blob, _I32, self.n_keys, offset=self.n_dense * 4)
            values = np.frombuffer(blob, _I64, offset=self._head)
            if len(values) != int(lengths[row].sum()):
                raise RecsysError(f"{self.entity} record: {len(values)} ids but lengths sum to {lengths[row].sum()}")
            start = 0
            for k, length in enumerate(lengths[row]):
                per_key[k].append(values[start : start + length])
                start += int(length)
        return EntityBatch(dense, lengths, [np.concatenate(v) if v else np.empty(0, np.int64) for v in per_key])
