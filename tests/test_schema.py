"""Schema: JSON/YAML round trip and validation errors that name the field at fault."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys.data.formats.criteo import default_schema
from recsys.data.synth import CtrConfig, ctr_schema
from recsys.errors import RecsysError
from recsys.schema import Encoding, Entity, Schema


def test_json_round_trip_keeps_every_field(tmp_path: Path) -> None:
    schema = ctr_schema(CtrConfig(rows=1000))
    path = schema.save(tmp_path)
    assert path.name == "schema.json"
    loaded = Schema.load(tmp_path)
    assert loaded == schema
    assert loaded.sparse_keys[-2:] == ["hist_item_id", "hist_category"]
    assert loaded.feature_table("hist_item_id").name == "item_id"
    assert set(loaded.features_of(Entity.USER)) >= {"user_id", "C1", "I1", "hist_item_id"}


def test_yaml_schema_gets_default_tables(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "default_embedding_dim: 8\n"
        "sparse:\n  - {name: user, entity: user}\n  - {name: tags, entity: item, separator: '|'}\n"
        "tables:\n  - {name: tags, encoding: hash, hash_buckets: 100}\n"
        "labels: [{name: click}]\n"
    )
    schema = Schema.load(path)
    assert schema.table("user").embedding_dim == 8
    assert schema.table("user").encoding is Encoding.VOCAB
    assert schema.table("tags").cardinality == 100
    assert schema.unresolved() == ["table 'user' has no cardinality"]
    with pytest.raises(RecsysError, match="table 'user' has no cardinality"):
        schema.require_resolved()


def _error_for(data: dict, tmp_path: Path) -> str:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(RecsysError) as info:
        Schema.load(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_unknown_key_is_named_with_its_feature(tmp_path: Path) -> None:
    data = default_schema().model_dump(mode="json")
    data["sparse"][3]["embeding_dim"] = 8
    message = _error_for(data, tmp_path)
    assert "sparse[3]('C4').embeding_dim" in message and "Extra inputs" in message


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["dense"].append({"name": "C1", "entity": "user"}), "column 'C1' is declared twice"),
        (lambda d: d.update(labels=[]), "needs at least one label"),
        (lambda d: d["sparse"][0].update(entity="shop"), "sparse[0]('C1').entity"),
        (lambda d: d["sparse"][0].update(name="1bad"), "sparse[0]('1bad').name"),
        (lambda d: d["tables"][0].update(encoding="hash"), "needs hash_buckets"),
        (lambda d: d["tables"][0].update(encoding="identity"), "needs cardinality"),
        (lambda d: d["tables"].append({"name": "orphan"}), "table 'orphan' is used by no feature"),
        (lambda d: d.update(sequences=[{"name": "h", "table": "nope", "max_length": 5}]), "uses table 'nope'"),
        (lambda d: d["tables"][1].update(embedding_dim=0), "tables[1]('C2').embedding_dim"),
    ],
)
def test_invalid_schema_names_the_problem(tmp_path: Path, mutate, expected: str) -> None:
    data = default_schema().model_dump(mode="json")
    mutate(data)
    assert expected in _error_for(data, tmp_path)


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="schema file not found"):
        Schema.load(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("sparse: [unclosed\n")
    with pytest.raises(RecsysError, match="broken.yaml: not valid YAML"):
        Schema.load(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(RecsysError, match="expected a mapping"):
        Schema.load(listed)


def test_unreadable_schema_files_are_one_line(tmp_path: Path) -> None:
    """What an artifact or data folder may hold instead of a schema: bytes, deep nesting."""
    binary = tmp_path / "binary.json"
    binary.write_bytes(bytes(range(256)))
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    for path, expected in [(binary, "not valid text: not UTF-8"), (deep, "not valid JSON")]:
        with pytest.raises(RecsysError, match=expected) as error:
            Schema.load(path)
        assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unused_generated_and_interaction_keys_are_not_written() -> None:
    """A schema without generated features or an interaction mask serialises as before they existed, so runs
    started earlier resume (their schema digest is unchanged); with them, they round-trip."""
    from recsys.schema import Derivation, DenseFeature, Entity, Label, Schema, SparseFeature

    plain = Schema(dense=[DenseFeature(name="d", entity=Entity.USER)],
                   sparse=[SparseFeature(name="s", entity=Entity.ITEM)], labels=[Label(name="y")])
    text = plain.to_json()
    assert '"derived"' not in text and '"interactions"' not in text
    assert Schema.model_validate_json(text) == plain
    rich = plain.model_copy(update={
        "dense": [*plain.dense, DenseFeature(name="g", entity=Entity.DERIVED, transform="standardize", clip_min=None,
                                             mean=0.0, std=1.0, derived=Derivation(op="square", inputs=["d"]))],
        "interactions": [("s", "d")]})
    rich = Schema.model_validate(rich.model_dump())
    again = Schema.model_validate_json(rich.to_json())
    assert again == rich and again.dense[1].derived is not None and again.interactions == [("s", "d")]
    assert again.dense[0].derived is None
