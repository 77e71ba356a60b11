"""MovieLens ratings as CTR impressions or implicit interactions, with side features and behaviour histories.

Reads a GroupLens MovieLens folder in any of its three layouts, told apart by the files it holds:

- latest (ml-latest, ml-latest-small, ml-20m, ml-25m, ml-32m): ``ratings.csv``
  (``userId,movieId,rating,timestamp`` with a header) and ``movies.csv``
  (``movieId,title,genres``; titles quoted when they hold commas, genres joined by ``|``), UTF-8.
- 1M (also ml-10m, which has no ``users.dat``): ``ratings.dat``
  ``UserID::MovieID::Rating::Timestamp``, ``movies.dat`` ``MovieID::Title::Genres`` and
  ``users.dat`` ``UserID::Gender::Age::Occupation::Zip-code``, Latin-1.
- 100K: ``u.data`` (tab-separated user, item, rating, timestamp), ``u.item`` (``|``-separated,
  Latin-1: id, title, release date, video release date, IMDb URL, 19 genre flags) and ``u.user``
  (``id|age|gender|occupation|zip``).

What the prepared data adds to or changes from the raw ratings:

- task ``ctr``: every rating is an impression; label = 1 when rating >= ``positive_rating``
  (4 by default, "liked"), else 0. Task ``implicit``: only those positive rows, no label.
- ``hist_item_id``: the items the user rated at a strictly earlier timestamp, newest first (ties
  in file order), at most ``history_length``. Ratings that share a timestamp were entered together,
  so none of them is history for another: no row sees its own target. The history is built from
  all ratings, also in the implicit task (a low rating is still a movie the user watched).
- ``year`` (sparse) and ``release_year`` (dense) from the title's "(1995)", or 100K's release date;
  ``hour`` and ``weekday`` (1 = Monday) of the rating in UTC; ``zip3`` the first three zip characters.
- "(no genres listed)" and 100K's "unknown" flag mean no genre (an empty list).
- 100K's age is in years, 1M's is already a bucket code; occupation is a name (100K) or a code (1M).
  User features (gender, age, occupation, zip3) exist only where a users file does.

Malformed rating lines become bad rows (file, line, reason, text); malformed lines of the side
tables only lose that movie's or user's features, with a warning. A field longer than
``max_field_bytes`` (``--max-field-bytes``, 64 KiB by default) makes its line malformed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from recsys.data.lines import iter_line_chunks
from recsys.data.pipeline import MAX_FIELD_BYTES, RawPart, bad_rows, too_long
from recsys.errors import RecsysError
from recsys.schema import (
    Column, DenseFeature, DenseTransform, Encoding, Entity, Label, Pooling, Schema, SequenceFeature, SparseFeature,
    Table, Task,
)

log = logging.getLogger(__name__)

PART_ROWS = 250_000
HISTORY_BLOCK = 5_000_000  # ids gathered at once: bounds the [rows, history_length] index block
GENRES_100K = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]
NO_GENRE = ["(no genres listed)", "unknown", ""]
USER_FEATURES = ["gender", "age", "occupation", "zip3"]
HISTORY = "hist_item_id"
# Columns every layout yields, by kind; the users file adds USER_FEATURES (strings).
NUMERIC_COLUMNS = ["label", "rating", "release_year", "timestamp"]
LIST_COLUMNS = ["genres", HISTORY]
STRING_COLUMNS = ["user_key", "item_key", "user_id", "item_id", "year", "hour", "weekday"]
_RATING_FIELDS = ["user", "item", "rating", "timestamp"]
_TITLE_YEAR = r"\((\d{4})(?:\s*[-–]\s*\d{4})?\)$"  # "(1995)" or a series' "(2006–2007)" at the end


@dataclass(frozen=True)
class Layout:
    """One of the three MovieLens folder layouts: its file names and rating separator."""

    name: str
    ratings: str
    movies: str
    users: str | None
    separator: str


LAYOUTS = (
    Layout("latest", "ratings.csv", "movies.csv", None, ","),
    Layout("1m", "ratings.dat", "movies.dat", "users.dat", "::"),
    Layout("100k", "u.data", "u.item", "u.user", "\t"),
)
_EXPECTED = "ratings.csv + movies.csv (latest), ratings.dat + movies.dat (1M) or u.data + u.item (100K)"


def detect_layout(path: Path) -> tuple[Path, Layout]:
    """The MovieLens folder (a ratings file's parent if given a file) and its layout, by file presence."""
    if path.is_file() and any(path.name == layout.ratings for layout in LAYOUTS):
        path = path.parent
    if not path.is_dir():
        raise RecsysError(f"{path}: MovieLens folder not found (expected a folder with {_EXPECTED})")
    for layout in LAYOUTS:
        if (path / layout.ratings).is_file():
            if not (path / layout.movies).is_file():
                raise RecsysError(f"{path}: has {layout.ratings} but no {layout.movies} (MovieLens {layout.name} layout)")
            return path, layout
    raise RecsysError(f"{path}: not a MovieLens folder (expected {_EXPECTED})")


def default_schema(task: Task = Task.CTR, history_length: int = 50, user_features: bool = True,
                   release_year_fill: float = 0.0, embedding_dim: int = 16) -> Schema:
    """Every MovieLens feature, vocabulary-encoded with no frequency threshold; item_id shared with the history."""
    sparse = [
        SparseFeature(name="user_id", entity=Entity.USER),
        SparseFeature(name="item_id", entity=Entity.ITEM),
        SparseFeature(name="genres", entity=Entity.ITEM, separator="|", pooling=Pooling.MEAN),
        SparseFeature(name="year", entity=Entity.ITEM),
    ]
    if user_features:
        sparse += [SparseFeature(name=name, entity=Entity.USER) for name in USER_FEATURES]
    sparse += [SparseFeature(name="hour", entity=Entity.CONTEXT), SparseFeature(name="weekday", entity=Entity.CONTEXT)]
    return Schema(
        task=task,
        # Missing years get a typical year, not 0, which would sit ~100 deviations from the rest.
        dense=[DenseFeature(name="release_year", entity=Entity.ITEM, transform=DenseTransform.STANDARDIZE,
                            clip_min=None, fill_value=release_year_fill)],
        sparse=sparse,
        sequences=[SequenceFeature(name=HISTORY, entity=Entity.USER, table="item_id", max_length=history_length)],
        tables=[Table(name=f.name, encoding=Encoding.VOCAB, embedding_dim=embedding_dim, min_count=1) for f in sparse],
        labels=[Label(name="label")] if task is Task.CTR else [],
        user_key=Column(name="user_key"),
        item_key=Column(name="item_key"),
        timestamp=Column(name="timestamp"),
        default_embedding_dim=embedding_dim,
    )


def column_sources(schema: Schema) -> dict[str, str]:
    """Prepared column name → the raw column it is read from."""
    named = [*schema.dense, *schema.sparse, *schema.sequences, *schema.labels]
    named += [c for c in (schema.user_key, schema.item_key, schema.timestamp) if c is not None]
    return {item.name: item.source_column for item in named}


class MovieLensSource:
    """Ratings of a MovieLens folder joined with movie and user features and each rating's earlier history.

    A user-given ``schema`` replaces the built-in one; then its sequences' ``max_length`` (not
    ``history_length``) bounds the histories, and its task must be ``task``.
    """

    def __init__(self, path: str | Path, task: str = "ctr", positive_rating: float = 4.0, history_length: int = 50,
                 schema: Schema | None = None, max_field_bytes: int = MAX_FIELD_BYTES) -> None:
        if max_field_bytes < 1:
            raise RecsysError(f"--max-field-bytes must be at least 1, got {max_field_bytes}")
        self.max_field_bytes = max_field_bytes
        self.path, self.layout = detect_layout(Path(path))
        try:
            self.task = Task(task)
        except ValueError:
            raise RecsysError(f"unknown MovieLens task '{task}' (expected ctr or implicit)") from None
        if not math.isfinite(positive_rating):
            raise RecsysError(f"--positive-rating must be a number, got {positive_rating}")
        if history_length < 1:
            raise RecsysError(f"--history-length must be at least 1, got {history_length}")
        self.positive_rating = float(positive_rating)
        self.movies = read_movies(self.path / self.layout.movies, self.layout, max_field_bytes)
        users_file = self.path / self.layout.users if self.layout.users else None
        self.users = (read_users(users_file, self.layout, max_field_bytes)
                      if users_file is not None and users_file.is_file() else None)
        if schema is None:
            years = self.movies["release_year"].drop_nulls()
            fill = float(years.median()) if years.len() else 0.0  # type: ignore[arg-type]
            schema = default_schema(self.task, history_length, self.users is not None, fill)
        self.schema = schema
        self.sources = column_sources(schema)
        self._check_schema()
        # The longest history any sequence reads; 0 skips computing histories.
        self.history_length = max((f.max_length for f in schema.sequences if f.source_column == HISTORY), default=0)

    @property
    def available_columns(self) -> list[str]:
        users = USER_FEATURES if self.users is not None else []
        return [*NUMERIC_COLUMNS, *STRING_COLUMNS, *users, *LIST_COLUMNS]

    def _check_schema(self) -> None:
        """A user-given schema may only name columns this folder yields, each of a kind its role can use."""
        if self.schema.task is not self.task:
            raise RecsysError(f"schema task is '{self.schema.task.value}' but the MovieLens task is '{self.task.value}' "
                              f"(pass --task {self.schema.task.value})")
        available = self.available_columns
        for name, source in self.sources.items():
            if source not in available:
                users = "" if self.users is not None else f"; no {self.layout.users or 'users file'}, so no user features"
                raise RecsysError(f"schema column '{name}' reads '{source}', which MovieLens {self.layout.name} does "
                                  f"not have (available: {', '.join(available)}{users})")
        roles = [(self.schema.dense, NUMERIC_COLUMNS, "dense"), (self.schema.labels, NUMERIC_COLUMNS, "label"),
                 (self.schema.sequences, [HISTORY], "sequence")]
        for items, allowed, role in roles:
            for item in items:
                if item.source_column not in allowed:
                    raise RecsysError(f"schema {role} '{item.name}' reads '{item.source_column}', which is not a "
                                      f"{role} column (use one of {', '.join(allowed)})")

    def parts(self) -> Iterator[RawPart]:
        ratings, bad = read_ratings(self.path / self.layout.ratings, self.layout, self.max_field_bytes)
        log.info("MovieLens %s: %d ratings, %d malformed lines", self.layout.name, ratings.height, bad.height)
        history = History(ratings) if self.history_length and ratings.height else None
        if self.task is Task.IMPLICIT:
            rows = np.flatnonzero((ratings["rating"] >= self.positive_rating).to_numpy())
        else:
            rows = np.arange(ratings.height)
        # Int32 list offsets: a part's history ids must stay below 2^31.
        part_rows = max(1, min(PART_ROWS, (1 << 30) // max(self.history_length, 1)))
        for start in range(0, max(len(rows), 1), part_rows):
            chunk = rows[start:start + part_rows]
            lists = history.lists(chunk, self.history_length) if history is not None else None
            yield RawPart(rows=self._frame(ratings[chunk], lists), bad=bad if start == 0 else None,
                          filtered=ratings.height - len(rows) if start == 0 else 0)

    def _frame(self, ratings: pl.DataFrame, history: pl.Series | None) -> pl.DataFrame:
        """Raw typed columns for ``ratings`` (rows in file order), named as the schema names them."""
        when = pl.from_epoch(pl.col("timestamp"), time_unit="s")  # UTC
        frame = ratings.with_columns(
            pl.col("user").cast(pl.String).alias("user_key"),
            pl.col("item").cast(pl.String).alias("item_key"),
            (pl.col("rating") >= self.positive_rating).cast(pl.Float64).alias("label"),
            when.dt.hour().cast(pl.String).alias("hour"),
            when.dt.weekday().cast(pl.String).alias("weekday"),
        ).with_columns(pl.col("user_key").alias("user_id"), pl.col("item_key").alias("item_id"))
        frame = frame.join(self.movies, on="item", how="left", maintain_order="left").with_columns(
            pl.col("genres").fill_null(pl.lit([], dtype=pl.List(pl.String)))
        )
        if self.users is not None:
            frame = frame.join(self.users, on="user", how="left", maintain_order="left")
        frame = frame.with_columns(history if history is not None else pl.lit([], dtype=pl.List(pl.String)).alias(HISTORY))
        return frame.select([pl.col(source).alias(name) for name, source in self.sources.items()])


# ---- ratings ------------------------------------------------------------------------------------------------

def _empty_ratings() -> pl.DataFrame:
    return pl.DataFrame(schema={"line": pl.Int64, "user": pl.Int64, "item": pl.Int64, "rating": pl.Float64,
                                "timestamp": pl.Int64})


def read_ratings(path: Path, layout: Layout,
                 max_field_bytes: int = MAX_FIELD_BYTES) -> tuple[pl.DataFrame, pl.DataFrame]:
    """All well-formed ratings (line, user, item, rating, timestamp) in file order, and the bad lines."""
    good, bad = [_empty_ratings()], []
    for chunk in iter_line_chunks(path):
        lines = chunk.frame
        # ratings.csv opens with a header; a first line without a single digit can only be that.
        if layout.name == "latest" and lines.height and lines["line"][0] == 1 \
                and not any(c.isdigit() for c in lines["text"][0]):
            lines = lines.slice(1)
        rows, wrong = _parse_ratings(lines, layout.separator, chunk.source, max_field_bytes)
        good.append(rows)
        bad.append(wrong)
    bad_frame = pl.concat(bad) if bad else bad_rows(str(path), pl.Series([], dtype=pl.Int64),
                                                    pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.String))
    return pl.concat(good), bad_frame


def _parse_ratings(lines: pl.DataFrame, separator: str, source: str,
                   max_field_bytes: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    lines = lines.filter(pl.col("text").str.strip_chars() != "")  # blank lines hold no rating
    fields = lines.with_columns(
        pl.col("text").str.count_matches(separator, literal=True).alias("_separators"),
        pl.col("text").str.splitn(separator, len(_RATING_FIELDS)).struct.rename_fields(_RATING_FIELDS).alias("_f"),
    ).unnest("_f")
    typed = {
        "user": pl.col("user").str.strip_chars().cast(pl.Int64, strict=False),
        "item": pl.col("item").str.strip_chars().cast(pl.Int64, strict=False),
        "rating": pl.col("rating").str.strip_chars().cast(pl.Float64, strict=False),
        "timestamp": pl.col("timestamp").str.strip_chars().cast(pl.Int64, strict=False),
    }
    checks: list[tuple[pl.Expr, pl.Expr | str]] = [
        (pl.col("undecodable"), "undecodable bytes (not UTF-8)"),
        (pl.col("_separators") != len(_RATING_FIELDS) - 1,
         pl.format("wrong field count: {} (expected {})", pl.col("_separators") + 1, pl.lit(len(_RATING_FIELDS)))),
    ]
    # Only a line longer than the limit can hold a field that is: most chunks skip these checks.
    if lines.height and lines["text"].str.len_bytes().max() > max_field_bytes:  # type: ignore[operator]
        checks += [(pl.col(name).str.len_bytes() > max_field_bytes,
                    too_long(f"field '{name}'", pl.col(name).str.len_bytes(), max_field_bytes))
                   for name in _RATING_FIELDS]
    checks += [
        (typed["user"].is_null(), "user id is not an integer"),
        (typed["item"].is_null(), "movie id is not an integer"),
        (~typed["rating"].is_finite(), "rating is not a number"),
        (typed["timestamp"].is_null(), "timestamp is not an integer (unix seconds)"),
    ]
    reason: pl.Expr = pl.lit(None, pl.String)
    for condition, why in reversed(checks):
        reason = pl.when(condition.fill_null(True)).then(why if isinstance(why, pl.Expr) else pl.lit(why)).otherwise(reason)
    checked = fields.with_columns(reason.alias("_reason"))
    wrong = checked.filter(pl.col("_reason").is_not_null())
    rows = checked.filter(pl.col("_reason").is_null()).select(
        pl.col("line"), *[expr.alias(name) for name, expr in typed.items()]
    )
    return rows, bad_rows(source, wrong["line"], wrong["_reason"], wrong["text"])


class History:
    """Where each rating's history lies among the ratings sorted by (user, timestamp, file order).

    In that order a rating's history is the run just before its (user, timestamp) group, back to
    the user's first rating: so each history is a slice, gathered for many rows at once with numpy.
    """

    def __init__(self, ratings: pl.DataFrame) -> None:
        user = ratings["user"].to_numpy()
        timestamp = ratings["timestamp"].to_numpy()
        n = len(user)
        if n >= 1 << 31:
            raise RecsysError(f"{n} ratings: more than this reader's int32 positions hold")
        order = np.lexsort((timestamp, user))  # stable: ties keep file order
        sorted_user, sorted_time = user[order], timestamp[order]
        new_user = np.ones(n, dtype=bool)
        new_user[1:] = sorted_user[1:] != sorted_user[:-1]
        new_group = new_user.copy()
        new_group[1:] |= sorted_time[1:] != sorted_time[:-1]
        positions = np.arange(n, dtype=np.int32)  # int32: halves the (rows, cap) index blocks below
        self.first = np.empty(n, dtype=np.int32)  # per file row: sorted position of its user's first rating
        self.first[order] = np.maximum.accumulate(np.where(new_user, positions, 0))
        self.end = np.empty(n, dtype=np.int32)  # per file row: sorted position where its timestamp group starts
        self.end[order] = np.maximum.accumulate(np.where(new_group, positions, 0))
        uniques, codes = np.unique(ratings["item"].to_numpy(), return_inverse=True)
        self.sorted_codes = codes.astype(np.int32)[order]
        self.values = pl.Series(uniques).cast(pl.String).to_arrow()

    def lists(self, rows: np.ndarray, cap: int) -> pl.Series:
        """Histories of file rows ``rows`` as a List(String) Series: newest first, at most ``cap`` ids."""
        ends = self.end[rows]
        lengths = np.minimum(ends - self.first[rows], cap)
        back = np.arange(cap, dtype=np.int32)
        pieces = [np.empty(0, dtype=np.int32)]
        block = max(1, HISTORY_BLOCK // cap)
        for start in range(0, len(rows), block):
            end, length = ends[start:start + block], lengths[start:start + block]
            index = end[:, None] - 1 - back  # (rows, cap): positions going back in time
            pieces.append(self.sorted_codes[index[back < length[:, None]]])
        offsets = np.zeros(len(rows) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        values = self.values.take(pa.array(np.concatenate(pieces)))
        # ListArray (int32 offsets): polars 1.35 misreads pyarrow 26's LargeListArray here.
        series = pl.from_arrow(pa.ListArray.from_arrays(pa.array(offsets), values))
        assert isinstance(series, pl.Series)
        return series.alias(HISTORY)


# ---- side tables --------------------------------------------------------------------------------------------

def _read_lines(path: Path) -> pl.DataFrame:
    """Non-blank lines (line, text) of a small file: UTF-8, else Latin-1 (the 1M and 100K encoding)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    lines = text.split("\n")  # not splitlines(): Latin-1 "\x85" would count as a line break
    if lines and lines[-1] == "":
        lines.pop()
    frame = pl.DataFrame({
        "line": pl.int_range(1, len(lines) + 1, eager=True, dtype=pl.Int64),
        "text": pl.Series(lines, dtype=pl.String).str.strip_suffix("\r"),
    })
    return frame.filter(pl.col("text").str.strip_chars() != "")


def _drop_malformed(frame: pl.DataFrame, ok: pl.Expr, path: Path, what: str) -> pl.DataFrame:
    """Keep rows where ``ok``; warn once with the first dropped line (its entity just loses its features)."""
    checked = frame.with_columns(ok.fill_null(False).alias("_ok"))
    dropped = checked.filter(~pl.col("_ok"))
    if dropped.height:
        where = f"line {dropped['line'][0]}" if "line" in dropped.columns else f"row {dropped['_row'][0]}"
        log.warning("%s: %d malformed %s ignored (first at %s); they get no features", path, dropped.height, what, where)
    return checked.filter(pl.col("_ok")).drop("_ok")


def _movie_table(frame: pl.DataFrame, path: Path, max_field_bytes: int,
                 release_year: pl.Expr | None = None) -> pl.DataFrame:
    """(id, title, genres: List(String)) → item, genres, year, release_year; one row per movie."""
    frame = frame.with_columns(pl.col("id").str.strip_chars().cast(pl.Int64, strict=False).alias("item"))
    frame = _drop_malformed(frame, pl.col("item").is_not_null(), path, "movie lines")
    genre_bytes = pl.col("genres").list.eval(pl.element().str.len_bytes()).list.sum()
    fits = pl.all_horizontal(size.fill_null(0) <= max_field_bytes
                             for size in (pl.col("title").str.len_bytes(), genre_bytes))
    frame = _drop_malformed(frame, fits, path, f"movie lines with a field over {max_field_bytes} bytes "
                            "(--max-field-bytes)")
    year = pl.col("title").str.strip_chars().str.extract(_TITLE_YEAR, 1)
    if release_year is not None:
        year = pl.coalesce(release_year, year)
    genres = pl.col("genres").list.eval(pl.element().str.strip_chars()).list.eval(
        pl.element().filter(~pl.element().is_in(NO_GENRE))
    )
    return frame.select(
        "item", genres.alias("genres"), year.alias("year"), year.cast(pl.Float64).alias("release_year")
    ).unique("item", keep="first", maintain_order=True)  # a duplicated id must not duplicate its ratings


def read_movies(path: Path, layout: Layout, max_field_bytes: int = MAX_FIELD_BYTES) -> pl.DataFrame:
    """The movies file as item (Int64), genres (List(String)), year (String), release_year (Float64)."""
    if layout.name == "latest":
        try:
            raw = pl.read_csv(path, infer_schema=False, encoding="utf8-lossy")
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise RecsysError(f"{path}: cannot read as CSV: {str(exc).splitlines()[0]}") from None
        missing = [c for c in ("movieId", "title", "genres") if c not in raw.columns]
        if missing:
            raise RecsysError(f"{path}: no '{missing[0]}' column (expected movieId,title,genres)")
        frame = raw.select(pl.col("movieId").alias("id"), "title", pl.col("genres").str.split("|"))
        # Row 2 is the first after the header.
        return _movie_table(frame.with_row_index("_row", offset=2), path, max_field_bytes)
    lines = _read_lines(path)
    if layout.name == "1m":
        groups = pl.col("text").str.extract_groups(r"^([^:]*)::(.*)::([^:]*)$").struct.rename_fields(
            ["id", "title", "genres"])
        frame = lines.select("line", groups.alias("f")).unnest("f")
        frame = _drop_malformed(frame, pl.col("id").is_not_null(), path, "movie lines")
        return _movie_table(frame.with_columns(pl.col("genres").str.split("|")), path, max_field_bytes)
    fields = pl.col("f")
    frame = lines.select("line", pl.col("text").str.split("|").alias("f"))
    frame = _drop_malformed(frame, fields.list.len() >= 5 + len(GENRES_100K), path, "movie lines")
    flags = [pl.when(fields.list.get(k - len(GENRES_100K)).str.strip_chars() == "1").then(pl.lit(name))
             for k, name in enumerate(GENRES_100K)]
    frame = frame.select(
        "line",
        fields.list.first().alias("id"),
        # A title holding "|" spans several fields: everything between the id and the last 22.
        fields.list.slice(1, fields.list.len() - 23).list.join("|").alias("title"),
        pl.concat_list(flags).list.drop_nulls().alias("genres"),
        fields.list.get(-22).alias("release"),
    )
    return _movie_table(frame, path, max_field_bytes, release_year=pl.col("release").str.extract(r"(\d{4})\s*$", 1))


def read_users(path: Path, layout: Layout, max_field_bytes: int = MAX_FIELD_BYTES) -> pl.DataFrame:
    """The users file as user (Int64), gender, age, occupation, zip3 (String, null when empty)."""
    lines = _read_lines(path)
    if layout.name == "1m":
        names, separator = ["id", "gender", "age", "occupation", "zip"], "::"
    else:
        names, separator = ["id", "age", "gender", "occupation", "zip"], "|"
    frame = lines.with_columns(
        pl.col("text").str.count_matches(separator, literal=True).alias("_separators"),
        pl.col("text").str.splitn(separator, len(names)).struct.rename_fields(names).alias("f"),
    ).unnest("f")
    frame = frame.with_columns(pl.col("id").str.strip_chars().cast(pl.Int64, strict=False).alias("user"))
    ok = (pl.col("_separators") == len(names) - 1) & pl.col("user").is_not_null()
    frame = _drop_malformed(frame, ok, path, "user lines")
    fits = pl.all_horizontal(pl.col(name).str.len_bytes().fill_null(0) <= max_field_bytes for name in names)
    frame = _drop_malformed(frame, fits, path, f"user lines with a field over {max_field_bytes} bytes "
                            "(--max-field-bytes)")

    def text(column: pl.Expr) -> pl.Expr:
        value = column.str.strip_chars()
        return pl.when(value == "").then(None).otherwise(value)

    return frame.select(
        "user",
        text(pl.col("gender")).alias("gender"),
        text(pl.col("age")).alias("age"),
        text(pl.col("occupation")).alias("occupation"),
        text(pl.col("zip")).str.slice(0, 3).alias("zip3"),
    ).unique("user", keep="first", maintain_order=True)
