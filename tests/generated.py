"""A synthetic CTR data set with generated features of every operator, and a DLRM trained on it: shared by the
artifact and serving tests of generated features (online must equal offline)."""

from __future__ import annotations

from pathlib import Path

from recsys.features.base import GeneratedFeature
from recsys.schema import Derivation, DerivedOp
from tests.conftest import train_cli

# Synthetic CTR entities: C1 C4 user, C2 C5 item, C3 C6 context (sparse); I1-I4 user, I5-I8 item, I9-I13 context.
RECIPES: dict[str, tuple[DerivedOp, list[str], dict[str, int]]] = {
    "g_cross": (DerivedOp.CROSS, ["C1", "C2"], {}),  # user × item, exact ids (stride)
    "g_cross_hash": (DerivedOp.CROSS, ["C4", "C3"], {"buckets": 997}),  # user × context, hashed
    "g_group_mean": (DerivedOp.GROUP_MEAN, ["I9", "C2"], {}),  # a context value's mean per item field value
    "g_freq": (DerivedOp.FREQ, ["C5"], {}),
    "g_freq_context": (DerivedOp.FREQ, ["C6"], {}),
    "g_bin": (DerivedOp.BIN, ["I1"], {}),
    "g_add": (DerivedOp.ADD, ["I1", "I5"], {}),  # user + item
    "g_sub": (DerivedOp.SUB, ["I5", "I9"], {}),  # item - context
    "g_mul": (DerivedOp.MUL, ["I2", "I10"], {}),  # user * context
    "g_div": (DerivedOp.DIV, ["I6", "I3"], {}),  # item / user
    "g_abs": (DerivedOp.ABS, ["I11"], {}),  # context
    "g_square": (DerivedOp.SQUARE, ["I7"], {}),  # item
}


def proposals() -> list[GeneratedFeature]:
    out = []
    for name, (op, inputs, extra) in RECIPES.items():
        kind = "sparse" if op in (DerivedOp.CROSS, DerivedOp.BIN) else "dense"
        out.append(GeneratedFeature(name=name, recipe=Derivation(op=op, inputs=inputs, **extra), kind=kind, gain=0.0))
    return out


def generated_run(root: Path, rows: int = 20_000, seed: int = 7) -> tuple[Path, Path, Path]:
    """(base data, generated data, artifact of a DLRM trained 30 steps on the generated data)."""
    from recsys.data.pipeline import PrepareOptions
    from recsys.data.synth import CtrConfig, synth_ctr
    from recsys.features.generate import write_generated

    base, generated = root / "ctr", root / "ctr_generated"
    synth_ctr(CtrConfig(rows=rows, seed=seed), base, PrepareOptions(seed=seed))
    write_generated(base, generated, proposals(), progress=False)
    result = train_cli(generated, root / "run", "trainer.max_steps=30")
    assert result.returncode == 0, result.stderr[-3000:]
    return base, generated, root / "run" / "artifact"
