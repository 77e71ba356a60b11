"""Quantized inference tables: every torchrec embedding collection of a model as fbgemm int8 or int4 rows.

``quantize_tables(model, precision)`` swaps, in place, each ``EmbeddingBagCollection`` and
``EmbeddingCollection`` found in ``model`` (whatever embedding module holds them, however many) for
torchrec's quantised one, through torchrec's ``quantize_embeddings``. Their lookups run fbgemm's
``IntNBitTableBatchedEmbeddingBagsCodegen`` (the CPU kernels of fbgemm-gpu-cpu) and return fp32; the rest of
the model (MLPs, attention) stays fp32.

Row-wise asymmetric quantisation, as in Guan et al., "Post-Training 4-Bit Quantization on Embedding Tables"
(2019): a row of ``dim`` values is stored as ``dim`` codes of 8 bits (int8) or 4 bits (int4, two a byte) and
an fp16 scale and bias, x ≈ scale · q + bias, with bias the row's minimum and scale its range / (2^bits − 1).
What differs from the paper: the range is the row's min..max (fbgemm's default), without the paper's
greedy search for a narrower clipping range. What differs from torchrec's defaults:

- rows are not padded on the CPU (row alignment 1, fbgemm's own default there); torchrec pads each row to
  16 bytes for GPU loads, which at dim 32 makes an int4 row (16 bytes of codes + 4 of scale and bias) take
  32 bytes, no less than at dim 48 (and lookups measured no faster).
- a table whose dim fbgemm cannot hold at the precision (a row's codes must fill whole 2-byte words: int8
  needs an even dim, int4 a multiple of 4) gets the next precision that fits (int8, else fp32 rows in the
  same fbgemm kernel), with a warning; ``table_precisions`` reports what every table got.

``reference_dequantize`` is the spec: the fp32 table that fbgemm's quantised rows decode to, in pure torch
(fbgemm's ``FloatOrHalfToFusedNBitRowwiseQuantizedSBHalfRef``). ``served_embedding_bytes`` and
``dense_bytes`` measure a model as it is served.
"""

from __future__ import annotations

import logging
import warnings

import torch
from torch import nn
from torchrec.modules.embedding_configs import BaseEmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection
from torchrec.quant.embedding_modules import EmbeddingCollection as QuantEmbeddingCollection
from torchrec.quant.embedding_modules import quant_prep_customize_row_alignment

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "int8", "int4")  # the table precisions of recsys.config.ServingPrecision (bf16: fp32 tables)
BITS = {"fp32": 32, "int8": 8, "int4": 4}
_DTYPES = {"fp32": torch.float32, "int8": torch.qint8, "int4": torch.quint4x2}  # torchrec's names for them
_NAMES = {"FP32": "fp32", "FP16": "fp16", "INT8": "int8", "INT4": "int4", "INT2": "int2"}  # torchrec DataType
_FLOAT = (EmbeddingBagCollection, EmbeddingCollection)
_QUANT = (QuantEmbeddingBagCollection, QuantEmbeddingCollection)
SCALE_BIAS_BYTES = 4  # an fp16 scale and an fp16 bias at the end of every quantised row


