"""``recsys index build``: a faiss index over a retriever artifact's item vectors, saved in the artifact."""

from __future__ import annotations

import logging
from pathlib import Path

import typer
from rich.console import Console

from recsys.errors import RecsysError

log = logging.getLogger("recsys.index")
console = Console(highlight=False)

app = typer.Typer(help="Build the ANN index (faiss) over a retriever artifact's item vectors.", no_args_is_help=True)


@app.command()
def build(
    artifact: Path = typer.Option(..., "--artifact", help="Retriever artifact directory (with retrieval/"
                                  "item_vectors.safetensors and retrieval/items.parquet)."),
    kind: str | None = typer.Option(None, "--kind", help="exact (brute force), ivf (IndexIVFFlat, nlist ≈ 4·√N) "
                                    "or hnsw (IndexHNSWFlat, M=32). Default: exact up to 100,000 items, ivf above."),
    recall_target: float = typer.Option(0.95, "--recall-target", min=0.0, max=1.0, help="ivf/hnsw: the smallest "
                                        "nprobe/efSearch reaching this recall@100 against exact search on 500 "
                                        "sample queries is saved as the search setting."),
    seed: int = typer.Option(0, "--seed", help="Seed of the k-means sample and the tuning queries."),
) -> None:
    """Write ARTIFACT/index/index.faiss and meta.json (kind, parameters, items, dim, the vectors' sha256, build
    seconds, recall reached), using the retriever's similarity (inner product or L2). Faiss id i is row i of
    retrieval/items.parquet.

    Tuning queries are item vectors plus noise (the artifact holds no user vectors); an hnsw index of an
    inner-product retriever is built on the MIPS → L2 reduction. `recsys serve --retriever ARTIFACT` loads the
    index only with the vectors it was built from (sha256, ntotal, dim, metric checked): build again after
    exporting the retriever again.

    Example: recsys index build --artifact runs/mf/artifact --kind hnsw --recall-target 0.97
    """
    from services.retrieval.index import IndexKind, build_artifact_index

    try:
        chosen = IndexKind(kind) if kind is not None else None
    except ValueError:
        raise RecsysError(f"--kind {kind!r}: expected exact, ivf or hnsw") from None
    meta = build_artifact_index(artifact, chosen, recall_target, seed=seed)
    params = ", ".join(f"{name}={value}" for name, value in meta["params"].items()) or "no parameters"
    recall = meta["recall"]
    reached = "exact search" if recall is None else \
        f"recall@{recall['k']} {recall['value']:.4f} against exact (target {recall['target']})"
    console.print(f"Built the {meta['kind']} index ({params}) of {meta['items']:,} items × {meta['dim']} "
                  f"({meta['similarity']}) in {meta['build_seconds']:.1f} s: {reached}.")
    console.print(f"Saved {artifact / 'index'}.")
