"""Online updates of the active version: a user's new interaction, or new raw feature values.

``append_event`` is what a product backend calls when a user interacts with an item:
each of the user's sequence features (histories, newest first) gets the item's index
in that feature's table prepended and is capped at its ``max_length``; the item joins
the user's seen list. ``set_features`` re-encodes raw values (as ``prepare`` would) and
rewrites one entity's record; generated features (entity ``derived``) are not in records
and cannot be set (the service computes them from their inputs). Both read the current record and write it back: two
concurrent updates of the same entity can lose one (last writer wins), and an update
racing a ``materialize`` commit lands in the version that was active when it wrote.

Both first check that the active version was materialised for records laid out as the
artifact they encode with lays them out (``codec.layout_fingerprint``): an update encoded
with another model's vocabularies would be read as other ids. (A ``materialize`` for
another model committing between that check and the write is not caught.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from recsys.errors import RecsysError
from recsys.schema import Entity, Schema
from services.feature_store.codec import RecordCodec, layout_fingerprint, record_layouts
from services.feature_store.encode import RawEncoder, RawValue
from services.feature_store.store import LAYOUT_META, FeatureStore


def check_id(what: str, value: str) -> None:
    """Refuse an empty or blank id: ``prepare`` strips keys and never keeps an empty one, so a record under such
    an id could never be served."""
    if not value.strip():
        raise RecsysError(f"{what} {value!r}: an id may not be empty or blank")


def check_layout(store: FeatureStore, schema: Schema, artifact: Path) -> str:
    """The active version, when its records are laid out as ``artifact``'s schema and vocabularies lay them out."""
    version = store.active_version()
    if version is None:
        raise RecsysError("feature store: nothing materialised yet (run `recsys features materialize`)")
    meta = store.versions().get(version, {})
    theirs, ours = meta.get(LAYOUT_META), layout_fingerprint(record_layouts(schema, artifact))
    if theirs != ours:
        made_for = meta.get("artifact_dir") or meta.get("artifact") or "an unknown artifact"
        raise RecsysError(f"--artifact {artifact}: the active feature version {version} was materialised for "
                          f"{made_for}, whose records differ (layout {theirs or 'not recorded'} vs {ours}); "
                          "upsert with that artifact, or materialise for this one first")
    return version


def _sequence_sources(schema: Schema, user: RecordCodec, item: RecordCodec) -> dict[str, str]:
    """User sequence feature → the item's sparse feature of the same table (whose index it records)."""
    by_table: dict[str, str] = {}
    for feature in schema.sparse:
        if feature.entity is Entity.ITEM and feature.name in item.keys:
            by_table.setdefault(feature.table_name, feature.name)
    return {f.name: by_table[f.table] for f in schema.sequences
            if f.entity is Entity.USER and f.name in user.sequence_keys and f.table in by_table}


def append_event(store: FeatureStore, schema: Schema, user_id: str, item_id: str, *, artifact: Path) -> bytes:
    """Prepend ``item_id`` to the user's histories (a new user starts from the default record); the new record.

    ``schema`` is ``artifact``'s, whose record layout the active version must have.
    """
    check_id("user", user_id)
    check_id("item", item_id)
    check_layout(store, schema, Path(artifact))
    user_codec, item_codec = RecordCodec(schema, Entity.USER), RecordCodec(schema, Entity.ITEM)
    fetched = store.fetch(user_id, [item_id])  # one version for both
    if fetched.version is None:
        raise RecsysError("feature store: nothing materialised yet (run `recsys features materialize`)")
    item_record = fetched.items[0]
    if item_record is None:
        raise RecsysError(f"item '{item_id}': not in the feature store (version {fetched.version})")
    _, item_ids = item_codec.decode(item_record)
    item_values = dict(zip(item_codec.keys, item_ids, strict=True))
    dense, ids = user_codec.decode(fetched.user if fetched.user is not None else user_codec.default)
    max_length = {f.name: f.max_length for f in schema.sequences}
    for sequence, source in _sequence_sources(schema, user_codec, item_codec).items():
        k = user_codec.keys.index(sequence)
        ids[k] = np.concatenate([item_values[source], ids[k]])[: max_length[sequence]]
    record = user_codec.encode(dense, ids)
    store.put_user(user_id, record)
    store.add_seen(user_id, item_id)
    return record


def set_features(store: FeatureStore, schema: Schema, encoder: RawEncoder, entity: Entity | str, entity_id: str,
                 values: Mapping[str, RawValue]) -> bytes:
    """Encode raw ``values`` of ``entity``'s features and rewrite its record (others kept); the new record.

    ``encoder`` reads the vocabularies of the artifact whose record layout the active version must have.
    """
    entity = Entity(entity)
    if entity is Entity.CONTEXT:
        raise RecsysError("context features come with each request; only user and item records are stored")
    check_id(entity.value, entity_id)
    codec = RecordCodec(schema, entity)
    owner = {f.name: f.entity for f in [*schema.dense, *schema.sparse, *schema.sequences]}
    generated = {f.name: f.derived.inputs for f in schema.derived_features if f.derived is not None}
    for name in values:
        if name in generated:
            raise RecsysError(f"feature '{name}' is generated (computed by the ranking service from "
                              f"{', '.join(generated[name])}) and never stored; set its inputs instead")
        if name not in owner:
            raise RecsysError(f"feature '{name}': not in the schema (features of the {entity}: "
                              f"{', '.join(schema.features_of(entity)) or 'none'})")
        if owner[name] is not entity:
            raise RecsysError(f"feature '{name}' describes the {owner[name]}, not the {entity}")
    check_layout(store, schema, encoder.root)
    current = (store.get_users if entity is Entity.USER else store.get_items)([entity_id])[0]
    dense, ids = codec.decode(current if current is not None else codec.default)
    dense_index = {f.name: j for j, f in enumerate(codec.dense_features)}
    max_length = {f.name: f.max_length for f in schema.sequences}
    for name, raw in values.items():
        if name in dense_index:
            dense[dense_index[name]] = encoder.dense(name, raw)
        else:
            encoded = encoder.sparse(name, raw)
            ids[codec.keys.index(name)] = encoded[: max_length[name]] if name in max_length else encoded
    record = codec.encode(dense, ids)
    (store.put_user if entity is Entity.USER else store.put_item)(entity_id, record)
    return record
