"""RawEncoder.dense, used by `features upsert --set` and by the service's request context: a model input is a
finite float32, so anything else is a one-line error naming the feature."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from recsys.errors import RecsysError
from recsys.schema import DenseFeature, DenseTransform, Entity, Label, Schema
from services.feature_store.encode import RawEncoder


def _encoder(tmp_path: Path) -> RawEncoder:
    schema = Schema(
        dense=[DenseFeature(name="clicks", entity=Entity.ITEM, mean=1.0, std=2.0),  # clip at 0, log1p, standardise
               DenseFeature(name="price", entity=Entity.ITEM, transform=DenseTransform.STANDARDIZE, clip_min=None,
                            mean=10.0, std=0.5),
               DenseFeature(name="delta", entity=Entity.ITEM, transform=DenseTransform.LOG1P, clip_min=None)],
        labels=[Label(name="click")],
    )
    return RawEncoder(schema, tmp_path)


@pytest.mark.parametrize("raw", [json.loads("1e400"), -math.inf, math.nan, json.loads("NaN"), json.loads("Infinity"),
                                 10**400], ids=["1e400", "-inf", "nan", "NaN", "Infinity", "10**400"])
def test_non_finite_numbers_are_refused(tmp_path: Path, raw: float | int) -> None:
    encoder = _encoder(tmp_path)
    for feature in ("clicks", "price"):
        with pytest.raises(RecsysError, match=rf"^feature '{feature}': .*(not a finite number|cannot be encoded)"):
            encoder.dense(feature, raw)


def test_values_the_transform_cannot_take_are_refused(tmp_path: Path) -> None:
    encoder = _encoder(tmp_path)
    with pytest.raises(RecsysError, match=r"^feature 'price': 1e\+39 is out of range for a float32 once transformed"):
        encoder.dense("price", 1e39)  # finite as a double, not as the model's float32
    with pytest.raises(RecsysError, match=r"^feature 'delta': -5 cannot be encoded \(math domain error\)"):
        encoder.dense("delta", -5)  # log1p below -1


def test_finite_numbers_and_missing_values_encode_as_prepare_does(tmp_path: Path) -> None:
    encoder = _encoder(tmp_path)
    assert encoder.dense("clicks", 3) == np.float32((math.log1p(3) - 1.0) / 2.0)
    assert encoder.dense("clicks", -4.0) == np.float32(-0.5)  # clipped at 0 first
    assert encoder.dense("price", None) == np.float32(-20.0)  # the fill value, 0
