"""The training config: typed defaults, YAML plus --set overrides, unknown keys refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import Decay, SparseOptimizer, TrainConfig
from recsys.errors import RecsysError
from recsys.models import model_config


def test_defaults_yaml_and_overrides_compose(tmp_path: Path) -> None:
    path = tmp_path / "cfg.yaml"
    path.write_text("optimizer:\n  sparse: {name: sgd, lr: 0.5}\ntrainer:\n  epochs: 3\n")
    config = TrainConfig.load(path, ["trainer.epochs=4", "optimizer.schedule.decay=cosine",
                                     "model.top_mlp=[32, 1]", "sharding.tables.C1.sharding_types=[table_wise]"])
    assert config.optimizer.sparse.name is SparseOptimizer.SGD and config.optimizer.sparse.lr == 0.5
    assert config.trainer.epochs == 4 and config.optimizer.schedule.decay is Decay.COSINE
    assert config.model == {"top_mlp": [32, 1]}
    assert config.sharding.tables["C1"].sharding_types[0].value == "table_wise"
    assert TrainConfig.from_dict(__import__("yaml").safe_load(config.to_yaml())) == config  # round trip
    assert TrainConfig.load().trainer.batch_size == 1024


@pytest.mark.parametrize(("overrides", "message"), [
    (["trainer.epoch=2"], "trainer.epoch: Extra inputs are not permitted"),
    (["optimizer.sparse.lr=-1"], "optimizer.sparse.lr: Input should be greater than 0"),
    (["optimizer.sparse.name=adamw"], "optimizer.sparse.name: Input should be"),
    (["trainer"], "expected key=value"),
    (["trainer.epochs=2", "trainer.epochs.x=1"], "'epochs' is not a section"),
])
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(RecsysError, match=message) as error:
        TrainConfig.load(None, overrides)
    assert "\n" not in str(error.value)


def test_bad_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match="config file not found"):
        TrainConfig.load(tmp_path / "absent.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("trainer: [unclosed\n")
    with pytest.raises(RecsysError, match="broken.yaml: not valid YAML"):
        TrainConfig.load(broken)


def test_model_section_is_checked_by_the_model() -> None:
    with pytest.raises(RecsysError, match=r"model \(dlrm\): bottom_mlps: Extra inputs are not permitted"):
        model_config("dlrm", {"bottom_mlps": [1]})
    with pytest.raises(RecsysError, match="top_mlp must end with 1"):
        model_config("dlrm", {"top_mlp": [64, 2]})
    with pytest.raises(RecsysError, match="unknown model 'dlrn'; known: dlrm"):
        model_config("dlrn", {})
