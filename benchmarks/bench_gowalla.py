"""Gowalla: LightGCN, LTGNN and MF-BPR, Recall@20 and NDCG@20 against wall time and process CPU time.

Issue #14. The BARS leaderboard's Gowalla (LightGCN's split: ``train.txt`` / ``test.txt``,
one line per user: the user id then its item ids; 29,858 users, 40,981 items, 810,128
training interactions) with its anchors: LightGCN Recall@20 0.1820 / NDCG@20 0.1547,
MF-BPR 0.1627 / 0.1378 (dim 64, ~1000 epochs on a GPU). A 2-core machine cannot run 1000
epochs of LightGCN, so every run gets the same training budget (``--cpu-budget`` CPU
seconds, or ``--budget`` wall seconds if that comes first; runs one after the other, never
in parallel) and the curve is recorded: after every ``--eval-every`` CPU seconds of
training (and at the end) the model turns to eval mode (its final vectors are computed),
and the whole test set is ranked. The budget is in CPU time because the machine is shared:
under a load of 8 on 2 cores a process gets a quarter of a core, and a wall budget would
measure the neighbours.

Each figure is taken against both clocks of the training alone (evaluation excluded):
wall seconds and this process's CPU seconds (``time.process_time``; the machine is shared,
so CPU time is the fairer clock). The CPU model, its flags and the load average at each
point are recorded with the results.

What is trained: the registered models (``recsys.models``), unsharded, in this process,
from a schema of two identity tables (user_id, item_id) of dim 64, the graph attached from
``train.txt`` (``attach_interactions``), batches of shuffled training interactions (one
uniform negative per row: BPR), and a dense ``torch.optim.Adam`` over the tables — the
optimiser of the papers and of BARS (the trainer's fused sparse optimisers have no Adam on a
CPU). MF-BPR is ``lightgcn`` with ``layers: 0``: its final vectors are E0 and its loss BPR
with the same L2 term, which is MF-BPR exactly (``--mf-model mf`` trains a registered ``mf``
instead). Settings per model (``SETTINGS``): LightGCN's paper (lr 1e-3, L2 1e-4, 3 layers,
batch 2048), LTGNN's code (lr 1.5e-3, L2 2e-4, 1 layer, α 0.45, 15 neighbours).

Metrics: full ranking over all items, each user's training items excluded, Recall@20 =
hits / |test items| and NDCG@20 with the ideal DCG of min(|test items|, 20) hits, averaged
over the test users (LightGCN's and BARS's definitions), computed by
``evaluate`` below, which ``--check-evaluator`` compares with ``recsys.eval``'s
``evaluate_retriever`` on the prepared copy of the same files (equal to 1e-15 on all
29,858 test users).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gowalla.py --cpu-budget 300 --budget 1200
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_gowalla.py --quick     # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from recsys.config import EmbeddingConfig
from recsys.models import build_model
from recsys.schema import Schema
from recsys.tasks.implicit import pair_loss
from recsys.types import Batch

REPO = Path(__file__).resolve().parents[1]
# ../shared/datasets beside the repository (a worktree sits one level deeper)
DATA = next((p / "shared" / "datasets" / "gowalla" for p in REPO.parents[:2] if (p / "shared").is_dir()),
            REPO.parent / "shared" / "datasets" / "gowalla")
RESULTS = REPO / "benchmarks" / "results" / "retrieval-gowalla"
BARS = {"lightgcn": {"recall@20": 0.1820, "ndcg@20": 0.1547}, "mf": {"recall@20": 0.1627, "ndcg@20": 0.1378}}
K = 20


@dataclass(frozen=True)
class Setting:
    model: str
    section: dict[str, Any]
    lr: float
    batch_size: int = 2048
    label: str = ""


SETTINGS = {
    "lightgcn": Setting("lightgcn", {"layers": 3, "l2": 1e-4, "negatives": 1}, lr=1e-3, label="LightGCN (3 layers)"),
    "ltgnn": Setting("ltgnn", {"layers": 1, "alpha": 0.45, "neighbours": 15, "l2": 2e-4, "negatives": 1}, lr=1.5e-3,
                     label="LTGNN (1 layer, α 0.45, 15 neighbours, VR)"),
    "mf": Setting("lightgcn", {"layers": 0, "l2": 1e-4, "negatives": 1}, lr=1e-3, label="MF-BPR (lightgcn, 0 layers)"),
}


@dataclass
class Interactions:
    users: int
    items: int
    train_users: np.ndarray  # (E,)
    train_items: np.ndarray  # (E,)
    test: dict[int, np.ndarray] = field(default_factory=dict)  # user → test items


def read_split(path: Path) -> dict[int, np.ndarray]:
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) > 1:
            out[int(parts[0])] = np.array(parts[1:], dtype=np.int64)
    return out


def read_gowalla(data: Path) -> Interactions:
    train, test = read_split(data / "train.txt"), read_split(data / "test.txt")
    users = 1 + max(max(train), max(test))
    items = 1 + max(int(a.max()) for split in (train, test) for a in split.values())
    train_users = np.concatenate([np.full(len(v), u, dtype=np.int64) for u, v in train.items()])
    train_items = np.concatenate(list(train.values()))
    return Interactions(users, items, train_users, train_items, test)


def schema_of(data: Interactions, dim: int) -> Schema:
    return Schema.from_dict({
        "task": "implicit",
        "sparse": [{"name": "user_id", "entity": "user"}, {"name": "item_id", "entity": "item"}],
        "tables": [{"name": "user_id", "encoding": "identity", "cardinality": data.users, "embedding_dim": dim},
                   {"name": "item_id", "encoding": "identity", "cardinality": data.items, "embedding_dim": dim}],
        "user_key": {"name": "user_key"}, "item_key": {"name": "item_key"},
    })


def pair_batch(users: torch.Tensor, items: torch.Tensor) -> Batch:
    rows = users.numel()
    sparse = KeyedJaggedTensor(keys=["user_id", "item_id"], values=torch.cat([users, items]),
                               lengths=torch.ones(2 * rows, dtype=torch.int32))
    return Batch(dense=torch.zeros(rows, 0), sparse=sparse, labels=torch.ones(rows))


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Interactions, chunk: int = 2048) -> dict[str, float]:
    """Recall@20 and NDCG@20 over the test users, full ranking, training items excluded."""
    model.eval()
    all_users = torch.arange(data.users)
    users = model.user_vectors(pair_batch(all_users, torch.zeros_like(all_users)))  # (U, d)
    all_items = torch.arange(data.items)
    items = model.item_vectors(pair_batch(torch.zeros_like(all_items), all_items))  # (I, d)
    model.train()
    order = np.argsort(data.train_users, kind="stable")
    seen_users, seen_items = data.train_users[order], data.train_items[order]
    starts = np.searchsorted(seen_users, np.arange(data.users + 1))
    discounts = 1.0 / np.log2(np.arange(2, K + 2))
    ideal = np.cumsum(discounts)
    tested = np.array(sorted(data.test), dtype=np.int64)
    recall = ndcg = 0.0
    for begin in range(0, len(tested), chunk):
        block = tested[begin:begin + chunk]
        scores = users[torch.from_numpy(block)] @ items.T  # (b, I)
        rows = np.concatenate([np.full(starts[u + 1] - starts[u], r) for r, u in enumerate(block)])
        cols = np.concatenate([seen_items[starts[u]:starts[u + 1]] for u in block])
        scores[torch.from_numpy(rows), torch.from_numpy(cols)] = -math.inf
        top = scores.topk(K, dim=1).indices.numpy()  # (b, K)
        for r, u in enumerate(block):
            relevant = data.test[int(u)]
            hits = np.isin(top[r], relevant)
            recall += hits.sum() / len(relevant)
            ndcg += (hits * discounts).sum() / ideal[min(len(relevant), K) - 1]
    return {"recall@20": recall / len(tested), "ndcg@20": ndcg / len(tested), "users": len(tested)}


def check_evaluator(data: Interactions, prepared: Path) -> dict[str, Any]:
    """``evaluate`` against ``recsys.eval.retrieval.evaluate_retriever`` on the same vectors (popularity plus a
    random part: item i (log count_i, 0.1·noise), user u (1, its training items' noise summed)), the latter on ``recsys data prepare --format interactions`` of the
    same files (its vocabularies map rows back to the raw ids)."""
    import polars as pl

    from recsys.eval.retrieval import evaluate_retriever

    generator = torch.Generator().manual_seed(0)
    noise = 0.1 * torch.randn(data.items, 63, generator=generator)
    counts = torch.bincount(torch.from_numpy(data.train_items), minlength=data.items).float()
    items = torch.cat([counts.add(1).log().unsqueeze(1), noise], dim=1)  # (I, 64)
    users = torch.cat([torch.ones(data.users, 1), torch.zeros(data.users, 63).index_add_(
        0, torch.from_numpy(data.train_users), noise[torch.from_numpy(data.train_items)])], dim=1)  # (U, 64)

    class Fixed(torch.nn.Module):
        def user_vectors(self, batch: Batch) -> torch.Tensor:
            return users[batch.sparse["user_id"].values()]

        def item_vectors(self, batch: Batch) -> torch.Tensor:
            return items[batch.sparse["item_id"].values()]

    frame = pl.read_parquet([*prepared.glob("train/*.parquet"), *prepared.glob("test/*.parquet")],
                            columns=["user_key", "item_key", "user_id", "item_id"])
    user_raw = dict(zip(frame["user_id"].to_list(), map(int, frame["user_key"].to_list())))
    item_raw = dict(zip(frame["item_id"].to_list(), map(int, frame["item_key"].to_list())))

    def user_vectors(batch: Batch) -> torch.Tensor:
        return users[torch.tensor([user_raw.get(int(r), 0) for r in batch.sparse["user_id"].values()])]

    def item_vectors(batch: Batch) -> torch.Tensor:
        return items[torch.tensor([item_raw.get(int(r), 0) for r in batch.sparse["item_id"].values()])]

    theirs = evaluate_retriever(user_vectors, item_vectors, "dot", prepared, "test")
    return {"local": evaluate(Fixed(), data), "recsys.eval": {k: theirs[k] for k in ("recall@20", "ndcg@20", "users")}}


def machine() -> dict[str, Any]:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    return {"cpu": fields.get("model name", platform.processor()), "flags": fields.get("flags", ""),
            "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loadavg_start": os.getloadavg()}


def run(name: str, data: Interactions, budget: float, cpu_budget: float, eval_every: float, dim: int, seed: int,
        max_steps: int | None, on_point: Any = None) -> dict[str, Any]:
    setting = SETTINGS[name]
    torch.manual_seed(seed)
    np.random.seed(seed)
    model = build_model(setting.model, schema_of(data, dim), setting.section, EmbeddingConfig())
    for parameter in model.parameters():  # LightGCN's initialisation: N(0, 0.1²)
        torch.nn.init.normal_(parameter, std=0.1)
    model.attach_interactions(data.train_users, data.train_items)
    optimizer = torch.optim.Adam(model.parameters(), lr=setting.lr)
    model.train()
    edges = len(data.train_users)
    steps_per_epoch = edges // setting.batch_size
    wall = cpu = since_eval = 0.0
    step, points, losses = 0, [], []
    rng = np.random.default_rng(seed)
    print(f"{name}: {setting.label}, {steps_per_epoch} steps per epoch, budget {cpu_budget:.0f} CPU s or "
          f"{budget:.0f} wall s", flush=True)
    done = False
    while not done:
        order = rng.permutation(edges)
        for begin in range(0, steps_per_epoch * setting.batch_size, setting.batch_size):
            rows = order[begin:begin + setting.batch_size]
            batch = pair_batch(torch.from_numpy(data.train_users[rows]), torch.from_numpy(data.train_items[rows]))
            wall0, cpu0 = time.perf_counter(), time.process_time()
            optimizer.zero_grad()
            loss = pair_loss(model(batch))
            loss.backward()
            optimizer.step()
            elapsed = time.perf_counter() - wall0
            wall += elapsed
            cpu += time.process_time() - cpu0
            since_eval += time.process_time() - cpu0
            step += 1
            losses.append(float(loss))
            done = wall >= budget or cpu >= cpu_budget or (max_steps is not None and step >= max_steps)
            if since_eval >= eval_every or done:
                eval0 = time.perf_counter()
                metrics = evaluate(model, data)
                point = {"step": step, "epoch": step / steps_per_epoch, "wall_s": round(wall, 2),
                         "cpu_s": round(cpu, 2), "loss": float(np.mean(losses[-50:])),
                         "recall@20": metrics["recall@20"], "ndcg@20": metrics["ndcg@20"],
                         "eval_s": round(time.perf_counter() - eval0, 2), "loadavg": os.getloadavg()[0]}
                points.append(point)
                if on_point is not None:
                    on_point(points)
                since_eval = 0.0
                print(f"  {name} epoch {point['epoch']:.2f} wall {wall:.0f}s cpu {cpu:.0f}s loss {point['loss']:.4f} "
                      f"recall@20 {point['recall@20']:.4f} ndcg@20 {point['ndcg@20']:.4f} "
                      f"(load {point['loadavg']:.2f})", flush=True)
            if done:
                break
    return {"model": setting.model, "label": setting.label, "config": setting.section, "lr": setting.lr,
            "batch_size": setting.batch_size, "optimizer": "adam", "steps_per_epoch": steps_per_epoch,
            "steps": step, "epochs": step / steps_per_epoch, "wall_s": wall, "cpu_s": cpu,
            "cpu_s_per_epoch": cpu / (step / steps_per_epoch), "wall_s_per_epoch": wall / (step / steps_per_epoch),
            "points": points}


def first_reaching(points: list[dict[str, Any]], value: float, clock: str) -> float | None:
    return next((p[clock] for p in points if p["recall@20"] >= value), None)


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """Comparisons: LTGNN against LightGCN's best recall in the budget; the epochs the anchors would take."""
    runs = result["runs"]
    out: dict[str, Any] = {}
    if "lightgcn" in runs and "ltgnn" in runs:
        target = max(p["recall@20"] for p in runs["lightgcn"]["points"])
        lightgcn_cpu = first_reaching(runs["lightgcn"]["points"], target, "cpu_s")
        ltgnn_cpu = first_reaching(runs["ltgnn"]["points"], target, "cpu_s")
        out["ltgnn_vs_lightgcn"] = {
            "lightgcn_best_recall@20": target, "lightgcn_cpu_s": lightgcn_cpu,
            "ltgnn_cpu_s_to_reach_it": ltgnn_cpu,
            "ltgnn_wall_s_to_reach_it": first_reaching(runs["ltgnn"]["points"], target, "wall_s"),
            "ltgnn_faster": ltgnn_cpu is not None and lightgcn_cpu is not None and ltgnn_cpu < lightgcn_cpu}
    for name, run_ in runs.items():
        best = max(run_["points"], key=lambda p: p["recall@20"])
        anchor = BARS.get("mf" if name == "mf" else name)
        out[name] = {"best_recall@20": best["recall@20"], "best_ndcg@20": best["ndcg@20"], "at_epoch": best["epoch"],
                     "cpu_s_per_epoch": run_["cpu_s_per_epoch"],
                     "cpu_hours_for_1000_epochs": run_["cpu_s_per_epoch"] * 1000 / 3600}
        if anchor:
            out[name]["bars"] = anchor
            out[name]["gap_recall@20"] = anchor["recall@20"] - best["recall@20"]
    return out


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = ["# Retrieval on Gowalla: Recall@20 / NDCG@20 against training time", "",
             f"CPU: {m['cpu']} ({m['cores']} cores, torch threads {m['threads']}); load average at start "
             f"{m['loadavg_start'][0]:.2f}. Flags: {' '.join(f for f in m['flags'].split() if f.startswith(('avx', 'fma', 'amx')))}.",
             f"Budget {result['settings']['cpu_budget_s']:.0f} CPU s (at most {result['settings']['budget_s']:.0f} "
             "wall s) of training per run, runs one after the "
             "other; evaluation (full ranking of all 40,981 items for the 29,858 test users, training items "
             "excluded) is outside both clocks. Command: `" + result["settings"]["command"] + "`.", "",
             "| model | epochs | wall s/epoch | CPU s/epoch | best Recall@20 | best NDCG@20 | BARS Recall@20 / NDCG@20 "
             "| CPU hours for 1000 epochs |", "|---|---|---|---|---|---|---|---|"]
    s = result["summary"]
    for name, run_ in result["runs"].items():
        anchor = s[name].get("bars")
        bars = f"{anchor['recall@20']:.4f} / {anchor['ndcg@20']:.4f}" if anchor else "—"
        lines.append(f"| {run_['label']} | {run_['epochs']:.2f} | {run_['wall_s_per_epoch']:.1f} | "
                     f"{run_['cpu_s_per_epoch']:.1f} | {s[name]['best_recall@20']:.4f} | {s[name]['best_ndcg@20']:.4f} | "
                     f"{bars} | "
                     f"{s[name]['cpu_hours_for_1000_epochs']:.1f} |")
    lines += ["", "## Curves", ""]
    for name, run_ in result["runs"].items():
        lines += [f"### {run_['label']}", "", "| epoch | wall s | CPU s | loss | Recall@20 | NDCG@20 | load |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['epoch']:.2f} | {p['wall_s']:.0f} | {p['cpu_s']:.0f} | {p['loss']:.4f} | {p['recall@20']:.4f} | "
                  f"{p['ndcg@20']:.4f} | {p['loadavg']:.2f} |" for p in run_["points"]]
        lines.append("")
    if result.get("notes"):
        lines += ["## Reading", "", *result["notes"], ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", default="lightgcn,ltgnn,mf")
    parser.add_argument("--cpu-budget", type=float, default=300.0, help="training CPU seconds per model")
    parser.add_argument("--budget", type=float, default=1200.0, help="training wall seconds per model at most")
    parser.add_argument("--eval-every", type=float, default=60.0, help="training CPU seconds between evaluations")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="a few steps of each model: a smoke run")
    parser.add_argument("--check-evaluator", type=Path, default=None, metavar="PREPARED",
                        help="only compare this evaluation with recsys.eval's on `recsys data prepare --format "
                             "interactions --input DATA --out PREPARED --valid-fraction 0`")
    args = parser.parse_args()
    if not (args.data / "train.txt").is_file():
        raise SystemExit(f"{args.data}: no train.txt (the Gowalla copy of LightGCN's split)")
    data = read_gowalla(args.data)
    if args.check_evaluator is not None:
        print(json.dumps(check_evaluator(data, args.check_evaluator)))
        return
    result: dict[str, Any] = {"machine": machine(), "settings": {
        "budget_s": args.budget, "cpu_budget_s": args.cpu_budget, "eval_every_s": args.eval_every, "dim": args.dim, "seed": args.seed,
        "data": str(args.data), "users": data.users, "items": data.items, "train_interactions": len(data.train_users),
        "command": "OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_gowalla.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k in ("models", "cpu_budget", "budget", "eval_every"))},
        "bars": BARS, "runs": {}}
    for name in args.models.split(","):
        def partial(points: list[dict[str, Any]], name: str = name) -> None:
            print(f"    ({len(points)} points of {name} so far)", flush=True)

        result["runs"][name] = run(name, data, args.budget, args.cpu_budget, args.eval_every, args.dim, args.seed,
                                   3 if args.quick else None, partial)
        result["summary"] = summary(result)
        if not args.quick:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.with_suffix(".json").write_text(json.dumps(result, indent=1))
            args.out.with_suffix(".md").write_text(markdown(result))
    print(json.dumps(result["summary"], indent=1))


if __name__ == "__main__":
    main()
