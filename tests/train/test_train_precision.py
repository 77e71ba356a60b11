"""trainer.precision: bf16 autocast over the dense layers, through the real CLI (sharded by DMP) and in-process.

On a CPU without native bf16 the bf16 runs are emulated (slow, with a warning) but compute the same thing, so
these tests run everywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn
from torchrec import EmbeddingBagCollection, KeyedTensor

from recsys import precision
from recsys.config import TrainConfig, resumable
from recsys.data.layout import load_schema
from recsys.data.reader import ParquetReader
from recsys.errors import RecsysError
from recsys.models import build_model, model_names, model_spec
from recsys.tasks import task_spec
from recsys.train.step import scaled_loss
from tests.conftest import REPO_ROOT, train_cli

SETTINGS = ("trainer.batch_size=256", "trainer.log_every=10")  # 37 steps an epoch on small_ctr
# Measured on small_ctr after one epoch: test AUC 0.6784 at fp32 and at bf16 (|Δ| < 1e-4); 0.005 is a 50x margin.
AUC_TOLERANCE = 0.005


def _metrics(run: Path) -> dict:
    return json.loads((run / "artifact" / "metrics.json").read_text())


def _train_lines(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if line["split"] == "train"]


@pytest.fixture(scope="module")
def runs(small_ctr: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One epoch at fp32 and at bf16, same seed and batches."""
    out = {}
    for name in ("fp32", "bf16"):
        run = tmp_path_factory.mktemp(f"precision-{name}") / "run"
        result = train_cli(small_ctr, run, *SETTINGS, f"trainer.precision={name}")
        assert result.returncode == 0, result.stderr[-3000:]
        out[name] = run
    return out


@pytest.mark.slow
def test_bf16_run_records_its_precision_and_learns_as_fp32(runs: dict[str, Path]) -> None:
    fp32, bf16 = _metrics(runs["fp32"]), _metrics(runs["bf16"])
    assert fp32["train.precision"] == "fp32" and bf16["train.precision"] == "bf16"
    manifest = json.loads((runs["bf16"] / "artifact" / "manifest.json").read_text())
    assert manifest["precision"] == "bf16"
    assert {line["precision"] for line in _train_lines(runs["bf16"])} == {"bf16"}
    # Same seed, batches and initial weights: only the compute differs, so equal losses would mean no bf16 ran.
    losses = {name: [line["loss"] for line in _train_lines(run)] for name, run in runs.items()}
    assert losses["fp32"] != losses["bf16"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], abs=0.02)
    assert abs(bf16["test.auc"] - fp32["test.auc"]) < AUC_TOLERANCE, (bf16["test.auc"], fp32["test.auc"])
    assert fp32["test.auc"] > 0.6  # both learned something: the comparison is not between two coin flips


@pytest.mark.slow
def test_bf16_resume_ends_where_an_uninterrupted_run_ends(small_ctr: Path, runs: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """The one-epoch bf16 run, resumed from its epoch-end checkpoint for 3 more steps, against 40 steps in one go."""
    longer = (*SETTINGS, "trainer.precision=bf16", "trainer.epochs=2", "trainer.max_steps=40")
    whole = tmp_path / "whole"
    result = train_cli(small_ctr, whole, *longer)
    assert result.returncode == 0, result.stderr[-3000:]
    resumed = tmp_path / "resumed"
    shutil.copytree(runs["bf16"], resumed)
    result = train_cli(small_ctr, resumed, *longer, extra=("--resume",))
    assert result.returncode == 0, result.stderr[-3000:]
    got, want = _metrics(resumed), _metrics(whole)
    assert got["train.steps"] == want["train.steps"] == 40
    assert got["train.precision"] == "bf16"
    tests = {k: v for k, v in want.items() if k.startswith("test.")}
    assert {k: got[k] for k in tests} == pytest.approx(tests, rel=1e-6, abs=1e-7)


def test_dense_forward_runs_in_bf16_with_fp32_tables_and_loss(small_ctr: Path) -> None:
    """The step's forward (``scaled_loss``) at bf16: every Linear computes bf16, the embedding collection fp32,
    the loss and every gradient fp32; at fp32 nothing is bf16."""
    config = TrainConfig()
    schema = load_schema(small_ctr)
    torch.manual_seed(0)
    model = build_model("dlrm", schema, config.model, config.embedding)
    batch = next(iter(ParquetReader(small_ctr, "train", 128, schema=schema)))
    task = task_spec(schema)
    seen: dict[str, set[torch.dtype]] = {"linear": set(), "tables": set()}

    def record(kind: str):
        def hook(module: nn.Module, inputs: object, output: torch.Tensor | KeyedTensor) -> None:
            seen[kind].add((output.values() if isinstance(output, KeyedTensor) else output).dtype)
        return hook

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.register_forward_hook(record("linear"))
        elif isinstance(module, EmbeddingBagCollection):
            module.register_forward_hook(record("tables"))
    scaled, loss = scaled_loss(model, batch, 1, task, "bf16")
    scaled.backward()
    assert seen == {"linear": {torch.bfloat16}, "tables": {torch.float32}}
    assert scaled.dtype == loss.dtype == torch.float32 and torch.isfinite(loss)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in model.parameters() if p.grad is not None} == {torch.float32}

    seen = {"linear": set(), "tables": set()}
    scaled_loss(model, batch, 1, task, "fp32")
    assert seen == {"linear": {torch.float32}, "tables": {torch.float32}}


