"""The training configuration: typed sections with defaults, read from YAML and ``--set key=value``.

Every key has a typed default and an unknown key is an error naming it (RecBole's
config returns ``None`` for a typo; ours refuses it). The ``model`` section is
checked by the chosen model's own config class (``recsys.models``), so each model
declares its knobs beside its code.

    config = TrainConfig.load("cfg.yaml", overrides=["optimizer.dense.lr=0.002", "trainer.epochs=2"])

A resumed run starts from the run's saved config (``base``) and may change only the
keys in ``RESUMABLE``: how long it runs, how often it logs and saves, how it is
evaluated, what hardware the planner assumes and the compute precision (the weights are fp32 at either, and
``auto`` resolves per machine anyway). Every other key decides which
batches are taken or what a step computes, so changing it would silently continue
another run on weights trained by this one.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from recsys.errors import RecsysError
from recsys.schema import describe_validation_error

# Dotted keys (or sections) a resumed run may change; see the module docstring.
RESUMABLE = ("trainer.epochs", "trainer.max_steps", "trainer.log_every", "trainer.checkpoint_every",
             "trainer.keep_checkpoints", "trainer.progress", "trainer.eval_batch_size", "trainer.pipeline",
             "trainer.precision", "trainer.early_stopping", "sharding.topology")


class _Section(BaseModel):
    # A non-finite rate or cap (``lr=.inf``, ``1e400``) would only surface as a diverged run.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class SparseOptimizer(StrEnum):
    """fbgemm's fused optimizers, applied inside the embedding backward (no gradient is materialised)."""

    ROWWISE_ADAGRAD = "rowwise_adagrad"
    ADAGRAD = "adagrad"
    ADAM = "adam"
    SGD = "sgd"


class DenseOptimizer(StrEnum):
    ADAM = "adam"
    ADAGRAD = "adagrad"
    SGD = "sgd"


class SparseOptimizerConfig(_Section):
    name: SparseOptimizer = SparseOptimizer.ROWWISE_ADAGRAD
    lr: float = Field(0.05, gt=0)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class DenseOptimizerConfig(_Section):
    name: DenseOptimizer = DenseOptimizer.ADAM
    lr: float = Field(1e-3, gt=0)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.0, ge=0)


class Decay(StrEnum):
    NONE = "none"
    LINEAR = "linear"
    COSINE = "cosine"


class ScheduleConfig(_Section):
    """Learning-rate factor for both optimizers: linear warm-up, then decay to ``min_factor`` at the last step."""

    warmup_steps: int = Field(0, ge=0)
    decay: Decay = Decay.NONE
    min_factor: float = Field(0.0, ge=0, le=1)


class OptimizerConfig(_Section):
    sparse: SparseOptimizerConfig = SparseOptimizerConfig()
    dense: DenseOptimizerConfig = DenseOptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()


class ServingPrecision(StrEnum):
    """How the served model computes: embedding tables stored at fp32 or as fbgemm's quantised int8/int4 rows,
    dense layers at fp32; bf16 keeps fp32 tables and runs the dense layers under bf16 autocast
    (``recsys.precision``; refused on a CPU without native bf16)."""

    FP32 = "fp32"
    BF16 = "bf16"
    INT8 = "int8"
    INT4 = "int4"


