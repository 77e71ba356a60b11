"""The end of ``make demo``: start ``recsys serve``, send a few requests, print the rankings, stop.

    python -m services.ranking.demo --artifact .demo/runs/dlrm/artifact --data .demo/ctr

Everything it starts (the service, and the embedded Redis the service starts when
``REDIS_URL`` is unset) is stopped before it returns, also on Ctrl-C or a failure.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import polars as pl
from rich.console import Console
from rich.table import Table

from recsys.schema import Entity, Schema
from recsys.system import free_port

console = Console()


def _wait_ready(client: httpx.Client, service: subprocess.Popen[bytes], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.poll() is not None:
            raise SystemExit(f"recsys serve exited with code {service.returncode} before it was ready")
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise SystemExit(f"recsys serve was not ready after {timeout:.0f} s")


def _show(title: str, answer: dict) -> None:
    console.print(f"[bold]{title}[/]")
    table = Table()
    table.add_column("rank", justify="right")
    table.add_column("item_id")
    table.add_column("score", justify="right")
    for rank, item in enumerate(answer["items"], 1):
        table.add_row(str(rank), item["item_id"], f"{item['score']:.4f}")
    console.print(table)
    flags = f"model {answer['model_version']}, unknown_user={answer['unknown_user']}"
    if answer["unknown_items"]:
        flags += f", unknown_items={answer['unknown_items']}"
    console.print(f"  [dim]{flags}[/]")


def _examples(data: Path, schema: Schema) -> tuple[str, list[str], dict[str, object]]:
    """A test-split user, a dozen items seen in test, and that user's row's context as raw values."""
    assert schema.user_key is not None and schema.item_key is not None
    test = pl.scan_parquet(data / "test" / "*.parquet")
    row = test.select(schema.user_key.name).head(1).collect()
    items = test.select(schema.item_key.name).unique(maintain_order=True).head(12).collect()
    context = {f.name: 1.0 for f in schema.dense if f.entity is Entity.CONTEXT}
    return str(row[0, 0]), [str(v) for v in items[:, 0].to_list()], context


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="prepared data (for example user and item ids)")
    args = parser.parse_args()

    schema = Schema.load(args.artifact)
    user, items, context = _examples(args.data, schema)
    port = free_port()
    recsys = [sys.executable, "-m", "recsys.cli.main"]
    service = subprocess.Popen([*recsys, "serve", "--artifact", str(args.artifact), "--port", str(port)],
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            _wait_ready(client, service)
            console.print(f"[bold]recsys serve[/] is ready on http://127.0.0.1:{port}")
            rank = {"user_id": user, "item_ids": [*items, "no-such-item"], "k": 5, "context": context}
            console.print(f"POST /v1/rank  user {user}, {len(rank['item_ids'])} candidates, k=5")
            answer = client.post("/v1/rank", json=rank)
            answer.raise_for_status()
            _show(f"/v1/rank for user {user}", answer.json())
            answer = client.post("/v1/recommend", json={"user_id": user, "k": 5})
            answer.raise_for_status()
            _show(f"/v1/recommend for user {user} (popular items minus seen, ranked)", answer.json())
            answer = client.post("/v1/rank", json={"user_id": "a-new-user", "item_ids": items[:3], "k": 3})
            answer.raise_for_status()
            _show("/v1/rank for an unknown user (default features)", answer.json())
            bad = client.post("/v1/rank", json={"user_id": user, "item_ids": items, "k": 0})
            console.print(f"an invalid request (k=0) → {bad.status_code}: {bad.json()['detail'][0]['msg']}")
    finally:
        if service.poll() is None:
            service.send_signal(signal.SIGINT)  # uvicorn shuts down, then the embedded Redis saves and stops
            try:
                service.wait(timeout=30)
            except subprocess.TimeoutExpired:
                service.kill()
        console.print("service stopped")


if __name__ == "__main__":
    main()
