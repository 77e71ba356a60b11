"""``recsys features``: the feature store (materialize, upsert, versions) and feature engineering
(rank, generate, select) — public interface, keep flags stable.

The store is ``$REDIS_URL`` when set, else the embedded Redis under ``$RECSYS_HOME``
(default ``~/.local/state/recsys``), started on demand and saved when the command ends,
so a later ``recsys serve`` sees the same data.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

from recsys.errors import RecsysError

if TYPE_CHECKING:  # redis and polars load only when a command runs; keep `recsys --help` fast
    from services.feature_store.redis_store import RedisFeatureStore

log = logging.getLogger(__name__)
console = Console(highlight=False)

STORE = "Feature store"
ENGINEERING = "Feature engineering"

app = typer.Typer(
    help="Feature store: materialise features into Redis and update them online (REDIS_URL, else an embedded "
         "Redis under RECSYS_HOME). Feature engineering: rank fields, generate new ones, select a pruned schema.",
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


@app.command(rich_help_panel=STORE)
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


def _parse_settings(settings: list[str], flag: str = "--set") -> dict[str, Any]:
    values: dict[str, Any] = {}
    for setting in settings:
        name, sep, text = setting.partition("=")
        if not sep or not name.strip():
            raise RecsysError(f"{flag} {setting!r}: expected {'feature' if flag == '--set' else 'key'}=value")
        try:
            value = json.loads(text)  # 3.5, 12, null, ["a","b"]
        except ValueError:
            value = text  # anything else is text: abc, 007
        values[name.strip()] = value
    return values


@app.command(rich_help_panel=STORE)
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


@app.command(rich_help_panel=STORE)
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


# ---- feature engineering ------------------------------------------------------------------------------------------

def _method_help() -> str:
    return ("Feature method: outrank, openfe, disco, inffs, drcfs, macfe, optfs, optfeature "
            "(each names its paper in ranking.md).")


_OPTION_HELP = "A method setting key=value (repeatable; JSON where it parses), e.g. --option steps=300."
_FIELDS_HELP = "Comma-separated fields to judge (default: every single-valued feature); the others are kept."


def _rank(data: Path, method: str, sample: int | None, seed: int, options: list[str], fields: str | None,
          check: Callable[[Any], None] | None = None) -> tuple[Any, Any, Any]:
    """(data, method, ranking) with the method's own time measured; ``check(data)`` runs before the ranking."""
    from recsys.features import feature_method
    from recsys.features.data import load_feature_data

    if not data.is_dir():
        raise RecsysError(f"--data {data}: directory not found")
    runner = feature_method(method, _parse_settings(options, flag="--option"))
    only = [f.strip() for f in fields.split(",") if f.strip()] if fields is not None else None
    loaded = load_feature_data(data, sample=sample, seed=seed, only=only)
    if check is not None:
        check(loaded)
    log.info("ranking %d fields of %s (%s of %s train rows) with %s", len(loaded.fields), data,
             f"{loaded.frame.height:,}", f"{loaded.rows_total:,}", method)
    return loaded, runner, runner.timed_rank(loaded)


@app.command(rich_help_panel=ENGINEERING)
def rank(
    data: Path = typer.Option(..., "--data", help="Prepared ctr data directory (schema.json, train/, valid/)."),
    method: str = typer.Option(..., "--method", help=_method_help()),
    sample: int = typer.Option(200_000, "--sample", min=1, help="Train rows sampled (seeded, streamed)."),
    out: Path = typer.Option(..., "--out", help="Directory for ranking.json + ranking.md (or a file NAME.json: "
                             "NAME.md goes beside it)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sample and the method."),
    options: list[str] = typer.Option([], "--option", help=_OPTION_HELP),
    fields: str | None = typer.Option(None, "--fields", help=_FIELDS_HELP),
) -> None:
    """Rank the fields of a data set: scores, redundancy between fields, data-quality findings.

    Example: recsys features rank --data .demo/ctr --method outrank --out runs/features/outrank
    """
    from recsys.features.output import ranking_document, write_ranking
    from recsys.features.quality import findings, redundancy

    loaded, runner, ranking = _rank(data, method, sample, seed, options, fields)
    document = ranking_document(loaded, ranking, runner.paper, redundancy(loaded), findings(loaded))
    json_path, md_path = write_ranking(out, document)
    top = ", ".join(row["field"] for row in document["fields"][:10])
    console.print(f"{method}: ranked {len(loaded.fields)} fields of {loaded.frame.height:,} sampled rows in "
                  f"{ranking.seconds:.1f} s; best: {top}.")
    if document["redundant_pairs"]:
        console.print("Redundant: " + ", ".join(f"{p['a']}~{p['b']} ({p['redundancy']:.2f})"
                                                for p in document["redundant_pairs"][:10]))
    for finding in document["findings"]:
        console.print(f"[yellow]{finding['field']}[/] ({finding['kind']}): {finding['message']}")
    if "planted" in document:
        planted = document["planted"]
        console.print(f"Planted truth: precision@{planted['k']} = {planted['precision_at_k']:.3f}.")
    console.print(f"Wrote {json_path} and {md_path}.")


