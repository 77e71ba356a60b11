"""The Batch: the only thing a model's forward sees."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One mini-batch in model input order (see ``Schema.sparse_keys``).

    dense:  (B, D) float32, the schema's dense features after their transforms.
    sparse: KeyedJaggedTensor over the pooled sparse features then the sequence
            features; a sequence is a jagged feature of at most max_length ids, newest first.
            Values are int64 row indices of each feature's table, lengths int32.
    labels: (B,) float32, or (B, L) when the schema has L > 1 labels; all ones for an
            ``implicit`` schema (every row is an observed interaction).
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=torch.device(device), non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(dense=self.dense.pin_memory(), sparse=self.sparse.pin_memory(), labels=self.labels.pin_memory())
