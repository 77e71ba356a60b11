"""The Schema: the one contract between data preparation, models, feature store and service.

A Schema lists every column of a prepared data set: dense features, sparse
(categorical) features and the embedding tables they look up, sequence features
(behaviour histories), labels, the user/item key columns and the timestamp. Each
feature names the entity it describes (user, item or context), so the feature
store and the ranking service know where every model input comes from.

Built once by ``recsys data prepare`` (or ``synth``), saved as ``schema.json``
beside the data and in every artifact. A schema written by hand (YAML) for
``prepare --format csv|parquet`` leaves the sizes that prepare measures
(vocabulary cardinalities, dense means and deviations) unset.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from recsys.errors import RecsysError

SCHEMA_FILE = "schema.json"

Name = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", max_length=128)]


class Entity(StrEnum):
    """Who a feature describes; decides where the service fetches it from."""

    USER = "user"
    ITEM = "item"
    CONTEXT = "context"
    DERIVED = "derived"  # generated from other features (``derived`` recipe); computed, never stored or sent


class Task(StrEnum):
    CTR = "ctr"  # labelled impressions, for ranking models
    IMPLICIT = "implicit"  # positive user-item interactions only, for retrieval models


class Encoding(StrEnum):
    """How raw values of a table become embedding row indices."""

    VOCAB = "vocab"  # frequency-thresholded vocabulary; index 0 is missing/out-of-vocabulary
    HASH = "hash"  # polars' 64-bit hash of the value's text (stable per polars version), into 1..hash_buckets-1
    IDENTITY = "identity"  # values already are indices in [0, cardinality)


class DenseTransform(StrEnum):
    NONE = "none"
    LOG1P = "log1p"
    STANDARDIZE = "standardize"
    LOG1P_STANDARDIZE = "log1p_standardize"

    @property
    def uses_log1p(self) -> bool:
        return self in (DenseTransform.LOG1P, DenseTransform.LOG1P_STANDARDIZE)

    @property
    def standardizes(self) -> bool:
        return self in (DenseTransform.STANDARDIZE, DenseTransform.LOG1P_STANDARDIZE)


class Pooling(StrEnum):
    SUM = "sum"
    MEAN = "mean"


class _Strict(BaseModel):
    """Rejects unknown keys: a typo in a schema is an error, never a silent default."""

    model_config = ConfigDict(extra="forbid")


class DerivedOp(StrEnum):
    """Operators of generated features (``recsys features generate``), over the inputs' prepared values.

    Dense results: add, sub, mul, div (two dense inputs), abs, square (one dense), freq (a sparse input's
    train frequency), group_mean (the train mean of a dense input per value of a sparse one). Sparse results:
    cross (two sparse inputs, one id per pair of ids), bin (a dense input cut at ``edges``).
    """

    ADD = "add"
    SUB = "sub"
    MUL = "mul"
    DIV = "div"
    ABS = "abs"
    SQUARE = "square"
    FREQ = "freq"
    GROUP_MEAN = "group_mean"
    CROSS = "cross"
    BIN = "bin"


DENSE_OPS = {DerivedOp.ADD, DerivedOp.SUB, DerivedOp.MUL, DerivedOp.DIV, DerivedOp.ABS, DerivedOp.SQUARE,
             DerivedOp.FREQ, DerivedOp.GROUP_MEAN}
SPARSE_OPS = {DerivedOp.CROSS, DerivedOp.BIN}


class Derivation(_Strict):
    """The recipe of a generated feature: computed from other (stored or sent) features' prepared values,
    identically by ``features generate`` offline and by the ranking service online
    (``recsys.features.recipes.derive``)."""

    op: DerivedOp
    inputs: list[Name] = Field(min_length=1, max_length=2)
    # group_mean, freq: a Parquet lookup (key int64 = input row id, value float64), relative to the data
    # directory or artifact, with its digest checked when read.
    lookup_file: str | None = None
    lookup_sha256: str | None = None
    edges: list[float] | None = None  # bin: ascending cut points; ids 1..len(edges)+1, 0 for a missing value
    # cross: with stride S (the second input's table rows) ids are exact, (a-1)(S-1) + b; without, the pair
    # hashes into 1..buckets-1. Either way a missing (0) input gives 0.
    stride: int | None = Field(None, ge=2)
    buckets: int | None = Field(None, ge=2)


class Column(_Strict):
    """A plain column (key or timestamp): its name in prepared data and in the raw input."""

    name: Name
    source: str | None = None  # raw column name; defaults to name

    @property
    def source_column(self) -> str:
        return self.source or self.name


class Table(_Strict):
    """An embedding table and the encoding that maps raw values to its rows."""

    name: Name
    encoding: Encoding = Encoding.VOCAB
    embedding_dim: int = Field(16, ge=1, le=8192)
    min_count: int = Field(1, ge=1, description="vocab: values seen fewer times in train map to index 0")
    hash_buckets: int | None = Field(None, ge=2, description="hash: row 0 is missing, values hash into 1..hash_buckets-1")
    cardinality: int | None = Field(None, ge=1, description="rows of the table; set by prepare for vocab")
    vocab_file: str | None = None  # relative to the data directory or artifact

    @model_validator(mode="after")
    def _encoding_needs(self) -> Table:
        if self.encoding is Encoding.HASH:
            if self.hash_buckets is None:
                raise ValueError("encoding 'hash' needs hash_buckets")
            if self.cardinality is None:
                self.cardinality = self.hash_buckets
            elif self.cardinality != self.hash_buckets:
                raise ValueError(f"cardinality {self.cardinality} != hash_buckets {self.hash_buckets}")
        elif self.hash_buckets is not None:
            raise ValueError(f"hash_buckets is only for encoding 'hash', not '{self.encoding}'")
        if self.encoding is Encoding.IDENTITY and self.cardinality is None:
            raise ValueError("encoding 'identity' needs cardinality")
        return self


class DenseFeature(_Strict):
    """A numeric feature; prepare applies clip, log1p and standardisation as configured."""

    name: Name
    entity: Entity
    source: str | None = None
    transform: DenseTransform = DenseTransform.LOG1P_STANDARDIZE
    clip_min: float | None = 0.0  # applied before log1p (Criteo has small negative counts)
    fill_value: float = 0.0  # raw value used for a missing one
    mean: float | None = None  # of the (log1p) value on train; set by prepare
    std: float | None = None
    derived: Derivation | None = None  # a generated feature (entity 'derived'): its recipe

    @property
    def source_column(self) -> str:
        return self.source or self.name


class SparseFeature(_Strict):
    """A categorical feature looked up in ``table`` (its own by default); multi-valued if separator is set."""

    name: Name
    entity: Entity
    table: Name | None = None
    source: str | None = None
    pooling: Pooling = Pooling.SUM
    separator: str | None = Field(None, min_length=1)
    derived: Derivation | None = None  # a generated feature (entity 'derived'): its recipe

    @property
    def table_name(self) -> str:
        return self.table or self.name

    @property
    def source_column(self) -> str:
        return self.source or self.name


class SequenceFeature(_Strict):
    """A behaviour history (newest first, at most max_length ids), usually sharing the target item's table."""

    name: Name
    entity: Entity = Entity.USER
    table: Name
    max_length: int = Field(ge=1, le=100_000)
    source: str | None = None
    separator: str | None = Field(None, min_length=1)  # raw cell split; None for list columns
    pooling: Pooling = Pooling.MEAN

    @property
    def table_name(self) -> str:
        return self.table

    @property
    def source_column(self) -> str:
        return self.source or self.name


