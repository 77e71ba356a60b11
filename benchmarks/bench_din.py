"""DIN training step: its cost follows the total history length, not batch × longest history.

Issue #12. DIN attends over each row's behaviour history with no padding (the
activation unit runs on the flat (Σ lengths, D) values, the pooling is a segment
sum). So two batches with the same total history length should step in the same
time even when one's longest history is twice (or four times) the other's; a
padded implementation would do B × max work instead. Measured here:

- schema: the synthetic CTR data's (13 dense, 26 categorical fields, user, item,
  category, the item and category histories) with table sizes as a 400k-row
  ``recsys data synth --kind ctr`` set measures them;
- model: ``build_model('din')`` with ``configs/din.yaml``'s model and embedding
  sections, sharded by ``recsys.distributed`` in one process (fbgemm's fused
  kernels with the config's sparse optimizer in the backward), stepped by
  ``recsys.train.step.train_step``: the training engine as ``recsys train`` runs it;
- batches of ``--batch-size`` rows, uniform ids, one history length per row for
  both histories, in three profiles with the same Σ lengths per batch:
  ``max20``: lengths uniform in 0..20 (the generator's: mean 10, max 20);
  ``max40``: the same batches with 1/32 of the rows lengthened to 40 and the
  others shortened to keep the total; ``max80``: 1/64 of the rows at 80;
- the attention part alone: ``InterestArch`` forward and backward (activation
  units, segment sums, concatenation) on embeddings looked up beforehand, an
  unsharded copy of the model;
- timing: one torch thread by default (``--threads``); the (part, profile) pairs
  step in interleaved rounds (rotating order, the first step after a switch not
  counted) so load changes hit them alike; medians of the counted steps (and the
  10th percentile, less touched by a shared machine); the CPU (``/proc/cpuinfo``
  model name and flags), the load average and CPU pressure are saved with the
  figures.

The verdict is the ratio of median step times (max40 / max20, expected within
10% of 1.0), written as measured.

    .venv/bin/python benchmarks/bench_din.py            # ~3 min on an idle 2-core machine
    .venv/bin/python benchmarks/bench_din.py --quick    # a smoke check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor, KeyedTensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import cpu_pressure, machine  # noqa: E402

from recsys.config import TrainConfig  # noqa: E402
from recsys.data.synth import CARDINALITIES, CtrConfig, ctr_schema  # noqa: E402
from recsys.distributed import sharding  # noqa: E402
from recsys.distributed.env import init_distributed, shutdown  # noqa: E402
from recsys.embeddings import Embedded  # noqa: E402
from recsys.models import build_model  # noqa: E402
from recsys.schema import Schema  # noqa: E402
from recsys.tasks import task_named  # noqa: E402
from recsys.train.step import train_step  # noqa: E402
from recsys.types import Batch  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "configs" / "din.yaml"
# Table rows of a 400k-row synthetic set after its vocabulary threshold (min_count 3): the long tail shares OOV.
ROWS = {"user_id": 7947, "item_id": 4001, "item_category": 51}
MAX_FIELD_ROWS = 9000
PROFILES = {"max20": (20, 0), "max40": (40, 32), "max80": (80, 64)}  # name → (longest, 1 / share of long rows)


def schema() -> Schema:
    out = ctr_schema(CtrConfig(rows=400_000))
    sizes = dict(zip([f"C{k + 1}" for k in range(len(CARDINALITIES))], CARDINALITIES)) | ROWS
    for table in out.tables:
        table.cardinality = min(sizes[table.name] + 1, MAX_FIELD_ROWS)
    for feature in out.dense:
        feature.mean, feature.std = 0.0, 1.0
    return out


def lengths_profiles(batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch's history lengths per profile: the same Σ lengths, different longest histories."""
    base = torch.randint(0, 21, (batch_size,), generator=generator)
    out = {"max20": base}
    for name, (longest, share) in PROFILES.items():
        if not share:
            continue
        lengths = base.clone()
        long_rows = torch.randperm(batch_size, generator=generator)[: batch_size // share]
        lengths[long_rows] = longest
        excess = int(lengths.sum() - base.sum())
        others = torch.ones(batch_size, dtype=torch.bool)
        others[long_rows] = False
        while excess > 0:  # shorten the other rows by one, a random row at a time, down to the old total
            candidates = torch.nonzero(others & (lengths > 0)).squeeze(1)
            pick = candidates[torch.randperm(len(candidates), generator=generator)[: min(excess, len(candidates))]]
            lengths[pick] -= 1
            excess -= len(pick)
        out[name] = lengths
    return out


def make_batches(data_schema: Schema, count: int, batch_size: int, seed: int) -> dict[str, list[Batch]]:
    """``count`` batches per profile; a profile's batch k has batch k's ids, only the histories' cut differs."""
    generator = torch.Generator().manual_seed(seed)
    rows = {t.name: t.cardinality for t in data_schema.tables}
    pooled = [f for f in data_schema.sparse]
    out: dict[str, list[Batch]] = {name: [] for name in PROFILES}
    for _ in range(count):
        ids = [torch.randint(0, rows[f.table_name], (batch_size,), generator=generator) for f in pooled]
        dense = torch.randn(batch_size, len(data_schema.dense), generator=generator)
        labels = torch.randint(0, 2, (batch_size,), generator=generator).float()
        histories = {s.name: torch.randint(0, rows[s.table_name], (batch_size * 80,), generator=generator)
                     for s in data_schema.sequences}
        for name, lengths in lengths_profiles(batch_size, generator).items():
            total = int(lengths.sum())
            values = torch.cat([*ids, *[histories[s.name][:total] for s in data_schema.sequences]])
            all_lengths = torch.cat([torch.ones(len(pooled) * batch_size, dtype=torch.int32),
                                     *[lengths.int() for _ in data_schema.sequences]])
            sparse = KeyedJaggedTensor(keys=data_schema.sparse_keys, values=values, lengths=all_lengths)
            out[name].append(Batch(dense=dense, sparse=sparse, labels=labels))
    return out


def engine(data_schema: Schema, batch_size: int) -> tuple[TrainConfig, Callable[[Batch], None]]:
    section = yaml.safe_load(CONFIG.read_text())
    config = TrainConfig.from_dict({"model": section["model"], "embedding": section.get("embedding", {}),
                                    "optimizer": section.get("optimizer", {}),
                                    "sharding": {"sharding_types": ["table_wise"], "compute_kernels": ["fused"]},
                                    "trainer": {"batch_size": batch_size}, "seed": 0}, where="bench_din")
    env = init_distributed()  # one process: a gloo group of 1, all threads
    torch.manual_seed(0)
    model = build_model("din", data_schema, config.model, config.embedding, "meta")
    plan = sharding.plan(model, config, env.world_size, env.local_world_size, env.device, dist.group.WORLD)
    dmp = sharding.shard(model, config, env, plan)
    optimizer = sharding.optimizer(dmp, config)
    task = task_named("ctr")
    dmp.train()
    return config, lambda batch: train_step(dmp, optimizer, batch, env.world_size, task)


def attention(data_schema: Schema, config: TrainConfig, batches: list[Batch]) -> Callable[[Batch], None]:
    """Forward and backward of DIN's ``InterestArch`` alone (activation units, segment sums, the concatenation)
    on embeddings looked up once beforehand: the part of the step whose cost the history's layout decides."""
    torch.manual_seed(0)
    model = build_model("din", data_schema, config.model, config.embedding).train()
    inputs: dict[int, Embedded] = {}
    with torch.no_grad():
        for batch in batches:
            looked_up = model.sparse_arch(batch.sparse)
            pooled = looked_up.pooled
            inputs[id(batch)] = Embedded(
                KeyedTensor(keys=pooled.keys(), length_per_key=pooled.length_per_key(),
                            values=pooled.values().clone().requires_grad_()),
                {name: JaggedTensor(values=jagged.values().clone().requires_grad_(), lengths=jagged.lengths())
                 for name, jagged in looked_up.sequences.items()})

    def step(batch: Batch) -> None:
        model.interest_arch(inputs[id(batch)], batch).sum().backward()
    return step


def interleaved(steppers: dict[str, Callable[[Batch], None]], batches: dict[str, list[Batch]], rounds: int,
                steps: int, warmup: int) -> dict[tuple[str, str], list[float]]:
    """Seconds per counted step of each (stepper, profile), stepped round-robin in rotating order."""
    names = [(stepper, profile) for stepper in steppers for profile in batches]
    times: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    for stepper, profile in names:
        for k in range(warmup):
            steppers[stepper](batches[profile][k % len(batches[profile])])
    for r in range(rounds):
        for stepper, profile in names[r % len(names):] + names[:r % len(names)]:
            for k in range(steps + 1):
                batch = batches[profile][(r * steps + k) % len(batches[profile])]
                start = time.perf_counter()
                steppers[stepper](batch)
                if k:  # the first step after a switch refills the caches
                    times[stepper, profile].append(time.perf_counter() - start)
    return times


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# DIN training step vs longest history (same total history length)", "",
        f"CPU: {m['cpu']} ({m['nproc']} CPUs, {m['torch_threads']} torch threads); "
        f"AVX-512: {'yes' if 'avx512f' in m['cpu_flags'] else 'no'}, "
        f"AVX2: {'yes' if 'avx2' in m['cpu_flags'] else 'no'}; "
        f"load average {m['load_average']} before, {results['load_average_after']} after; "
        f"CPU pressure {m['cpu_pressure']}% before, {results['cpu_pressure_after']}% after.", "",
        f"Batch {results['config']['batch_size']}, model {results['config']['model']}, "
        f"embedding dim {results['config']['embedding_dim']}; {results['config']['rounds']} rounds × "
        f"{results['config']['steps_per_round']} counted steps per profile.", "",
        "| profile | mean length | longest | Σ lengths | B × longest | train step ms (q1–q3) | ratio "
        "| attention ms (q1–q3) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["profiles"].items():
        step, part = row["train_step"], row["attention"]
        lines.append(f"| {name} | {row['mean_length']:.2f} | {row['max_length']} | {row['total_length']:.0f} | "
                     f"{row['padded_elements']:.0f} | {step['ms']:.1f} ({step['ms_q1']:.1f}–{step['ms_q3']:.1f}) | "
                     f"{step['ratio_to_max20']:.3f} | {part['ms']:.2f} ({part['ms_q1']:.2f}–{part['ms_q3']:.2f}) | "
                     f"{part['ratio_to_max20']:.3f} |")
    lines += ["", results["verdict"], "", f"CPU flags: {' '.join(m['cpu_flags'])}", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="results file (default results/din.json; --quick: "
                        "work/din-quick.json, so a smoke run never replaces results)")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=6, help="counted steps per profile per round")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3, help="steps per profile before the first round")
    parser.add_argument("--batch-count", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (one by default: on a shared machine a descheduled second thread "
                        "stalls whole steps, which swamps the difference measured)")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and steps, for a smoke check")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.warmup = 2, 2, 1
    args.out = args.out or HERE / ("work/din-quick.json" if args.quick else "results/din.json")

    results: dict[str, Any] = {"benchmark": "din_history_length",
                               "machine": {**machine(), "cpu_pressure": cpu_pressure()}}
    data_schema = schema()
    config, step = engine(data_schema, args.batch_size)
    torch.set_num_threads(args.threads)  # after init_distributed, which sets its own count
    results["machine"]["torch_threads"] = torch.get_num_threads()
    batches = make_batches(data_schema, args.batch_count, args.batch_size, seed=0)
    results["config"] = {"batch_size": args.batch_size, "model": config.model,
                         "embedding_dim": config.embedding.dim, "sparse_optimizer": config.optimizer.sparse.name,
                         "steps_per_round": args.steps, "rounds": args.rounds, "warmup": args.warmup,
                         "batch_count": args.batch_count, "ids": "uniform", "sharding": "table_wise, fused, 1 process"}
    steppers = {"train_step": step, "attention": attention(data_schema, config, [b for p in batches.values() for b in p])}
    print(f"… stepping {len(steppers)} × {len(PROFILES)} profiles × {args.rounds} rounds", file=sys.stderr, flush=True)
    times = interleaved(steppers, batches, args.rounds, args.steps, args.warmup)
    shutdown()

    profiles: dict[str, Any] = {}
    for name, profile_batches in batches.items():
        lengths = [b.sparse["hist_item_id"].lengths().float() for b in profile_batches]
        profiles[name] = {"mean_length": float(torch.stack(lengths).mean()),
                          "max_length": int(max(int(x.max()) for x in lengths)),
                          "total_length": statistics.mean(float(x.sum()) for x in lengths),
                          "padded_elements": float(args.batch_size * max(int(x.max()) for x in lengths))}
        for stepper in steppers:
            seconds = times[stepper, name]
            quartiles = statistics.quantiles(seconds, n=4)
            profiles[name][stepper] = {"ms": 1e3 * statistics.median(seconds), "ms_q1": 1e3 * quartiles[0],
                                       "ms_q3": 1e3 * quartiles[2], "ms_p10": 1e3 * statistics.quantiles(seconds, n=10)[0],
                                       "steps": len(seconds)}
    for row in profiles.values():
        for stepper in steppers:
            row[stepper]["ratio_to_max20"] = row[stepper]["ms"] / profiles["max20"][stepper]["ms"]
    results["profiles"] = profiles
    ratio = profiles["max40"]["train_step"]["ratio_to_max20"]
    results["ratio_max40_to_max20"] = ratio
    results["within_10_percent"] = abs(ratio - 1) <= 0.10
    results["verdict"] = (
        f"Doubling the longest history at the same total length changes the train step time by "
        f"{100 * (ratio - 1):+.1f}% ({'within' if results['within_10_percent'] else 'outside'} the 10% target) "
        f"and the attention part's by {100 * (profiles['max40']['attention']['ratio_to_max20'] - 1):+.1f}%; "
        f"quadrupling it: {100 * (profiles['max80']['train_step']['ratio_to_max20'] - 1):+.1f}% and "
        f"{100 * (profiles['max80']['attention']['ratio_to_max20'] - 1):+.1f}%.")
    results["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    results["cpu_pressure_after"] = cpu_pressure()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
