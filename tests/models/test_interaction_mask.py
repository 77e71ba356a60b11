"""Interaction masks (``Schema.interactions``): DLRM keeps only the named pairs; other models refuse a mask."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys import artifact
from recsys.config import EmbeddingConfig
from recsys.errors import RecsysError
from recsys.models import build_model
from recsys.schema import Schema
from recsys.types import Batch
from tests.conftest import train_cli
from tests.models.schemas import small_schema, three_rows

SMALL = {"bottom_mlp": [8, 4], "top_mlp": [8, 1]}


def _masked(schema: Schema, pairs: list[tuple[str, str]]) -> Schema:
    return schema.model_copy(update={"interactions": pairs}, deep=True)


def _top_input(model: torch.nn.Module) -> int:
    return model.over_arch.model[0]._mlp[0]._linear.in_features


def _with_history(batch: Batch, history: list[int], lengths: list[int]) -> Batch:
    """``three_rows`` with another hist_item_id (the last key)."""
    sparse = batch.sparse
    values = sparse.values()[: 6].tolist() + history
    base = sparse.lengths()[: 6].tolist()
    kjt = KeyedJaggedTensor(keys=sparse.keys(), values=torch.tensor(values),
                            lengths=torch.tensor(base + lengths, dtype=torch.int32))
    return Batch(dense=batch.dense, sparse=kjt, labels=batch.labels)


def test_masked_dlrm_scores_from_the_kept_pairs_only() -> None:
    """Vectors [dense, item_id, hist_item_id, city] (the embedding module's order): keep <dense, item_id>
    (named by a dense feature) and <item_id, city>; the top MLP reads D + 2 columns, equal to the unmasked
    interaction's kept columns, and a history (in no kept pair) no longer moves the score while the city does."""
    schema = small_schema()
    torch.manual_seed(0)
    model = build_model("dlrm", _masked(schema, [("d1", "item_id"), ("city", "item_id")]), SMALL, EmbeddingConfig())
    assert model.kept_pairs == 2 and _top_input(model) == 4 + 2
    batch = three_rows(schema)
    assert model.sparse_arch.feature_names == ["item_id", "hist_item_id", "city"]
    dense = model.dense_arch(batch.dense)
    sparse = model.sparse_arch(batch.sparse).pooled.values().view(3, 3, 4)
    vectors = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # (B, 4, D)
    dots = torch.einsum("bid,bjd->bij", vectors, vectors)
    expected = model.over_arch(torch.cat([dense, dots[:, 0, 1:2], dots[:, 1, 3:4]], dim=1)).squeeze(1)
    torch.testing.assert_close(model(batch), expected)
    other_history = _with_history(batch, [7, 8, 9, 1], [1, 2, 1])
    torch.testing.assert_close(model(other_history), model(batch))
    unmasked = build_model("dlrm", schema, SMALL, EmbeddingConfig())
    assert not torch.allclose(unmasked(other_history), unmasked(batch))  # the history matters without a mask
    other_city = Batch(dense=batch.dense, sparse=KeyedJaggedTensor(
        keys=batch.sparse.keys(), values=torch.tensor([1, 4, 5, 2, 0, 0, 2, 3, 6]), lengths=batch.sparse.lengths()),
        labels=batch.labels)
    assert not torch.allclose(model(other_city), model(batch))


def test_mask_without_dense_and_bad_masks_are_one_line_errors() -> None:
    schema = small_schema(dense=0)
    model = build_model("dlrm", _masked(schema, [("item_id", "hist_item_id")]), SMALL, EmbeddingConfig())
    assert _top_input(model) == 1 and model(three_rows(schema)).shape == (3,)
    with pytest.raises(RecsysError, match="no pair of two different DLRM vectors"):
        build_model("dlrm", _masked(schema, []), SMALL, EmbeddingConfig())
    with pytest.raises(RecsysError, match="only 'dot' honours"):
        build_model("dlrm", _masked(small_schema(), [("d0", "city")]), {**SMALL, "interaction": "cat"},
                    EmbeddingConfig())
    for name in ("dcnv2", "autoint"):
        with pytest.raises(RecsysError, match=f"--model {name}: the schema sets an interaction mask"):
            build_model(name, _masked(small_schema(), [("d0", "city")]), {}, EmbeddingConfig())


def test_mask_trains_end_to_end_and_survives_the_artifact(small_ctr: Path, tmp_path: Path) -> None:
    """``recsys train`` on a data set whose schema.json sets two pairs: the exported artifact reloads as a
    DLRM reading D + 2 interaction columns, and its schema keeps the mask."""
    data = tmp_path / "ctr"
    shutil.copytree(small_ctr, data)
    schema = json.loads((data / "schema.json").read_text())
    dense = schema["dense"][0]["name"]
    pairs = [[dense, "C1"], ["C1", "C2"]]
    schema["interactions"] = pairs
    (data / "schema.json").write_text(json.dumps(schema))
    out = tmp_path / "run"
    result = train_cli(data, out, "trainer.batch_size=512", "trainer.max_steps=10")
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = artifact.load(out / "artifact")
    assert [list(p) for p in loaded.schema.interactions] == pairs
    dim = loaded.model.dim
    assert loaded.model.kept_pairs == 2 and _top_input(loaded.model) == dim + 2
    refused = train_cli(data, tmp_path / "run2", "trainer.max_steps=1", model="dcnv2")
    assert refused.returncode == 2 and "interaction mask" in refused.stderr.strip().splitlines()[-1]