class TableEmbeddingConfig(_Section):
    """One table's scheme, dim and memory budget; an unset value takes the ``embedding:`` section's.

    Keys beyond these are the scheme's own options (``operation`` for qr, ``group`` for unified, ...),
    checked by the scheme's options class (``recsys.embeddings``): an unknown one is an error naming it.
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    scheme: str | None = None
    dim: int | None = Field(None, ge=1, le=8192)
    ratio: float | None = Field(None, ge=1, description="memory divisor against the full table (16: 1/16 of "
                                "its rows x dim)")


class EmbeddingConfig(_Section):
    """How the schema's tables become embedding modules: defaults for every table, overridden per table.

        embedding: {scheme: qr, ratio: 16, tables: {C1: {scheme: standard}, C2: {scheme: hash, ratio: 4}}}
    """

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    scheme: str = "standard"  # a name in recsys.embeddings' registry
    dim: int | None = Field(None, ge=1, le=8192, description="one dim for every table (default: the schema's)")
    ratio: float = Field(1.0, ge=1, description="memory divisor against full tables for the compressing "
                         "schemes (hash, qr, unified, dnis, dsl); 1: full size")
    tables: dict[str, TableEmbeddingConfig] = {}
    serving_precision: ServingPrecision = Field(
        ServingPrecision.FP32, description="how the artifact is served unless `recsys serve --precision` "
        "says otherwise: fp32; bf16 (fp32 tables, dense layers under bf16 autocast); or int8/int4 table rows "
        "quantised by fbgemm")

    def for_table(self, table: str) -> dict[str, Any]:
        """The table's resolved settings: scheme, dim, ratio and scheme options, the table's own over the
        section's defaults."""
        own = self.tables.get(table)
        settings: dict[str, Any] = {"scheme": self.scheme, "dim": self.dim, "ratio": self.ratio,
                                    **(self.model_extra or {})}
        if own is not None:
            settings |= {k: v for k, v in own.model_dump(exclude_none=True).items()}
        return settings


class ShardingType(StrEnum):
    TABLE_WISE = "table_wise"
    COLUMN_WISE = "column_wise"
    TABLE_COLUMN_WISE = "table_column_wise"
    ROW_WISE = "row_wise"
    TABLE_ROW_WISE = "table_row_wise"
    DATA_PARALLEL = "data_parallel"


class ComputeKernel(StrEnum):
    FUSED = "fused"  # fbgemm table-batched embedding with the optimizer fused into backward
    DENSE = "dense"  # plain tensors (what data-parallel tables use)
    QUANT = "quant"


class TableConstraints(_Section):
    sharding_types: list[ShardingType] | None = None
    compute_kernels: list[ComputeKernel] | None = None
    min_partition: int | None = Field(None, ge=1, description="narrowest column shard (column-wise)")


class TopologyConfig(_Section):
    """What the planner may assume per device; unset values take torchrec's defaults."""

    hbm_cap_gib: float | None = Field(None, gt=0, description="accelerator memory per device")
    ddr_cap_gib: float | None = Field(None, gt=0, description="host memory per device")
    local_world_size: int | None = Field(None, ge=1, description="processes per host (default: torchrun's)")


class ShardingConfig(_Section):
    """Planner inputs: the sharding types and kernels every table may use, per-table overrides, topology."""

    # Data-parallel tables are left out by default: they take the "dense" kernel, whose backward builds a
    # full-table gradient and runs a torch optimizer over it (about 10x slower per step on a CPU).
    sharding_types: list[ShardingType] = [ShardingType.TABLE_WISE, ShardingType.COLUMN_WISE,
                                          ShardingType.TABLE_COLUMN_WISE]
    compute_kernels: list[ComputeKernel] = [ComputeKernel.FUSED, ComputeKernel.DENSE]
    min_partition: int | None = Field(None, ge=1, description="narrowest column shard; lets column-wise "
                                      "split a table into dim / min_partition shards")
    tables: dict[str, TableConstraints] = {}
    topology: TopologyConfig = TopologyConfig()


class Partition(StrEnum):
    GLOBAL = "global"  # every rank reads the global stream: the same batches for any process count
    RANK = "rank"  # disjoint rows per rank: scales reading, but results depend on the process count


class EarlyStoppingConfig(_Section):
    """Stop when the validation metric has not improved for ``patience`` evaluations (one per epoch); the
    artifact holds the best evaluation's weights either way."""

    metric: str | None = Field(None, description="a metric of the task (default: its primary, e.g. auc)")
    patience: int = Field(2, ge=0, description="evaluations without improvement before stopping; 0: never stop")
    min_delta: float = Field(0.0, ge=0, description="the least change that counts as an improvement")