@pytest.mark.parametrize("name", model_names())
def test_every_model_steps_at_bf16_as_at_fp32(name: str, small_ctr: Path, small_implicit: Path) -> None:
    """Every registered model (its configs/NAME.yaml) takes a bf16 step: an fp32 loss near the fp32 step's and
    fp32 gradients for the same parameters."""
    retriever = model_spec(name).retriever
    data = small_implicit if retriever else small_ctr
    config = TrainConfig.load(REPO_ROOT / "configs" / f"{name}.yaml")
    schema = load_schema(data)
    torch.manual_seed(0)
    model = build_model(name, schema, config.model, config.embedding)
    if callable(getattr(model, "attach_interactions", None)):
        from recsys.train.retrieval import training_interactions

        model.attach_interactions(*training_interactions(data, schema))
    batch = next(iter(ParquetReader(data, "train", 128, schema=schema)))
    task = task_spec(schema)
    losses, grads = {}, {}
    for name_ in ("fp32", "bf16"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)  # the same sampled negatives for both
        scaled, losses[name_] = scaled_loss(model, batch, 1, task, name_)
        scaled.backward()
        grads[name_] = {n: p.grad.dtype for n, p in model.named_parameters() if p.grad is not None}
    assert losses["bf16"].dtype == torch.float32 and torch.isfinite(losses["bf16"])
    assert float(losses["bf16"]) == pytest.approx(float(losses["fp32"]), rel=0.02)
    assert grads["bf16"].keys() == grads["fp32"].keys() and set(grads["bf16"].values()) == {torch.float32}


@pytest.mark.slow
def test_two_process_sharded_bf16_run(small_ctr: Path, tmp_path: Path) -> None:
    """DMP over 2 gloo processes with bf16 steps: the dense gradients all-reduced are fp32."""
    run = tmp_path / "run"
    result = train_cli(small_ctr, run, *SETTINGS, "trainer.precision=bf16", "trainer.max_steps=6", nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = _metrics(run)
    assert metrics["train.precision"] == "bf16" and metrics["train.world_size"] == 2
    assert metrics["train.steps"] == 6 and 0.5 < metrics["test.auc"] <= 1


def test_auto_resolves_by_the_devices_bf16_support() -> None:
    cpu = torch.device("cpu")
    flags = (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else "").split()
    native = precision.bf16_supported(cpu)
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        assert native
    assert precision.resolve("auto", cpu) == ("bf16" if native else "fp32")
    assert precision.resolve("fp32", cpu) == "fp32"
    assert precision.resolve("bf16", cpu) == "bf16"  # emulated where not native, with a warning
    if not torch.cuda.is_available():
        assert precision.resolve("auto", torch.device("cuda")) == "fp32"


def test_bf16_on_a_cpu_without_it_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    if precision.bf16_supported(torch.device("cpu")):
        pytest.skip("this CPU has native bf16: nothing to warn about")
    with caplog.at_level("WARNING", logger="recsys.precision"):
        precision.resolve("bf16", torch.device("cpu"))
    assert "lacks native bf16" in caplog.text and "SLOWER than fp32" in caplog.text


def test_an_unknown_precision_is_a_config_error_naming_the_key(small_ctr: Path, tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match=r"trainer\.precision"):
        TrainConfig.load(overrides=["trainer.precision=fp16"])
    result = train_cli(small_ctr, tmp_path / "run", "trainer.precision=fp16")
    assert result.returncode == 2
    assert "trainer.precision" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "artifact").exists()


def test_precision_may_change_on_resume() -> None:
    """A checkpoint holds fp32 weights at any precision: a resume may switch it (e.g. onto bf16 hardware)."""
    assert resumable("trainer.precision")
