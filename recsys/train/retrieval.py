"""What the trainer does for retrievers besides training: hand them the training interactions, export item vectors.

``training_interactions`` reads the training split's user_id and item_id row
indices, which a graph retriever (``attach_interactions``, interface 3 of issue 14)
builds its user-item graph from; every process reads them before sharding.

``catalogue_vectors`` embeds the catalogue (``recsys.eval.retrieval.item_catalogue``:
every item of the data, with its item-entity features) with the unsharded model
rank 0 assembles for the artifact: the exact model ``artifact.load`` rebuilds, so
the exported vectors are the ones a reloaded model gives.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from recsys.artifact import ItemVectors
from recsys.data.layout import split_files
from recsys.errors import RecsysError
from recsys.models.candidates import ITEM_ID, USER_ID
from recsys.models.retriever import Retriever
from recsys.schema import Schema

CATALOGUE_BATCH = 4096


def training_interactions(data_dir: Path, schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """(users, items): int64 row indices into the user_id and item_id tables, one pair per training row."""
    missing = [f for f in (USER_ID, ITEM_ID) if f not in schema.sparse_keys]
    if missing:
        raise RecsysError(f"{data_dir}: the model needs the interactions of user_id and item_id, but the schema "
                          f"has no sparse feature '{missing[0]}'")
    users, items = [], []
    for file in split_files(data_dir, "train"):
        table = pq.read_table(file, columns=[USER_ID, ITEM_ID])
        users.append(table.column(USER_ID).to_numpy().astype(np.int64))
        items.append(table.column(ITEM_ID).to_numpy().astype(np.int64))
    if not users:
        raise RecsysError(f"{data_dir / 'train'}: no training rows")
    return np.concatenate(users), np.concatenate(items)


@torch.no_grad()
def catalogue_vectors(model: Retriever, data_dir: Path, schema: Schema) -> ItemVectors:
    """The (N, d) vectors of every catalogue item, in catalogue order, with their raw keys."""
    from recsys.eval.retrieval import item_catalogue

    was_training = model.training
    model.eval()
    catalogue = item_catalogue(data_dir, schema)
    vectors = torch.cat([model.item_vectors(batch) for batch in catalogue.batches(CATALOGUE_BATCH)])
    model.train(was_training)
    return ItemVectors(list(catalogue.keys), vectors.float(), model.similarity.value)
