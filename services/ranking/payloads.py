"""Request and response bodies of the ranking API (pydantic models; they also make the OpenAPI schema).

Responses of the hot routes are serialised by ``service.py`` straight to bytes with
orjson; these models document them and are what a client can validate against.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictFloat, StrictInt

from recsys.schema import Entity, Schema
from services.ranking.settings import Precision


def _integral(value: Any) -> Any:
    """2.0 → 2: JSON Schema's ``integer`` admits a number with a zero fraction, so the API does too."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# pydantic refuses strings with lone surrogates ("\ud800" in JSON), which no store key could hold.
Id = Annotated[str, Field(min_length=1, max_length=512)]
Text = Annotated[str, Field(max_length=4096)]
Count = Annotated[StrictInt, BeforeValidator(_integral)]  # strings, booleans and 2.5 are still refused
Scalar = StrictBool | StrictInt | StrictFloat | Text | None
MAX_LIST = 1024
ContextValue = Scalar | Annotated[list[Scalar], Field(max_length=MAX_LIST)]

_RANK_EXAMPLE = {
    "user_id": "42",
    "item_ids": ["7", "19", "3"],
    "k": 2,
    "context": {"C3": "hour_13", "I9": 4},
}
_RESPONSE_EXAMPLE = {
    "model_version": "dlrm-20250101T000000Z",
    "feature_version": "v20250101T000500Z",
    "items": [{"item_id": "19", "score": 0.31}, {"item_id": "7", "score": 0.12}],
    "unknown_user": False,
    "unknown_items": [],
}


_CONTEXT_DOC = ("raw values of the served model's context features (e.g. time, device); missing ones take their "
                "default (fill value / out-of-vocabulary), others answer 422")
# A dense value: a number, or a boolean read as 1 or 0 (as prepare reads a Boolean column).
_NUMBER = {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "null"}]}
_SCALAR = {"anyOf": [{"type": "string", "maxLength": 4096}, {"type": "number"}, {"type": "boolean"},
                     {"type": "null"}]}
_LIST = {"type": "array", "items": _SCALAR, "maxItems": MAX_LIST}


def context_schema(schema: Schema) -> dict[str, Any]:
    """The JSON schema of ``context`` for a model: its context features and nothing else (what
    ``FeatureLayout.encode_context`` takes): numbers for dense ones, a scalar (or, for multi-valued and sequence
    features, a list of scalars) for categorical ones; null is the default value."""
    properties: dict[str, Any] = {}
    for dense in schema.dense:
        if dense.entity is Entity.CONTEXT:
            properties[dense.name] = {**_NUMBER, "description": f"dense ({dense.transform.value}); true/false: 1/0; "
                                      "null: the fill value"}
    several = {f.name for f in schema.sequences} | {f.name for f in schema.sparse if f.separator is not None}
    for feature in [*schema.sparse, *schema.sequences]:
        if feature.entity is not Entity.CONTEXT:
            continue
        if feature.name in several:
            split = f", or one string split on {feature.separator!r}" if feature.separator else ""
            properties[feature.name] = {"anyOf": [*_SCALAR["anyOf"], _LIST],
                                        "description": f"categorical, several values (a list{split})"}
        else:
            properties[feature.name] = {**_SCALAR, "description": "categorical; null: out of vocabulary"}
    return {"type": "object", "properties": properties, "additionalProperties": False, "description": _CONTEXT_DOC}


class _Body(BaseModel):
    # Unknown fields are refused (a misspelt "context" is an error, not ignored); NaN/Infinity too.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RankRequest(_Body):
    """Score the given candidates for a user and return the k best."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RANK_EXAMPLE]})

    user_id: Id = Field(description="the user's key, as materialised in the feature store")
    item_ids: list[Id] = Field(min_length=1, description="candidate item keys; duplicates are scored each "
                               "(no dedupe); more than the server's --max-candidates answers 413")
    k: Count = Field(10, ge=1, le=100_000, description="how many items to return, best first")
    context: dict[Annotated[str, Field(max_length=128)], ContextValue] = Field(default_factory=dict,
                                                                               description=_CONTEXT_DOC)
    explain: StrictBool = Field(False, description="add, per returned item, the features, interactions or "
                                "history items that contributed most (models that can say: AutoInt, ARM-Net, "
                                "DIN); 422 for a model that cannot")


class RecommendRequest(_Body):
    """Recommend k items for a user: candidates the user has not seen (the retriever's top items when the server
    has one, else popular items), ranked by the model."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "42", "k": 10}]})

    user_id: Id
    k: Count = Field(10, ge=1, le=10_000)
    context: dict[Annotated[str, Field(max_length=128)], ContextValue] = Field(default_factory=dict,
                                                                               description=_CONTEXT_DOC)


class ContributionBody(BaseModel):
    name: str = Field(description="a feature ('C1'), an interaction ('C1×C2') or a history position "
                      "('hist_item_id[3]', 0 = newest)")
    weight: float = Field(description="the model's own measure (an attention weight, a gate); larger: used more")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="the model's logit through its task's link (binary CTR: the predicted "
                         "click probability, the sigmoid of the logit)")
    explanation: list[ContributionBody] | None = Field(None, description="only with \"explain\": true")


