"""How close a plain PyTorch DLRM-shaped model gets to the synthetic data's Bayes-optimal AUC.

The ``ctr`` generator promises a ground truth that a good model can learn; this
measures the promise with the simplest honest learner (no torchrec): one
embedding table per schema table (sparse gradients, Adagrad), a bottom MLP on the
dense features, pairwise dot products of all feature vectors, a top MLP; one pass
over the train split through ``ParquetReader``; test AUC next to the Bayes AUC of
the same test rows. The gap it leaves is an upper bound for what a tuned model
must close.

    .venv/bin/python benchmarks/bench_synth_learnability.py --rows 1000000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import machine  # noqa: E402

from recsys.data.pipeline import PrepareOptions  # noqa: E402
from recsys.data.reader import ParquetReader  # noqa: E402
from recsys.data.synth import TRUE_PROBABILITY, CtrConfig, synth_ctr  # noqa: E402
from recsys.schema import Schema  # noqa: E402
from recsys.types import Batch  # noqa: E402

HERE = Path(__file__).resolve().parent


class PlainDLRM(nn.Module):
    """DLRM's shape in plain PyTorch: tables shared by name, mean/sum pooling as the schema says."""

    def __init__(self, schema: Schema, dim: int = 16) -> None:
        super().__init__()
        self.tables = nn.ParameterDict()
        for table in schema.tables:
            bound = (1.0 / table.cardinality) ** 0.5
            self.tables[table.name] = nn.Parameter(torch.empty(table.cardinality, dim).uniform_(-bound, bound))
        features = [*schema.sparse, *schema.sequences]
        self.lookups = [(f.name, f.table_name, f.pooling.value) for f in features]
        self.bottom = nn.Sequential(nn.Linear(len(schema.dense), 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU())
        n = len(features) + 1
        self.pairs = torch.triu_indices(n, n, offset=1)
        self.top = nn.Sequential(nn.Linear(dim + self.pairs.shape[1], 256), nn.ReLU(), nn.Linear(256, 64), nn.ReLU(),
                                 nn.Linear(64, 1))

    def forward(self, batch: Batch) -> torch.Tensor:
        vectors = [self.bottom(batch.dense)]  # (B, dim)
        features = batch.sparse.to_dict()
        for name, table, pooling in self.lookups:
            jagged = features[name]
            vectors.append(F.embedding_bag(jagged.values(), self.tables[table], jagged.offsets()[:-1].contiguous(),
                                           mode=pooling, sparse=True, include_last_offset=False))
        stacked = torch.stack(vectors, dim=1)  # (B, n, dim)
        dots = torch.bmm(stacked, stacked.transpose(1, 2))[:, self.pairs[0], self.pairs[1]]  # (B, n(n-1)/2)
        return self.top(torch.cat([vectors[0], dots], dim=1)).squeeze(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--lr-sparse", type=float, default=0.1, help="Adagrad, embedding tables")
    parser.add_argument("--lr-dense", type=float, default=1e-3, help="Adam, MLPs")
    parser.add_argument("--workdir", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "synth_learnability.json")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    torch.sparse.check_sparse_tensor_invariants.disable()  # embedding_bag's own gradients are well-formed

    data = args.workdir / f"ctr-{args.rows}-seed{args.seed}"
    if not (data / "stats.json").is_file():
        synth_ctr(CtrConfig(rows=args.rows, seed=args.seed), data, PrepareOptions(seed=args.seed, overwrite=True))
    schema = Schema.load(data)
    model = PlainDLRM(schema)
    sparse_optimizer = torch.optim.Adagrad(list(model.tables.parameters()), lr=args.lr_sparse)
    dense_optimizer = torch.optim.Adam([*model.bottom.parameters(), *model.top.parameters()], lr=args.lr_dense)

    train = ParquetReader(data, "train", batch_size=args.batch_size, shuffle=True, seed=args.seed)
    test = ParquetReader(data, "test", batch_size=8192)
    curve: list[dict[str, Any]] = []
    start = time.perf_counter()
    samples = 0
    for epoch in range(args.epochs):
        train.set_epoch(epoch)
        model.train()
        for batch in train:
            loss = F.binary_cross_entropy_with_logits(model(batch), batch.labels)
            sparse_optimizer.zero_grad()
            dense_optimizer.zero_grad()
            loss.backward()
            sparse_optimizer.step()
            dense_optimizer.step()
            samples += batch.batch_size
        train_seconds = time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(model(batch)) for batch in test]).numpy()
        labels = np.concatenate([batch.labels.numpy() for batch in test])
        curve.append({"epoch": epoch + 1, "test_auc": float(roc_auc_score(labels, scores)),
                      "train_seconds": train_seconds, "samples_per_s": samples / train_seconds})
        print(f"epoch {epoch + 1}: test AUC {curve[-1]['test_auc']:.4f}", file=sys.stderr, flush=True)

    truth = pl.read_parquet(data / "test", columns=["label", TRUE_PROBABILITY])
    bayes = float(roc_auc_score(truth["label"], truth[TRUE_PROBABILITY]))
    result = {"benchmark": "synth_learnability", "machine": machine(), "rows": args.rows, "seed": args.seed,
              "batch_size": args.batch_size, "lr_sparse": args.lr_sparse, "lr_dense": args.lr_dense,
              "bayes_test_auc": bayes, "best_test_auc": max(c["test_auc"] for c in curve),
              "gap": bayes - max(c["test_auc"] for c in curve), "epochs": curve}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.rows:,} rows: test AUC {result['best_test_auc']:.4f}, Bayes {bayes:.4f}, gap {result['gap']:.4f} "
          f"({curve[-1]['samples_per_s']:,.0f} samples/s); wrote {args.out}")


if __name__ == "__main__":
    main()
