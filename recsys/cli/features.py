"""``recsys features``: materialise a data set into the Redis feature store, update it online (keep flags stable).

The store is ``$REDIS_URL`` when set, else the embedded Redis under ``$RECSYS_HOME``
(default ``~/.local/state/recsys``), started on demand and saved when the command ends,
so a later ``recsys serve`` sees the same data.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from recsys.errors import RecsysError

if TYPE_CHECKING:  # redis and polars load only when a command runs; keep `recsys --help` fast
    from services.feature_store.redis_store import RedisFeatureStore

log = logging.getLogger(__name__)
console = Console(highlight=False)

app = typer.Typer(
    help="Materialise features into the Redis feature store and update them online "
         "(REDIS_URL, else an embedded Redis under RECSYS_HOME).",
    no_args_is_help=True,
)


@contextlib.contextmanager
def _store(**kwargs: Any) -> Iterator[RedisFeatureStore]:
    """The configured store; an unreachable server is a one-line user error here, not a traceback."""
    from services.feature_store.embedded import open_store
    from services.feature_store.store import FeatureStoreUnavailable

    try:
        with open_store(**kwargs) as store:
            store.ping()
            yield store
    except FeatureStoreUnavailable as exc:
        raise RecsysError(f"{exc} (check REDIS_URL)") from None


@app.command()
def materialize(
    data: Path = typer.Option(..., "--data", help="Prepared data directory (schema.json, train/, valid/, test/)."),
    artifact: Path = typer.Option(..., "--artifact", help="Trained artifact directory (its schema must match the data's)."),
    chunk_rows: int = typer.Option(20_000, "--chunk-rows", min=1, help="Rows per read batch and records per write batch."),
    popular_k: int = typer.Option(1000, "--popular-k", min=0, help="Length of the popular-items list (train counts)."),
    seen_cap: int = typer.Option(200, "--seen-cap", min=0, help="Most recent distinct items kept per user as 'seen'."),
    version: str | None = typer.Option(None, "--version", help="Name of the new version (default: UTC time + random suffix)."),
    redis_prefix: str = typer.Option("recsys", "--redis-prefix", help="Key prefix (namespace) to write: "
                                     "'recsys' for the ranker; a retriever's features go under their own, "
                                     "'recsys-retriever' by default for recsys serve --retriever."),
) -> None:
    """Write user and item records, popular and seen lists, and embeddings as a new version, then make it active.

    Each user and item gets the features of its latest row. Readers switch to the new
    version atomically; the previous one is kept for an hour, then deleted.

    Example: recsys features materialize --data .demo/ctr --artifact .demo/runs/dlrm/artifact
    """
    from services.feature_store.materialize import materialize as run

    if not data.is_dir():
        raise RecsysError(f"--data {data}: directory not found")
    if not artifact.is_dir():
        raise RecsysError(f"--artifact {artifact}: directory not found")
    with _store(prefix=redis_prefix) as store:
        summary = run(store, data, artifact, chunk_rows=chunk_rows, popular_k=popular_k, seen_cap=seen_cap,
                      version=version)
        where = store.url
    embeddings = ", ".join(f"{n:,} {entity}" for entity, n in summary["embeddings"].items()) or "none"
    console.print(f"Materialised version [bold]{summary['version']}[/] from {summary['rows']:,} rows in "
                  f"{summary['seconds']:.1f} s ({summary['rows_per_s']:,} rows/s): {summary['users']:,} users, "
                  f"{summary['items']:,} items, {summary['popular']:,} popular, seen lists of "
                  f"{summary['seen_users']:,} users, embeddings: {embeddings}.")
    console.print(f"Version {summary['version']} (artifact {summary['artifact']}) is now active at {where}.")


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep or not name.strip():
            raise RecsysError(f"--set {setting!r}: expected feature=value")
        try:
            value = json.loads(text)  # 3.5, 12, null, ["a","b"]
        except ValueError:
            value = text  # anything else is text: abc, 007
        values[name.strip()] = value
    return values


@app.command()
def upsert(
    artifact: Path = typer.Option(..., "--artifact", help="Artifact whose schema and vocabularies encode the values."),
    user: str | None = typer.Option(None, "--user", help="Update this user's record."),
    item: str | None = typer.Option(None, "--item", help="Update this item's record."),
    event: str | None = typer.Option(None, "--event", help="With --user: the user interacted with this item "
                                     "(prepended to their histories and seen list)."),
    settings: list[str] = typer.Option([], "--set", help="feature=value, a raw value encoded as prepare does "
                                       "(repeatable; JSON where it parses, e.g. 3.5 or [\"a\",\"b\"], else text)."),
) -> None:
    """Update one user or item in the active version: a new interaction, or new raw feature values.

    Examples: recsys features upsert --artifact .demo/runs/dlrm/artifact --user 42 --event 1007
              recsys features upsert --artifact .demo/runs/dlrm/artifact --item 1007 --set I5=3 --set C2=abc
    """
    from recsys.schema import SCHEMA_FILE, Entity, Schema
    from services.feature_store.encode import RawEncoder
    from services.feature_store.upsert import append_event, check_id, set_features

    if (user is None) == (item is None):
        raise RecsysError("give exactly one of --user ID or --item ID")
    for flag, given in (("--user", user), ("--item", item), ("--event", event)):
        if given is not None:
            check_id(flag, given)
    if event is not None and user is None:
        raise RecsysError("--event ITEM_ID needs --user (an event is a user's interaction)")
    if event is None and not settings:
        raise RecsysError("nothing to do: give --event ITEM_ID and/or --set feature=value")
    values = _parse_settings(settings)
    if not (artifact / SCHEMA_FILE).is_file():
        raise RecsysError(f"--artifact {artifact}: no {SCHEMA_FILE} (not an artifact?)")
    schema = Schema.load(artifact / SCHEMA_FILE)
    entity, entity_id = (Entity.USER, user) if user is not None else (Entity.ITEM, item)
    assert entity_id is not None
    with _store() as store:
        if values:
            set_features(store, schema, RawEncoder(schema, artifact), entity, entity_id, values)
        if event is not None:
            append_event(store, schema, entity_id, event, artifact=artifact)
        version = store.active_version()
    done = ([f"set {', '.join(values)}"] if values else []) + ([f"appended item '{event}'"] if event else [])
    console.print(f"{entity.value} '{entity_id}': {' and '.join(done)} in version {version}.")


@app.command()
def versions() -> None:
    """List the versions in the feature store: state, size, artifact, commit time.

    Example: recsys features versions
    """
    from datetime import UTC, datetime

    from rich.table import Table

    with _store() as store:
        known = store.versions()
        active = store.active_version()
    table = Table(title=f"feature store versions ({len(known)})", title_justify="left")
    for column in ("version", "state", "users", "items", "artifact", "committed"):
        table.add_column(column)
    for name, meta in known.items():
        committed = meta.get("committed_at")
        when = datetime.fromtimestamp(float(committed), UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if committed else "–"
        table.add_row(name + (" *" if name == active else ""), meta.get("state", "?"), meta.get("users", "–"),
                      meta.get("items", "–"), meta.get("artifact", "–"), when)
    console.print(table)
