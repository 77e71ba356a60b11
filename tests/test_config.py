"""The training config: typed defaults, YAML plus --set overrides, unknown keys refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from recsys.config import Decay, SparseOptimizer, TrainConfig, resumable
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
    with pytest.raises(RecsysError, match="unknown model 'dlrn'; known: .*dlrm"):
        model_config("dlrn", {})


def test_non_finite_values_are_refused() -> None:
    for override in ("optimizer.dense.lr=.inf", "optimizer.sparse.lr=1e400", "sharding.topology.hbm_cap_gib=.nan"):
        with pytest.raises(RecsysError, match=override.split("=")[0]):
            TrainConfig.load(None, [override])


def test_a_resume_starts_from_the_saved_config(tmp_path: Path) -> None:
    saved = TrainConfig.load(None, ["trainer.epochs=2", "optimizer.dense.lr=0.01", "model.interaction=cat"])
    (tmp_path / "config.yaml").write_text(saved.to_yaml())
    base = TrainConfig.read(tmp_path / "config.yaml")
    assert base == saved
    path = tmp_path / "cfg.yaml"
    path.write_text("trainer:\n  log_every: 5\n")
    resumed = TrainConfig.load(path, ["trainer.max_steps=40"], base=base)
    assert resumed.trainer.epochs == 2 and resumed.optimizer.dense.lr == 0.01
    assert resumed.model == {"interaction": "cat"}
    assert saved.changes(resumed) == [("trainer.log_every", 50, 5), ("trainer.max_steps", None, 40)]
    assert all(resumable(key) for key, _, _ in saved.changes(resumed))
    other = TrainConfig.load(None, ["model.interaction=dot", "sharding.tables.C1.min_partition=4",
                                    "sharding.topology.hbm_cap_gib=8"], base=base)
    changed = [key for key, _, _ in saved.changes(other)]
    assert changed == ["model.interaction", "sharding.tables.C1.min_partition", "sharding.topology.hbm_cap_gib"]
    assert [resumable(key) for key in changed] == [False, False, True]


def test_unreadable_saved_config_is_one_line(tmp_path: Path) -> None:
    binary = tmp_path / "config.yaml"
    binary.write_bytes(bytes(range(256)))
    with pytest.raises(RecsysError, match="config.yaml: unreadable config"):
        TrainConfig.read(binary)
    with pytest.raises(RecsysError, match="absent.yaml: config file not found"):
        TrainConfig.read(tmp_path / "absent.yaml")