class RankResponse(BaseModel):
    """The top-k items, best first, and where their scores came from."""

    model_config = ConfigDict(json_schema_extra={"examples": [_RESPONSE_EXAMPLE]})

    model_version: str = Field(description="the artifact version that scored every item of this response")
    feature_version: str = Field(description="the feature-store version every feature of this response came from")
    items: list[ScoredItem] = Field(description="at most k, by descending score (ties in request order)")
    unknown_user: bool = Field(description="the user has no record: scored with default (out-of-vocabulary) features")
    unknown_items: list[str] = Field(description="items without a record, scored with default features")
    timings_ms: dict[str, float] | None = Field(
        None, description="per-stage milliseconds (retrieve with a retriever, fetch, tensors, queue, model, "
        "serialize, total); only with the request header `X-Debug-Timing: 1`")
    retriever_version: str | None = Field(None, description="/v1/recommend with a retriever: the retriever "
                                          "artifact that gave the candidates")
    retriever_feature_version: str | None = Field(None, description="/v1/recommend with a retriever: the version "
                                                  "of the retriever's feature namespace it read")
    stages_ms: dict[str, float] | None = Field(None, description="/v1/recommend with a retriever: milliseconds "
                                               "of retrieve (user record, vector, index search), fetch (the "
                                               "candidates' features) and rank (tensors, queue, forward)")


class RetrieveRequest(_Body):
    """The retriever's top n items for a user, with its scores (no ranking)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"user_id": "42", "n": 100}]})

    user_id: Id = Field(description="the user's key, as materialised in the retriever's feature namespace")
    n: Count = Field(100, ge=1, le=100_000, description="how many items; more than the server's --max-candidates "
                     "answers 413")
    exclude_seen: StrictBool = Field(True, description="leave out the items in the user's seen list")


class RetrievedItem(BaseModel):
    item_id: str
    score: float = Field(description="the retriever's similarity of the user's and the item's vectors (inner "
                         "product, or minus the squared L2 distance), as the index found it")


class RetrieveResponse(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "retriever_version": "mf-20250101T000000Z-0123456789ab", "feature_version": "v20250101T000500Z",
        "items": [{"item_id": "19", "score": 3.1}, {"item_id": "7", "score": 2.4}], "unknown_user": False}]})

    retriever_version: str
    feature_version: str | None = Field(description="the retriever's feature-namespace version read")
    items: list[RetrievedItem] = Field(description="at most n, by descending score")
    unknown_user: bool = Field(description="the user has no record: its vector is from default features")
    timings_ms: dict[str, float] | None = Field(None, description="fetch, vector, search, total; only with "
                                                "`X-Debug-Timing: 1`")


class RetrieverReloadRequest(_Body):
    """Load another retriever artifact (with its index/) and swap it in once it is ready."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"artifact": "runs/mf-v2/artifact"}]})

    artifact: Annotated[str, Field(min_length=1, max_length=4096)]


class ReloadRequest(_Body):
    """Load another artifact and swap it in once it is ready."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"artifact": "runs/dlrm-v2/artifact",
                                                               "precision": "int8"}]})

    artifact: Annotated[str, Field(min_length=1, max_length=4096)]
    precision: Precision | None = Field(None, description="fp32, bf16 (dense layers), int8 or int4 (embedding tables); default: the "
                                        "server's --precision if given, else the artifact's recorded "
                                        "embedding.serving_precision")


class ModelSwap(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"model_version": "dlrm-20250102T000000Z",
                                                               "previous_version": "dlrm-20250101T000000Z"}]})

    model_version: str
    previous_version: str | None


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model_version: str | None = None
    precision: Precision | None = None
    feature_version: str | None = Field(None, description="the feature version requests read")
    active_feature_version: str | None = Field(None, description="the store's active version; differs from "
                                               "feature_version when it was materialised for another model")
    incompatible_feature_version: str | None = Field(None, description="the active version, when the model "
                                                     "cannot read its records")
    retriever_version: str | None = Field(None, description="the retriever served, if any")
    index: str | None = Field(None, description="its index kind (exact, ivf, hnsw)")
    retriever_feature_version: str | None = Field(None, description="the retriever's feature-namespace version")
    retriever_status: str | None = Field(None, description="why the retriever is not ready")


class ErrorBody(BaseModel):
    """Every non-validation error: one line saying what is wrong."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "feature store unavailable: "
                                                               "connection refused"}]})

    detail: Any


class ValidationErrorBody(BaseModel):
    """422: every invalid part of the request, in FastAPI's shape (``loc`` names the field)."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": [
        {"type": "greater_than_equal", "loc": ["body", "k"], "msg": "Input should be greater than or equal to 1",
         "input": 0}]}]})

    detail: list[dict[str, Any]]


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorBody, "description": "invalid body (named by loc), an unknown context feature, "
          "or \"explain\" for a model that cannot explain"},
    404: {"model": ErrorBody, "description": "/v1/retrieve on a server without a retriever"},
    413: {"model": ErrorBody, "description": "body larger than --max-body-bytes or more candidates than "
          "--max-candidates"},
    503: {"model": ErrorBody, "description": "feature store unavailable, or no feature version materialised"},
}