@app.command(rich_help_panel=ENGINEERING)
def select(
    data: Path = typer.Option(..., "--data", help="Prepared ctr data directory."),
    method: str = typer.Option(..., "--method", help=_method_help()),
    out: Path = typer.Option(..., "--out", help="The pruned schema to write (schema.json); use it with "
                             "recsys train --data DATA --schema OUT."),
    keep: int | None = typer.Option(None, "--keep", help="Keep the K best fields."),
    budget: int | None = typer.Option(None, "--budget", help="Keep the best fields within B embedding parameters "
                                      "(table rows × dim, shared tables once; a dense field counts 1). Without "
                                      "--keep or --budget: the fields the method keeps by itself."),
    sample: int = typer.Option(200_000, "--sample", min=1, help="Train rows sampled (seeded, streamed)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sample and the method."),
    options: list[str] = typer.Option([], "--option", help=_OPTION_HELP),
    fields: str | None = typer.Option(None, "--fields", help=_FIELDS_HELP),
) -> None:
    """Write a pruned schema: fewer fields (and an interaction mask from interaction selectors).

    Example: recsys features select --data .demo/ctr --method outrank --keep 20 --out runs/features/schema.json
    """
    from recsys.features.select import check_limits, choose_fields, pruned_schema

    if keep is not None and budget is not None:
        raise RecsysError("give one of --keep K and --budget B, not both")
    if out.is_dir():
        raise RecsysError(f"--out {out}: is a directory; give the schema file to write, e.g. {out / 'schema.json'}")
    loaded, _, ranking = _rank(data, method, sample, seed, options, fields,
                               check=lambda loaded: check_limits(loaded, keep, budget))
    kept = choose_fields(loaded, ranking, keep, budget)
    schema = pruned_schema(loaded, kept, ranking.interactions)
    out.parent.mkdir(parents=True, exist_ok=True)
    schema.save(out)
    dropped = [f for f in loaded.fields if f not in kept]
    mask = f", {len(schema.interactions)} interactions kept" if schema.interactions is not None else ""
    console.print(f"{method}: kept {len(kept)} of {len(loaded.fields)} fields{mask} (ranked in "
                  f"{ranking.seconds:.1f} s); dropped: {', '.join(dropped) or 'none'}.")
    console.print(f"Wrote {out}: train with recsys train --data {data} --schema {out} ...")


@app.command(rich_help_panel=ENGINEERING)
def generate(
    data: Path = typer.Option(..., "--data", help="Prepared ctr data directory."),
    method: str = typer.Option("openfe", "--method", help="Feature generator (openfe)."),
    out: Path = typer.Option(..., "--out", help="New prepared data directory: DATA's columns plus the generated "
                             "ones, their recipes in its schema.json (created atomically)."),
    sample: int = typer.Option(200_000, "--sample", min=1, help="Train rows sampled for the search (seeded)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of the sample and the method."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace OUT if it exists."),
    options: list[str] = typer.Option([], "--option", help=_OPTION_HELP),
) -> None:
    """Generate new features (crosses, group-by aggregates, arithmetic) into a new prepared data set.

    The recipes travel in OUT/schema.json: the ranking service computes the generated features online
    exactly as they were computed here.

    Example: recsys features generate --data .demo/ctr --method openfe --out .demo/ctr-openfe
    """
    import time

    from recsys.features import feature_method
    from recsys.features.base import FeatureGenerator
    from recsys.features.data import load_feature_data
    from recsys.features.generate import write_generated

    if not data.is_dir():
        raise RecsysError(f"--data {data}: directory not found")
    generator = feature_method(method, _parse_settings(options, flag="--option"))
    if not isinstance(generator, FeatureGenerator):
        raise RecsysError(f"--method {method}: ranks and selects features but does not generate them (use openfe)")
    loaded = load_feature_data(data, sample=sample, seed=seed)
    start = time.perf_counter()
    proposals = generator.generate(loaded)
    seconds = time.perf_counter() - start
    if not proposals:
        raise RecsysError(f"{method}: no generated feature improved on the {len(loaded.fields)} fields of {data}; "
                          "nothing written")
    report = getattr(generator, "report", {})  # the method's own per-stage counts and times, when it keeps them
    write_generated(data, out, proposals, overwrite=overwrite,
                    details={**report, "method": method, "seconds": round(seconds, 3)})
    console.print(f"{method}: {len(proposals)} features generated in {seconds:.1f} s: "
                  + ", ".join(f"{p.name} = {p.recipe.op}({', '.join(p.recipe.inputs)})" for p in proposals))
    console.print(f"Wrote {out} (a prepared data set; recipes in {out / 'schema.json'}).")
