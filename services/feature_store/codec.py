"""Entity records: one packed byte string per user or item, laid out by the Schema.

A record holds every model input that describes one entity, already encoded as
``prepare`` encodes it (dense values transformed, categorical values as table row
indices, histories newest first and capped), so serving does no per-feature work.
Layout, little-endian, for the entity's features in schema order::

    float32[n_dense]      dense features (schema.dense with this entity)
    int32[n_keys]         lengths of the sparse then sequence features (schema order)
    int64[sum(lengths)]   their row indices, feature after feature

One record per key lets a request read its user and all its items with one MGET.
Generated features (entity ``derived``) are in no record: the ranking service computes
them from the record's (and the request's) inputs with the artifact's recipes.

Records carry no schema: what their bytes mean is fixed by the schema and the
vocabularies that encoded them (``record_layouts``). Materialisation stores the digest
of that (``layout_fingerprint``) with each feature version, so that a reader with
another schema or other vocabularies can tell before it decodes a byte.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from math import log1p
from pathlib import Path

import numpy as np

from recsys.data.transforms import OOV_INDEX
from recsys.errors import RecsysError
from recsys.schema import DenseFeature, Encoding, Entity, Schema, Table

_F32, _I32, _I64 = np.dtype("<f4"), np.dtype("<i4"), np.dtype("<i8")
_NO_LIMIT = np.iinfo(np.uint64).max

RecordLayouts = dict[Entity, list[tuple[str, ...]]]


def record_layouts(schema: Schema, root: Path) -> RecordLayouts:
    """What the user and item records hold for ``schema``: the features in order, their transforms, and their
    tables' encodings, sizes and vocabularies (``root``: the artifact or data directory holding them).

    Two schemas with equal layouts read each other's records identically (same values, same rows).
    """
    layouts: RecordLayouts = {}
    for entity in (Entity.USER, Entity.ITEM):
        layout: list[tuple[str, ...]] = []
        for f in schema.dense:
            if f.entity is entity:
                layout.append(("dense", f.name, f.transform.value, f"mean={f.mean}", f"std={f.std}",
                               f"clip_min={f.clip_min}", f"fill_value={f.fill_value}"))
        for f in [*schema.sparse, *schema.sequences]:
            if f.entity is entity:
                table = schema.table(f.table_name)
                layout.append(("ids", f.name, f"table={table.name}", table.encoding.value,
                               f"cardinality={table.cardinality}", f"vocab={_vocab_digest(table, root)}"))
        layouts[entity] = layout
    return layouts


def _vocab_digest(table: Table, root: Path) -> str:
    if table.encoding is not Encoding.VOCAB:
        return "-"
    path = root / (table.vocab_file or f"vocab/{table.name}.parquet")
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()[:12]
    except OSError:
        return "missing"


def layout_fingerprint(layouts: RecordLayouts) -> str:
    """A stable digest of ``record_layouts``: equal for records any two readers decode alike."""
    canonical = json.dumps({entity.value: [list(f) for f in layouts[entity]] for entity in (Entity.USER, Entity.ITEM)},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def layout_difference(reference: RecordLayouts, candidate: RecordLayouts) -> str | None:
    """The first feature whose record layout differs, in words (None: none differs)."""
    for entity in (Entity.USER, Entity.ITEM):
        mine, theirs = reference[entity], candidate[entity]
        for a, b in zip(mine, theirs):
            if a != b:
                return f"{entity.value} feature {a[1]} ({', '.join(a[2:])}) vs {b[1]} ({', '.join(b[2:])})"
        if len(mine) != len(theirs):
            return f"{len(mine)} vs {len(theirs)} {entity.value} features"
    return None


def pre_standardized(feature: DenseFeature, raw: float | None) -> float:
    """Fill, clip and log1p of one raw value, in float64: what prepare takes the statistics over (as float32)."""
    value = feature.fill_value if raw is None else float(raw)
    if feature.clip_min is not None:
        value = max(value, feature.clip_min)
    if feature.transform.uses_log1p:
        value = log1p(value)
    return value


def transform_dense(feature: DenseFeature, raw: float | None) -> float:
    """One raw value → the model input, exactly as ``recsys.data.transforms.dense_expr`` does it."""
    value = pre_standardized(feature, raw)
    if feature.transform.standardizes:
        if feature.mean is None or feature.std is None:
            raise RecsysError(f"schema: dense feature '{feature.name}' has no mean/std")
        value = (value - feature.mean) / (feature.std if feature.std > 0 else 1.0)
    return float(np.float32(value))


class RecordError(RecsysError):
    """A record that cannot be decoded with this schema (truncated, or written by another one)."""

    def __init__(self, entity: Entity, row: int, message: str) -> None:
        super().__init__(message)
        self.entity, self.row = entity, row  # row: the record's position in the decoded list


@dataclass
class EntityBatch:
    """Decoded records of n entities: ``dense`` (n, n_dense) float32, ``lengths`` (n, n_keys) int32,
    ``values[k]`` the concatenated int64 indices of key k over the n entities; ``out_of_range`` the rows that
    held an index outside its table (decoded as the OOV row)."""

    dense: np.ndarray
    lengths: np.ndarray
    values: list[np.ndarray]
    out_of_range: np.ndarray  # (m,) intp, ascending


class RecordCodec:
    """Packs and unpacks the records of one entity (user or item) of a schema."""

    def __init__(self, schema: Schema, entity: Entity) -> None:
        self.entity = entity
        self.dense_features = [f for f in schema.dense if f.entity is entity]
        self.keys = [f.name for f in [*schema.sparse, *schema.sequences] if f.entity is entity]
        self.sequence_keys = {f.name for f in schema.sequences if f.entity is entity}
        self.n_dense, self.n_keys = len(self.dense_features), len(self.keys)
        # Rows of each key's table: a larger index (or a negative one, as uint64) would make the model's lookup
        # fail or read another table's row; such records come from another data set.
        tables = {f.name: schema.table(f.table_name) for f in [*schema.sparse, *schema.sequences]}
        self.rows = np.array([tables[k].cardinality or _NO_LIMIT for k in self.keys], dtype=np.uint64)
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
        few vectorised numpy calls; mixed sizes fall back to one slice per record. A record
        whose size disagrees with its own lengths raises RecordError naming its position;
        indices outside their table become ``OOV_INDEX`` and the row is listed in ``out_of_range``.
        """
        blobs = [self.default if b is None else b for b in blobs]
        n = len(blobs)
        if n and len(set(map(len, blobs))) == 1:
            width = len(blobs[0])
            raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(n, width)
            if width >= self._head:
                lengths = raw[:, self.n_dense * 4 : self._head].copy().view(_I32)
                first = lengths[0]
                if (lengths == first).all() and (first >= 0).all() and self._head + 8 * int(first.sum()) == width:
                    dense = raw[:, : self.n_dense * 4].copy().view(_F32)
                    values = raw[:, self._head :].copy().view(_I64)  # (n, sum of lengths)
                    out_of_range = self._reset_out_of_range(values, np.repeat(self.rows, first))
                    if (first == 1).all():  # one id per key: a key's ids are a column
                        columns = np.ascontiguousarray(values.T)  # (n_keys, n)
                        return EntityBatch(dense, lengths, list(columns), out_of_range)
                    bounds = np.concatenate([[0], np.cumsum(first)])
                    return EntityBatch(dense, lengths, [values[:, bounds[k] : bounds[k + 1]].reshape(-1)
                                                        for k in range(self.n_keys)], out_of_range)
        dense = np.empty((n, self.n_dense), dtype=np.float32)
        lengths = np.empty((n, self.n_keys), dtype=np.int32)
        per_key: list[list[np.ndarray]] = [[] for _ in range(self.n_keys)]
        out_of_range = []
        for row, blob in enumerate(blobs):
            dense[row], lengths[row], values = self._split(row, blob)
            if len(self._reset_out_of_range(values[None, :], np.repeat(self.rows, lengths[row]))):
                out_of_range.append(row)
            start = 0
            for k, length in enumerate(lengths[row]):
                per_key[k].append(values[start : start + length])
                start += int(length)
        return EntityBatch(dense, lengths, [np.concatenate(v) if v else np.empty(0, np.int64) for v in per_key],
                           np.array(out_of_range, dtype=np.intp))

    def _split(self, row: int, blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One record → (dense, lengths, a writable copy of its ids), or RecordError when its sizes disagree."""
        if len(blob) < self._head or (len(blob) - self._head) % 8:
            raise RecordError(self.entity, row, f"{self.entity} record of {len(blob)} bytes does not fit this "
                              f"schema ({self._head}-byte header, then 8-byte ids): written for another schema?")
        lengths = np.frombuffer(blob, _I32, self.n_keys, offset=self.n_dense * 4)
        values = np.frombuffer(blob, _I64, offset=self._head).copy()
        if (lengths < 0).any() or len(values) != int(lengths.sum()):
            raise RecordError(self.entity, row, f"{self.entity} record holds {len(values)} ids but its lengths "
                              f"say {lengths.tolist()}: written for another schema?")
        return np.frombuffer(blob, _F32, self.n_dense), lengths, values

    @staticmethod
    def _reset_out_of_range(values: np.ndarray, limits: np.ndarray) -> np.ndarray:
        """Set ids outside their table (``values`` (n, L), ``limits`` (L,) rows) to OOV_INDEX, in place; their rows."""
        bad = values.view(np.uint64) >= limits  # a negative id, as uint64, is out of range too
        if not bad.any():
            return np.empty(0, np.intp)
        values[bad] = OOV_INDEX
        return np.flatnonzero(bad.any(axis=1))
