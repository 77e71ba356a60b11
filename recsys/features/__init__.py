"""Feature modules by name: ranking, generation and selection of features (``recsys features rank|generate|select``).

Each method is one file here that decorates its class with ``register_feature_method``;
the files are imported automatically, so adding a method touches one new file plus
its test (``tests/features/test_method_contract.py`` runs every registered one).

A method ranks the candidate fields of a prepared data set (``FeatureData``: a
sample of train rows, prepared values) and returns a ``Ranking``; ``select`` turns a
ranking into a pruned Schema, and generators (``FeatureGenerator``) also propose new
columns whose recipe travels in the schema (``recsys.features.recipes``).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from pydantic import ValidationError

from recsys.errors import RecsysError
from recsys.features.base import FeatureMethod
from recsys.schema import describe_validation_error

FEATURE_METHODS: dict[str, type[FeatureMethod]] = {}

_NOT_METHODS = {"base", "data", "quality", "recipes", "select", "generate", "output", "gates"}


def register_feature_method(cls: type[FeatureMethod]) -> type[FeatureMethod]:
    """Class decorator: make ``cls`` available as ``--method cls.name``."""
    if cls.name in FEATURE_METHODS and FEATURE_METHODS[cls.name] is not cls:
        raise RecsysError(f"feature method '{cls.name}' is registered twice")
    FEATURE_METHODS[cls.name] = cls
    return cls


def _import_all() -> None:
    for module in pkgutil.iter_modules(__path__):
        if module.name not in _NOT_METHODS and not module.name.startswith("_"):
            importlib.import_module(f"{__name__}.{module.name}")


def feature_method(name: str, options: dict[str, Any] | None = None) -> FeatureMethod:
    """The registered method ``name`` with its options validated (unknown keys are errors)."""
    _import_all()
    if name not in FEATURE_METHODS:
        raise RecsysError(f"--method {name}: unknown feature method (known: {', '.join(sorted(FEATURE_METHODS))})")
    cls = FEATURE_METHODS[name]
    try:
        validated = cls.Options.model_validate(options or {})
    except ValidationError as exc:
        raise RecsysError(f"--method {name} options: {describe_validation_error(exc, options or {})}") from None
    return cls(validated)


def method_names() -> list[str]:
    _import_all()
    return sorted(FEATURE_METHODS)