class Label(_Strict):
    name: Name
    source: str | None = None

    @property
    def source_column(self) -> str:
        return self.source or self.name


class Schema(_Strict):
    """Every column of a prepared data set and every embedding table, in model input order."""

    schema_version: Literal[1] = 1
    task: Task = Task.CTR
    dense: list[DenseFeature] = Field(default_factory=list)
    sparse: list[SparseFeature] = Field(default_factory=list)
    sequences: list[SequenceFeature] = Field(default_factory=list)
    tables: list[Table] = Field(default_factory=list)
    labels: list[Label] = Field(default_factory=list)
    user_key: Column | None = None
    item_key: Column | None = None
    timestamp: Column | None = None
    default_embedding_dim: int = Field(16, ge=1, le=8192)
    # Feature pairs whose interactions a model keeps (``features select`` with an interaction selector);
    # None keeps them all. Only models that take an interaction mask accept a schema that sets it.
    interactions: list[tuple[Name, Name]] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Schema:
        names: dict[str, str] = {}
        columns = [(f.name, "dense") for f in self.dense]
        columns += [(f.name, "sparse") for f in self.sparse]
        columns += [(f.name, "sequences") for f in self.sequences]
        columns += [(f.name, "labels") for f in self.labels]
        for key, section in ((self.user_key, "user_key"), (self.item_key, "item_key"), (self.timestamp, "timestamp")):
            if key is not None:
                columns.append((key.name, section))
        for name, section in columns:
            if name in names:
                raise ValueError(f"column '{name}' is declared twice ({names[name]} and {section})")
            names[name] = section

        table_names = [t.name for t in self.tables]
        duplicate = {n for n in table_names if table_names.count(n) > 1}
        if duplicate:
            raise ValueError(f"table '{sorted(duplicate)[0]}' is declared twice")
        declared = set(table_names)
        # A sparse feature without a declared table gets its own, with the default dim.
        for feature in self.sparse:
            if feature.table_name not in declared:
                self.tables.append(Table(name=feature.table_name, embedding_dim=self.default_embedding_dim))
                declared.add(feature.table_name)
        for feature in self.sequences:
            if feature.table not in declared:
                raise ValueError(f"sequence feature '{feature.name}' uses table '{feature.table}', which is not declared")
        used = {f.table_name for f in self.sparse} | {f.table for f in self.sequences}
        unused = [t.name for t in self.tables if t.name not in used]
        if unused:
            raise ValueError(f"table '{unused[0]}' is used by no feature")
        if self.task is Task.CTR and not self.labels:
            raise ValueError("a 'ctr' schema needs at least one label")
        if self.task is Task.IMPLICIT and (self.user_key is None or self.item_key is None):
            raise ValueError("an 'implicit' schema needs user_key and item_key")
        self._check_derived()
        if self.interactions is not None:
            features = {f.name for f in [*self.dense, *self.sparse, *self.sequences]}
            for pair in self.interactions:
                unknown = [n for n in pair if n not in features]
                if unknown:
                    raise ValueError(f"interactions: '{unknown[0]}' is not a feature of the schema")
        return self

    def _check_derived(self) -> None:
        """Generated features: entity 'derived' exactly when a recipe is given; inputs are plain single-valued
        features of the right kind; a generated sparse feature's table is identity-encoded."""
        dense = {f.name: f for f in self.dense}
        sparse = {f.name: f for f in self.sparse}
        for feature in [*self.dense, *self.sparse]:
            kind = "dense" if isinstance(feature, DenseFeature) else "sparse"
            recipe = feature.derived
            if (recipe is None) != (feature.entity is not Entity.DERIVED):
                raise ValueError(f"{kind} feature '{feature.name}': entity 'derived' goes with a 'derived' recipe")
            if recipe is None:
                continue
            where = f"{kind} feature '{feature.name}'"
            if (recipe.op in DENSE_OPS) != (kind == "dense"):
                raise ValueError(f"{where}: op '{recipe.op}' makes a {'dense' if recipe.op in DENSE_OPS else 'sparse'} feature")
            wanted = {DerivedOp.ABS: "d", DerivedOp.SQUARE: "d", DerivedOp.FREQ: "s", DerivedOp.GROUP_MEAN: "ds",
                      DerivedOp.CROSS: "ss", DerivedOp.BIN: "d"}.get(recipe.op, "dd")
            if len(recipe.inputs) != len(wanted):
                raise ValueError(f"{where}: op '{recipe.op}' takes {len(wanted)} input(s), got {len(recipe.inputs)}")
            for name, want in zip(recipe.inputs, wanted):
                source = (dense if want == "d" else sparse).get(name)
                if source is None:
                    raise ValueError(f"{where}: input '{name}' is not a {'dense' if want == 'd' else 'sparse'} "
                                     "feature of the schema")
                if source.derived is not None:
                    raise ValueError(f"{where}: input '{name}' is itself generated")
                if isinstance(source, SparseFeature) and source.separator is not None:
                    raise ValueError(f"{where}: input '{name}' is multi-valued")
            if recipe.op in (DerivedOp.FREQ, DerivedOp.GROUP_MEAN) and not recipe.lookup_file:
                raise ValueError(f"{where}: op '{recipe.op}' needs lookup_file")
            if recipe.op is DerivedOp.BIN and not recipe.edges:
                raise ValueError(f"{where}: op 'bin' needs edges")
            if recipe.op is DerivedOp.CROSS and (recipe.stride is None) == (recipe.buckets is None):
                raise ValueError(f"{where}: op 'cross' needs exactly one of stride and buckets")
            if isinstance(feature, SparseFeature):
                table = self.table(feature.table_name)
                if table.encoding is not Encoding.IDENTITY:
                    raise ValueError(f"{where}: a generated feature's table must use encoding 'identity'")
            elif feature.transform.uses_log1p or feature.clip_min is not None:
                raise ValueError(f"{where}: a generated dense feature takes transform 'none' or 'standardize' "
                                 "and no clip_min")

    # ---- lookups -------------------------------------------------------------------------
    def table(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise RecsysError(f"schema: no table named '{name}'")

    @property
    def sparse_keys(self) -> list[str]:
        """KeyedJaggedTensor keys, in order: pooled sparse features, then sequences."""
        return [f.name for f in self.sparse] + [f.name for f in self.sequences]

    def feature_table(self, feature_name: str) -> Table:
        for feature in [*self.sparse, *self.sequences]:
            if feature.name == feature_name:
                return self.table(feature.table_name)
        raise RecsysError(f"schema: no sparse or sequence feature named '{feature_name}'")

    def features_of(self, entity: Entity) -> list[str]:
        """Names of the dense, sparse and sequence features that describe ``entity``."""
        return [f.name for f in [*self.dense, *self.sparse, *self.sequences] if f.entity is entity]

    @property
    def derived_features(self) -> list[DenseFeature | SparseFeature]:
        """Generated features, in schema order (dense first): computed from the others, never stored."""
        return [f for f in [*self.dense, *self.sparse] if f.derived is not None]

    @property
    def label_names(self) -> list[str]:
        return [label.name for label in self.labels]

    @property
    def columns(self) -> list[str]:
        """Columns of the prepared Parquet files."""
        cols = [f.name for f in self.dense] + self.sparse_keys + self.label_names
        cols += [c.name for c in (self.user_key, self.item_key, self.timestamp) if c is not None]
        return cols

    def unresolved(self) -> list[str]:
        """What prepare has yet to measure: tables without cardinality, dense features without stats."""
        missing = [f"table '{t.name}' has no cardinality" for t in self.tables if t.cardinality is None]
        missing += [
            f"dense feature '{f.name}' has no mean/std"
            for f in self.dense
            if f.transform.standardizes and (f.mean is None or f.std is None)
        ]
        return missing

    def require_resolved(self, where: str = "schema") -> None:
        missing = self.unresolved()
        if missing:
            raise RecsysError(f"{where}: {missing[0]} (run `recsys data prepare` to measure it)")

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_json(self) -> str:
        """The schema as JSON; ``derived`` and ``interactions`` appear only when set, so a schema that uses
        neither reads (and digests, for resuming a run) exactly as before they existed."""
        exclude: dict[str, Any] = {section: {i: {"derived"} for i, f in enumerate(getattr(self, section))
                                             if f.derived is None}
                                   for section in ("dense", "sparse")}
        if self.interactions is None:
            exclude["interactions"] = True
        return self.model_dump_json(indent=2, exclude=exclude)

    def save(self, path: str | Path) -> Path:
        """Write ``schema.json`` (or the given file) atomically."""
        path = Path(path)
        if path.is_dir():
            path = path / SCHEMA_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: Any, where: str = "schema") -> Schema:
        if not isinstance(data, dict):
            raise RecsysError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise RecsysError(f"{where}: {describe_validation_error(exc, data)}") from None

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Read a schema from JSON or YAML (a directory means its ``schema.json``)."""
        path = Path(path)
        try:
            if path.is_dir():
                path = path / SCHEMA_FILE
            text = path.read_bytes().decode()
        except FileNotFoundError:
            raise RecsysError(f"{path}: schema file not found") from None
        except OSError as exc:
            raise RecsysError(f"{path}: unreadable schema ({exc.strerror or exc})") from None
        except UnicodeDecodeError as exc:
            raise RecsysError(f"{path}: not valid text: not UTF-8 (byte {exc.start})") from None
        kind = "JSON" if path.suffix == ".json" else "YAML"
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise RecsysError(f"{path}: not valid {kind}: {str(exc).splitlines()[0]}") from None
        except RecursionError:
            raise RecsysError(f"{path}: not valid {kind}: nested too deeply") from None
        return cls.from_dict(data, where=str(path))


def describe_validation_error(exc: ValidationError, data: Any) -> str:
    """One line naming each bad field by path and, where it has one, by feature name."""
    parts = []
    for error in exc.errors()[:3]:
        loc = error["loc"]
        path = ""
        node = data
        for part in loc:
            if isinstance(part, int):
                path += f"[{part}]"
                node = node[part] if isinstance(node, list) and part < len(node) else None
                if isinstance(node, dict) and isinstance(node.get("name"), str):
                    path += f"('{node['name']}')"
            else:
                path += f".{part}" if path else str(part)
                node = node.get(part) if isinstance(node, dict) else None
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {message}" if path else message)
    more = len(exc.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
