"""Serving precision: the ranking forward at fp32 against bf16 (``recsys serve --precision bf16``), speed and scores.

One artifact, in-process, on the service's own code: ``ServedModel.probabilities``,
the call the service's model thread makes, under ``torch.inference_mode`` with the
same threads. bf16 is the same loaded model (fp32 tables) with its precision set to
bf16, so the forward runs under bf16 autocast exactly as ``--precision bf16`` serves
it; on a CPU without native bf16 (``machine.native_bf16`` false, see
``machine.cpu_flags``) the service refuses bf16, and the figures here show why
(emulated bf16 is slower).

- latency: the forward over batches of 100, 500 and 4096 test rows (a request's
  candidates, and the batcher's largest pass), fp32 and bf16 interleaved per repeat,
  the first ``--warmup`` repeats not counted; medians and p90 in ms.
- scores: the whole test split scored at both precisions: max and mean
  |bf16 − fp32| of the probabilities, the test AUC at each and their difference.

    .venv/bin/python benchmarks/bench_serve_precision.py           # the demo artifact if `make demo` ran
    .venv/bin/python benchmarks/bench_serve_precision.py --quick   # a smoke check
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_data import cpu_pressure, machine  # noqa: E402
from bench_serve import _artifact as demo_or_small_artifact  # noqa: E402

from recsys.data.reader import ParquetReader  # noqa: E402
from recsys.precision import bf16_supported  # noqa: E402
from recsys.types import Batch  # noqa: E402
from services.ranking.served import ServedModel  # noqa: E402
from services.ranking.settings import Precision  # noqa: E402

BATCH_ROWS = (100, 500, 4096)


def latencies(models: dict[str, ServedModel], batch: Batch, repeats: int, warmup: int) -> dict[str, Any]:
    """Milliseconds per forward of ``batch`` at each precision, interleaved."""
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for k in range(warmup + repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model.probabilities(batch)
                if k >= warmup:
                    times[name].append(1e3 * (time.perf_counter() - start))
    out: dict[str, Any] = {}
    for name, values in times.items():
        deciles = statistics.quantiles(values, n=10) if len(values) > 1 else values * 9
        out[name] = {"p50_ms": statistics.median(values), "p90_ms": deciles[8], "repeats": len(values)}
    out["bf16_speedup"] = out["fp32"]["p50_ms"] / out["bf16"]["p50_ms"]
    return out


def score_differences(models: dict[str, ServedModel], data: Path) -> dict[str, Any]:
    """The test split scored at both precisions: |difference| and AUC."""
    schema = models["fp32"].schema
    scores: dict[str, list[np.ndarray]] = {name: [] for name in models}
    labels = []
    with torch.inference_mode():
        for batch in ParquetReader(data, "test", 8192, schema=schema):
            for name, model in models.items():
                scores[name].append(model.probabilities(batch).numpy())
            labels.append(batch.labels.numpy())
    y = np.concatenate(labels)
    fp32, bf16 = np.concatenate(scores["fp32"]), np.concatenate(scores["bf16"])
    assert fp32.dtype == bf16.dtype == np.float32
    difference = np.abs(bf16.astype(np.float64) - fp32)
    auc = {name: float(roc_auc_score(y, s)) for name, s in (("fp32", fp32), ("bf16", bf16))}
    return {"rows": int(len(y)), "max_abs_difference": float(difference.max()),
            "mean_abs_difference": float(difference.mean()), "auc_fp32": auc["fp32"], "auc_bf16": auc["bf16"],
            "auc_difference": auc["bf16"] - auc["fp32"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, default=REPO / ".demo" / "runs" / "dlrm" / "artifact")
    parser.add_argument("--data", type=Path, default=REPO / ".demo" / "ctr", help="the artifact's data set")
    parser.add_argument("--repeats", type=int, default=200, help="counted forwards per batch size and precision")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_precision.json")
    parser.add_argument("--quick", action="store_true", help="10 repeats after 2 warm-up ones")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.warmup = 10, 2
    artifact, data = demo_or_small_artifact(args)

    results: dict[str, Any] = {"benchmark": "serve_precision", "machine": {
        **machine(), "cpu_pressure": cpu_pressure(), "native_bf16": bf16_supported(torch.device("cpu"))},
        "artifact": str(artifact), "data": str(data), "torch_threads": torch.get_num_threads(),
        "repeats": args.repeats, "warmup": args.warmup}
    fp32 = ServedModel.load(artifact, Precision.FP32)
    models = {"fp32": fp32, "bf16": dataclasses.replace(fp32, precision=Precision.BF16)}  # same tables
    results["latency"] = {}
    for size in BATCH_ROWS:
        batch = next(iter(ParquetReader(data, "test", size, schema=fp32.schema)))  # fewer on a small split
        rows = int(batch.labels.shape[0])
        print(f"… forward latency, {rows} rows", file=sys.stderr, flush=True)
        results["latency"][str(rows)] = latencies(models, batch, args.repeats, args.warmup)
    print("… scores over the test split", file=sys.stderr, flush=True)
    results["scores"] = score_differences(models, data)
    results["machine"]["cpu_pressure_end"] = cpu_pressure()

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    m = results["machine"]
    print(f"\n{m['cpu']} · native bf16: {m['native_bf16']} · {results['torch_threads']} threads · "
          f"cpu pressure {m['cpu_pressure']}% → {m['cpu_pressure_end']}%")
    print(f"{'rows':>6}{'fp32 p50 ms':>13}{'bf16 p50 ms':>13}{'bf16 speed-up':>15}")
    for size, row in results["latency"].items():
        print(f"{size:>6}{row['fp32']['p50_ms']:>13.2f}{row['bf16']['p50_ms']:>13.2f}{row['bf16_speedup']:>15.2f}")
    s = results["scores"]
    print(f"scores over {s['rows']:,} test rows: max |bf16 − fp32| {s['max_abs_difference']:.2e}, mean "
          f"{s['mean_abs_difference']:.2e}; AUC fp32 {s['auc_fp32']:.5f}, bf16 {s['auc_bf16']:.5f} "
          f"(Δ {s['auc_difference']:+.5f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