class TrainerConfig(_Section):
    epochs: int = Field(1, ge=1, description="the most epochs to train (early stopping may end sooner)")
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    batch_size: int = Field(1024, ge=1, description="global batch: split evenly over the processes")
    eval_batch_size: int = Field(8192, ge=1, description="per process")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (for smoke runs)")
    log_every: int = Field(50, ge=1, description="steps between metrics.jsonl lines")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0: at epoch ends only")
    keep_checkpoints: int = Field(2, ge=1)
    partition: Partition = Partition.GLOBAL
    shuffle: bool = True
    shuffle_buffer: int = Field(100_000, ge=0)
    num_workers: int = Field(0, ge=0, description="reader processes per training process")
    pipeline: Literal["auto", "on", "off"] = Field(
        "auto", description="torchrec's sparse-dist train pipeline, which overlaps the next batch's copy and "
        "input distribution with this batch's compute; auto: on GPUs only")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="the dense layers' compute (recsys.precision): bf16 autocasts forward and backward, "
        "embedding tables, weights and loss stay fp32; auto: bf16 where the device has native bf16, else fp32")
    progress: bool = True

    @field_validator("pipeline", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: Any) -> Any:
        """YAML reads a bare on/off as a boolean."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class TrainConfig(_Section):
    """Everything ``recsys train`` reads besides the data: saved resolved in every run and artifact."""

    model: dict[str, Any] = {}  # checked by the model's config class
    embedding: EmbeddingConfig = EmbeddingConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    sharding: ShardingConfig = ShardingConfig()
    trainer: TrainerConfig = TrainerConfig()
    seed: int = Field(0, ge=0)

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> TrainConfig:
        try:
            return cls.model_validate(data if data is not None else {})
        except ValidationError as exc:
            raise RecsysError(f"{where}: {describe_validation_error(exc, data)}") from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None,
             base: TrainConfig | None = None) -> TrainConfig:
        """The file's values (none: all defaults) with ``key.path=value`` overrides applied in order.

        With ``base`` (a resumed run's saved config), the file's and overrides' values are applied on top of
        it instead of on top of the defaults.
        """
        data: dict[str, Any] = base.model_dump(mode="json") if base is not None else {}
        where = "config"
        if path is not None:
            path = Path(path)
            where = str(path)
            if not path.is_file():
                raise RecsysError(f"{path}: config file not found")
            loaded = _read_yaml(path)
            if loaded is not None and not isinstance(loaded, dict):
                raise RecsysError(f"{path}: expected a mapping of sections, got {type(loaded).__name__}")
            _merge(data, loaded or {})
        for override in overrides or []:
            _apply_override(data, override)
        if overrides:
            where += " with --set " + " ".join(overrides)
        return cls.from_dict(data, where)

    @classmethod
    def read(cls, path: Path) -> TrainConfig:
        """A saved resolved config (a run's or an artifact's ``config.yaml``)."""
        return cls.from_dict(_read_yaml(path), where=str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def changes(self, other: TrainConfig) -> list[tuple[str, Any, Any]]:
        """(dotted key, value here, value in ``other``) for every leaf that differs; absent values are None."""
        mine, theirs = dict(_leaves(self.model_dump(mode="json"))), dict(_leaves(other.model_dump(mode="json")))
        return [(key, mine.get(key), theirs.get(key)) for key in sorted(mine.keys() | theirs.keys())
                if mine.get(key) != theirs.get(key)]


def _read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a missing, unreadable or invalid file is a one-line error naming it."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecsysError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecsysError(f"{path}: unreadable config ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecsysError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    except RecursionError:
        raise RecsysError(f"{path}: not valid YAML: nested too deeply") from None


def resumable(key: str) -> bool:
    """Whether a resumed run may change the dotted ``key`` (see ``RESUMABLE``)."""
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUMABLE)


def _leaves(data: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths to every non-mapping value (lists are values): a key added to a mapping shows by name."""
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _leaves(value, path + ".")
        else:
            yield path, value


def _merge(data: dict[str, Any], update: dict[str, Any]) -> None:
    """Set every value of ``update`` into ``data``, descending into mappings both hold."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            _merge(data[key], value)
        else:
            data[key] = value


def _apply_override(data: dict[str, Any], override: str) -> None:
    """``a.b.c=value``: value parsed as YAML (numbers, booleans, lists), set at the dotted path."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise RecsysError(f"--set {override!r}: expected key=value, e.g. optimizer.dense.lr=0.001")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecsysError(f"--set {override!r}: '{part}' is not a section")
        node = child
    node[parts[-1]] = value
