"""Quantised inference tables against the spec: fbgemm's int8/int4 lookups decode to ``reference_dequantize``'s
table, for pooled (bag) and un-pooled collections in one module; bytes as served, from the tables' shapes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from kernels.quantize import (
    BITS,
    SCALE_BIAS_BYTES,
    dense_bytes,
    quantize_tables,
    reference_dequantize,
    served_embedding_bytes,
    table_precisions,
)

ROWS = {"a": 1000, "b": 37, "h": 500, "g": 64}
DIMS = {"a": 32, "b": 16, "h": 8, "g": 24}


class _Tables(nn.Module):
    """Several physical tables in several collections (a bag collection, two un-pooled ones), plus an MLP."""

    def __init__(self, dims: dict[str, int] = DIMS) -> None:
        super().__init__()
        self.bags = EmbeddingBagCollection(tables=[
            EmbeddingBagConfig(name="a", embedding_dim=dims["a"], num_embeddings=ROWS["a"], feature_names=["fa"]),
            EmbeddingBagConfig(name="b", embedding_dim=dims["b"], num_embeddings=ROWS["b"], feature_names=["fb"],
                               pooling=PoolingType.MEAN)])
        self.sequences = nn.ModuleList([
            EmbeddingCollection(tables=[EmbeddingConfig(name="h", embedding_dim=dims["h"], num_embeddings=ROWS["h"],
                                                        feature_names=["fh", "fi"])]),
            EmbeddingCollection(tables=[EmbeddingConfig(name="g", embedding_dim=dims["g"], num_embeddings=ROWS["g"],
                                                        feature_names=["fg"])])])
        self.mlp = nn.Linear(4, 3)
        with torch.no_grad():  # rows of different spreads, so each row gets its own scale
            for weight in self.parameters():
                weight.mul_(torch.logspace(-2, 1, weight.shape[0]).unsqueeze(1) if weight.dim() == 2 else 1)

    def lookups(self, kjt: KeyedJaggedTensor) -> list[torch.Tensor]:
        pooled = self.bags(kjt).values()  # (B, Σ bag dims)
        return [pooled, *(jt.values() for ec in self.sequences for jt in ec(kjt).values())]


def _batch(seed: int = 0, rows: int = 64) -> KeyedJaggedTensor:
    generator = torch.Generator().manual_seed(seed)
    keys, tables = ["fa", "fb", "fh", "fi", "fg"], ["a", "b", "h", "h", "g"]
    lengths = torch.randint(0, 4, (len(keys), rows), generator=generator)  # empty bags and histories included
    values = torch.cat([torch.randint(0, ROWS[t], (int(n.sum()),), generator=generator)
                        for t, n in zip(tables, lengths, strict=True)])
    return KeyedJaggedTensor.from_lengths_sync(keys=keys, values=values, lengths=lengths.flatten())


def _row_bytes(dim: int, bits: int) -> int:
    return dim * bits // 8 + (SCALE_BIAS_BYTES if bits < 32 else 0)


def _fbgemm_bytes(tables: dict[str, tuple[int, int]]) -> int:
    """fbgemm's storage of (rows, row bytes) tables: each padded to a 128-byte cache line."""
    return sum(math.ceil(rows * row / 128) * 128 for rows, row in tables.values())


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantised_lookups_decode_to_the_reference(precision: str) -> None:
    model = _Tables()
    spec = copy.deepcopy(model)
    with torch.no_grad():
        for _, weight in spec.named_parameters():
            if weight.shape[0] in ROWS.values():
                weight.copy_(reference_dequantize(weight, BITS[precision]))
    exact = model.lookups(kjt := _batch())
    quantize_tables(model, precision)
    assert type(model.bags).__module__ == "torchrec.quant.embedding_modules"
    assert all(type(ec).__module__ == "torchrec.quant.embedding_modules" for ec in model.sequences)
    assert type(model.mlp) is nn.Linear
    assert table_precisions(model) == dict.fromkeys(DIMS, precision)
    with torch.inference_mode():
        got = model.lookups(kjt)
    for fast, reference, float32 in zip(got, spec.lookups(kjt), exact, strict=True):
        assert fast.dtype == torch.float32
        torch.testing.assert_close(fast, reference.detach(), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(fast, float32.detach(), rtol=1e-5, atol=1e-5)  # it did quantise


def test_reference_error_is_half_a_step() -> None:
    weight = torch.randn(200, 32)
    for bits in (8, 4):
        decoded = reference_dequantize(weight, bits)
        step = (weight.max(1).values - weight.min(1).values) / (2**bits - 1)
        assert ((decoded - weight).abs().max(1).values <= step * 0.5 * 1.01 + 1e-3 * step).all()
    constant = torch.full((3, 8), 0.25)
    assert torch.equal(reference_dequantize(constant, 4), constant)


@pytest.mark.parametrize("precision", ["fp32", "int8", "int4"])
def test_bytes_as_served(precision: str) -> None:
    model = _Tables()
    fp32_tables = served_embedding_bytes(model)
    assert fp32_tables == sum(ROWS[t] * DIMS[t] * 4 for t in ROWS)
    dense = dense_bytes(model)
    assert dense == (4 * 3 + 3) * 4
    quantize_tables(model, precision)
    bits = BITS[precision]
    served = served_embedding_bytes(model)
    if precision == "fp32":
        assert served == fp32_tables
    else:  # codes plus the fp16 scale and bias of every row, each table padded to a cache line
        assert served == _fbgemm_bytes({t: (ROWS[t], _row_bytes(DIMS[t], bits)) for t in ROWS})
        overhead = sum(ROWS[t] * SCALE_BIAS_BYTES + 128 for t in ROWS)
        assert fp32_tables * bits / 32 < served <= fp32_tables * bits / 32 + overhead
    assert dense_bytes(model) == dense


def test_a_dim_fbgemm_cannot_hold_keeps_the_next_precision_that_fits(caplog: pytest.LogCaptureFixture) -> None:
    dims = {"a": 32, "b": 6, "h": 7, "g": 24}  # b: even but not a multiple of 4; h: odd
    model = _Tables(dims)
    exact = model.lookups(kjt := _batch(1))
    quantize_tables(model, "int4")
    assert table_precisions(model) == {"a": "int4", "b": "int8", "h": "fp32", "g": "int4"}
    assert "table 'b' (dim 6) served as int8" in caplog.text and "table 'h' (dim 7) served as fp32" in caplog.text
    assert served_embedding_bytes(model) == _fbgemm_bytes({"a": (ROWS["a"], 20), "b": (ROWS["b"], 10),
                                                           "h": (ROWS["h"], 28), "g": (ROWS["g"], 16)})
    with torch.inference_mode():
        got = model.lookups(kjt)
    torch.testing.assert_close(got[1], exact[1].detach())  # the fp32 table's rows, exactly


def test_fp32_leaves_the_model_alone_and_unknown_precisions_are_refused() -> None:
    model = _Tables()
    assert quantize_tables(model, "fp32") is model and isinstance(model.bags, EmbeddingBagCollection)
    assert table_precisions(model) == dict.fromkeys(DIMS, "fp32")
    with pytest.raises(ValueError, match="precision 'int3'"):
        quantize_tables(model, "int3")
