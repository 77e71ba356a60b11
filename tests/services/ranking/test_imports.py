"""The ranking service loads without the training metrics: ``import torchmetrics`` brings every domain it covers
(scipy.signal and matplotlib among them), 2.3 s of a process's start and memory a server never uses."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_python

LOADED = ("torchmetrics", "matplotlib", "scipy.signal")


def test_a_served_model_loads_without_torchmetrics(served_artifact: tuple[Path, Path]) -> None:
    _, artifact = served_artifact
    code = ("import sys\nimport services.ranking.app\nfrom services.ranking.served import ServedModel\n"
            "ServedModel.load(sys.argv[1])\n"
            f"print(sorted(name for name in {LOADED!r} if name in sys.modules))")
    result = run_python(code, str(artifact), fresh=True)  # fresh: the test zygote has imported them all
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