def quantize_tables(model: nn.Module, precision: str) -> nn.Module:
    """``model`` with every torchrec embedding collection's tables stored at ``precision`` ("fp32", "int8" or
    "int4"), swapped in place (the fp32 tables are dropped) and in eval mode. "fp32" leaves it as it is."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return model.eval()
    from torchrec.inference.modules import quantize_embeddings  # imports torchrec's sharders: at first use

    fitting: dict[str, torch.dtype] = {}  # tables that cannot hold ``precision``: the next precision that fits
    for path, collection in _collections(model, _FLOAT):
        for table, dim in _table_dims(collection).items():
            fits = _fitting(precision, dim)
            if fits != precision:
                fitting[table] = _DTYPES[fits]
                log.warning("%s table '%s' (dim %d) served as %s: fbgemm's %s rows need a dim that is a multiple "
                            "of %d", path or "model", table, dim, fits, precision, 16 // BITS[precision])
    quant_prep_customize_row_alignment(model, list(_FLOAT), 1 if _on_cpu(model) else 16)
    with warnings.catch_warnings():  # torchrec calls torch.ao's quantize_dynamic, deprecated in favour of torchao
        warnings.simplefilter("ignore", DeprecationWarning)
        quantized = quantize_embeddings(model, dtype=_DTYPES[precision], inplace=True,
                                        additional_qconfig_spec_keys=[EmbeddingCollection],
                                        additional_mapping={EmbeddingCollection: QuantEmbeddingCollection},
                                        per_table_weight_dtype=fitting or None)
    for path, left in _collections(quantized, _FLOAT):  # torchrec swaps these exact types, not subclasses
        log.warning("%s (%s) not quantised: its tables stay fp32", path or "model", type(left).__name__)
    return quantized.eval()


def _fitting(precision: str, dim: int) -> str:
    """``precision``, or the next wider one whose rows fbgemm can lay out for ``dim``."""
    for candidate in PRECISIONS[PRECISIONS.index(precision)::-1]:
        if candidate == "fp32" or dim * BITS[candidate] % 16 == 0:
            return candidate
    return "fp32"


def table_precisions(model: nn.Module) -> dict[str, str]:
    """Every table of the model's torchrec collections, by name: the precision it is served at."""
    found: dict[str, str] = {}
    for _, collection in _collections(model, _FLOAT + _QUANT):
        for config in _configs(collection):
            found[config.name] = _NAMES[config.data_type.name] if isinstance(collection, _QUANT) else "fp32"
    return found


def served_embedding_bytes(model: nn.Module) -> int:
    """Bytes the model's embedding tables take as served: fbgemm's storage of the quantised collections (codes,
    the per-row fp16 scale and bias, each table's padding to a 128-byte cache line) plus the fp32 weights of
    collections left unquantised."""
    total = 0
    for _, collection in _collections(model, _FLOAT + _QUANT):
        if isinstance(collection, _QUANT):
            # torchrec keeps the fbgemm kernels out of the module tree (``_emb_modules``); their buffers hold the
            # rows in host, device or UVM memory, whichever the tables were placed in.
            for kernel in collection._emb_modules:
                total += sum(_nbytes(getattr(kernel, name)) for name in ("weights_host", "weights_dev",
                                                                            "weights_uvm"))
        else:
            total += sum(_nbytes(weight) for weight in collection.parameters())
    return total


def dense_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer outside the model's torchrec embedding collections (MLPs,
    attention, norms): with ``served_embedding_bytes``, the whole served model."""
    inside = {id(t) for _, collection in _collections(model, _FLOAT + _QUANT)
              for t in (*collection.parameters(), *collection.buffers())}
    seen: set[int] = set()
    total = 0
    for tensor in (*model.parameters(), *model.buffers()):
        if id(tensor) not in inside and id(tensor) not in seen:
            seen.add(id(tensor))
            total += _nbytes(tensor)
    return total


def reference_dequantize(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """What fbgemm's ``bits``-bit rows of ``weight`` (N, D) decode to: (N, D) fp32, scale · q + bias per row.

    bias: the row's minimum, rounded to fp16; scale: (max − bias) / (2^bits − 1), rounded to fp16 (1 for a
    constant row); q: round-half-even((x − bias) / scale), clamped to [0, 2^bits − 1].
    """
    weight = weight.detach().float()
    bias = weight.min(dim=1, keepdim=True).values.half().float()  # (N, 1)
    spread = weight.max(dim=1, keepdim=True).values - bias
    scale = torch.where(spread == 0, torch.ones_like(spread), spread / (2**bits - 1)).half().float()  # (N, 1)
    scale = torch.where((scale == 0) | torch.isinf(1 / scale), torch.ones_like(scale), scale)
    codes = torch.round((weight - bias) * (1 / scale)).clamp(0, 2**bits - 1)  # (N, D)
    return codes * scale + bias


def _collections(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[tuple[str, nn.Module]]:
    return [(path, module) for path, module in model.named_modules() if isinstance(module, kinds)]


def _configs(collection: nn.Module) -> list[BaseEmbeddingConfig]:
    if isinstance(collection, EmbeddingBagCollection | QuantEmbeddingBagCollection):
        return list(collection.embedding_bag_configs())
    return list(collection.embedding_configs())


def _table_dims(collection: nn.Module) -> dict[str, int]:
    return {config.name: config.embedding_dim for config in _configs(collection)}


def _on_cpu(model: nn.Module) -> bool:
    return all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
