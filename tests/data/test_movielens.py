"""MovieLens prepare: the three folder layouts written as real files, run through the whole pipeline.

The same small set of ratings (with ties, out-of-order timestamps, a movie missing from the movies
file and malformed lines) is written in each layout; the prepared data is decoded back through the
vocabularies and checked against brute-force Python.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from recsys.data.formats.movielens import MovieLensSource
from recsys.data.pipeline import PrepareOptions, PrepareResult, run
from recsys.errors import RecsysError
from recsys.schema import Column, Entity, Label, Pooling, Schema, SequenceFeature, SparseFeature, Table, Task

HISTORY_LENGTH = 3
POSITIVE = 4.0
SPLITS = ("train", "valid", "test")

# (user, movie, rating, timestamp) in file order. User 1: a timestamp tie (100) and an out-of-order
# first rating (50); user 2: more ratings than HISTORY_LENGTH, a tie at 1005, movie 9 not in the
# movies file; user 3: a single rating at the UTC epoch.
RATINGS = [
    (1, 1, 4.0, 100), (1, 2, 3.0, 100), (1, 3, 5.0, 200), (1, 4, 2.0, 300), (1, 5, 4.5, 50),
    (2, 1, 1.0, 1000), (2, 2, 4.0, 1001), (2, 3, 4.0, 1002), (2, 4, 3.5, 1003), (2, 5, 5.0, 1004),
    (2, 6, 4.0, 1005), (2, 9, 2.0, 1005),
    (3, 6, 4.0, 0),
]
# Malformed rating lines, by the position (among good lines) they are inserted before, and the reason.
BAD = [
    (2, "{u}{s}{i}{s}{r}", "wrong field count"),
    (4, "x{s}{i}{s}{r}{s}{t}", "user id is not an integer"),
    (4, "{u}{s}abc{s}{r}{s}{t}", "movie id is not an integer"),
    (7, "{u}{s}{i}{s}great{s}{t}", "rating is not a number"),
    (9, "{u}{s}{i}{s}{r}{s}12.5", "timestamp is not an integer"),
    (13, "{u}{s}{i}{s}{r}{s}{t}{s}7", "wrong field count"),
    (13, b"\xff\xfe{s}{i}{s}{r}{s}{t}", "undecodable bytes"),
]

# Expected movie features per layout: movie → (genres in file order, year).
MOVIES_LATEST = {
    1: (["Adventure", "Animation", "Children"], "1995"), 2: (["Drama"], "2001"), 3: ([], None),
    4: (["Comedy", "Drama"], "2006"), 5: (["Action", "Crime"], "1995"), 6: (["Drama"], "2010"), 9: ([], None),
}
MOVIES_1M = {
    1: (["Drama", "Musical"], "1995"), 2: (["Drama"], "2001"), 3: ([], None), 4: (["Action", "Romance"], "2000"),
    5: (["Action", "Crime", "Thriller"], "1995"), 6: (["Comedy"], "1993"), 9: ([], None),
}
MOVIES_100K = {
    1: (["Drama", "Musical"], "1995"), 2: (["Drama"], "2001"), 3: ([], None), 4: (["Comedy"], "2000"),
    5: (["Action", "Crime"], "1996"), 6: (["Animation", "Children's"], "1993"), 9: ([], None),
}
USERS = {  # user → (gender, age, occupation, zip3) per layout
    "1m": {1: ("F", "1", "10", "480"), 2: ("M", "56", "16", "700"), 3: ("M", "25", "15", "551")},
    "100k": {1: ("M", "24", "technician", "857"), 2: ("F", "53", "other", "940"), 3: ("M", "23", "writer", "T8H")},
}
EXPECTED_MOVIES = {"latest": MOVIES_LATEST, "1m": MOVIES_1M, "100k": MOVIES_100K}


def _rating_lines(separator: str) -> tuple[list[bytes], dict[int, str]]:
    """Good and malformed rating lines, and the 1-based line number → reason of the malformed ones."""
    sep = separator.encode()
    lines: list[bytes] = []
    bad: dict[int, str] = {}
    for position, rating in enumerate([*RATINGS, None]):
        for before, template, reason in BAD:
            if before == position:
                raw = template if isinstance(template, bytes) else template.encode()
                for field, value in ((b"{s}", sep), (b"{u}", b"1"), (b"{i}", b"2"), (b"{r}", b"4"), (b"{t}", b"5")):
                    raw = raw.replace(field, value)
                lines.append(raw)
                bad[len(lines)] = reason
        if rating is not None:
            user, movie, stars, timestamp = rating
            lines.append(sep.join(str(v).encode() for v in (user, movie, f"{stars:g}", timestamp)))
    assert len(bad) == len(BAD)
    return lines, bad


def write_latest(folder: Path) -> dict[int, str]:
    folder.mkdir(parents=True)
    lines, bad = _rating_lines(",")
    (folder / "ratings.csv").write_bytes(b"userId,movieId,rating,timestamp\n" + b"\n".join(lines) + b"\n")
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n"
        '1,"Toy Story, The (1995)",Adventure|Animation|Children\n'
        '2,"""Quoted"" Movie, A (2001)",Drama\n'
        "3,Untitled,(no genres listed)\n"
        "4,Death Note: Desu nôto (2006–2007),Comedy|Drama\n"
        "5,Heat (1995) ,Action|Crime\n"
        "6,Café (2010),Drama\n",
        encoding="utf-8",
    )
    return {line + 1: reason for line, reason in bad.items()}  # the header is line 1


def write_1m(folder: Path) -> dict[int, str]:
    folder.mkdir(parents=True)
    lines, bad = _rating_lines("::")
    (folder / "ratings.dat").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "movies.dat").write_bytes(
        "1::Misérables, Les (1995)::Drama|Musical\n"
        "2::Señor Smith: The Return (2001)::Drama\n"
        "3::Untitled::\n"
        "4::Crouching Tiger (2000)::Action|Romance\n"
        "5::Heat (1995)::Action|Crime|Thriller\n"
        "6::Café au lait (1993)::Comedy\n".encode("latin-1")
    )
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::15::55117-1234\n")
    return bad


def _flags(*genres: int) -> str:
    return "|".join("1" if k in genres else "0" for k in range(19))


def write_100k(folder: Path) -> dict[int, str]:
    folder.mkdir(parents=True)
    lines, bad = _rating_lines("\t")
    (folder / "u.data").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "u.item").write_bytes(
        (f"1|Misérables, Les (1995)|01-Jan-1995||http://imdb/1|{_flags(8, 12)}\n"
         f"2|Señor (2001)|||http://imdb/2|{_flags(8)}\n"  # no release date: the title's year
         f"3|unknown|||http://imdb/3|{_flags(0)}\n"  # only the 'unknown' genre: none
         f"4|No Year Here|15-Mar-2000||http://imdb/4|{_flags(5)}\n"
         f"5|Heat|Part Two (1995)|01-Jan-1996||http://imdb/5|{_flags(1, 6)}\n"  # '|' in the title
         f"6|Café (1993)|01-Jan-1993||http://imdb/6|{_flags(3, 4)}\n").encode("latin-1")
    )
    (folder / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|23|M|writer|T8H1N\n")
    return bad


WRITERS = {"latest": write_latest, "1m": write_1m, "100k": write_100k}


def prepare(folder: Path, out: Path, task: str = "ctr", schema: Schema | None = None, **options: object) -> PrepareResult:
    source = MovieLensSource(folder, task=task, positive_rating=POSITIVE, history_length=HISTORY_LENGTH, schema=schema)
    settings: dict[str, object] = {"max_bad_fraction": 0.5, "split": "time"} | options
    return run(source, out, PrepareOptions(**settings))  # type: ignore[arg-type]


def read_all(out: Path) -> pl.DataFrame:
    frames = [pl.read_parquet(f).with_columns(pl.lit(split).alias("split"))
              for split in SPLITS for f in sorted((out / split).glob("*.parquet"))]
    return pl.concat(frames, how="vertical")


def vocab(out: Path, table: str) -> dict[int, str]:
    frame = pl.read_parquet(out / "vocab" / f"{table}.parquet")
    assert frame.columns == ["value", "index", "count"]
    assert frame["index"].min() == 1  # 0 stays for out-of-vocabulary
    return dict(zip(frame["index"].to_list(), frame["value"].to_list()))


def decode(indices: list[int] | int, table: dict[int, str]) -> list[str | None] | str | None:
    if isinstance(indices, list):
        return [table.get(i) for i in indices]
    return table.get(indices)


def brute_force_histories(cap: int) -> dict[tuple[int, int], list[str]]:
    """(user, movie) → movies the user rated strictly earlier, newest first (ties: later in file first)."""
    histories = {}
    for user, movie, _, timestamp in RATINGS:
        earlier = [(t, p, m) for p, (u, m, _, t) in enumerate(RATINGS) if u == user and t < timestamp]
        histories[(user, movie)] = [str(m) for _, _, m in sorted(earlier, reverse=True)[:cap]]
    return histories


@pytest.fixture(scope="module", params=list(WRITERS))
def prepared(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    layout = request.param
    folder = tmp_path_factory.mktemp(layout) / "ml"
    bad = WRITERS[layout](folder)
    out = folder.parent / "out"
    result = prepare(folder, out)
    return layout, out, result, bad


def test_rows_and_splits_add_up(prepared) -> None:
    _, out, result, bad = prepared
    stats = result.stats
    assert stats["rows_read"] == len(RATINGS) + len(bad)
    assert stats["bad_rows"] == len(bad)
    assert stats["rows_written"] == len(RATINGS)
    assert sum(stats["splits"][s]["rows"] for s in SPLITS) == len(RATINGS)
    frame = read_all(out)
    for split in SPLITS:
        assert frame.filter(pl.col("split") == split).height == stats["splits"][split]["rows"]
    assert frame.filter(pl.col("split") == "train").height > 0
    # Time split: no train row is later than a test row.
    assert frame.filter(pl.col("split") == "train")["timestamp"].max() <= frame.filter(pl.col("split") == "test")["timestamp"].min()


def test_labels_follow_the_rating_threshold(prepared) -> None:
    _, out, _, _ = prepared
    rating = {(u, m): r for u, m, r, _ in RATINGS}
    frame = read_all(out)
    assert frame["label"].dtype == pl.Float32
    for user, movie, label in frame.select("user_key", "item_key", "label").iter_rows():
        assert label == (1.0 if rating[(int(user), int(movie))] >= POSITIVE else 0.0), (user, movie)
    assert set(frame["label"].to_list()) == {0.0, 1.0}


def test_schema_features_and_entities(prepared) -> None:
    layout, out, result, _ = prepared
    schema = result.schema
    saved = Schema.load(out)
    assert (saved.sparse, saved.sequences, saved.tables, saved.labels) == \
        (schema.sparse, schema.sequences, schema.tables, schema.labels)
    assert schema.task is Task.CTR
    user_side = ["gender", "age", "occupation", "zip3"] if layout != "latest" else []
    assert [f.name for f in schema.sparse] == ["user_id", "item_id", "genres", "year", *user_side, "hour", "weekday"]
    entities = {f.name: f.entity for f in [*schema.dense, *schema.sparse, *schema.sequences]}
    assert entities == {"release_year": Entity.ITEM, "user_id": Entity.USER, "item_id": Entity.ITEM,
                        "genres": Entity.ITEM, "year": Entity.ITEM, "hour": Entity.CONTEXT,
                        "weekday": Entity.CONTEXT, "hist_item_id": Entity.USER} | dict.fromkeys(user_side, Entity.USER)
    genres = next(f for f in schema.sparse if f.name == "genres")
    assert (genres.separator, genres.pooling) == ("|", Pooling.MEAN)
    (dense,) = schema.dense
    assert (dense.transform.value, dense.clip_min) == ("standardize", None)
    assert dense.mean is not None and 1900 < dense.mean < 2100
    (history,) = schema.sequences
    assert (history.name, history.table, history.max_length) == ("hist_item_id", "item_id", HISTORY_LENGTH)
    assert {t.name for t in schema.tables} == {f.name for f in schema.sparse}
    assert all(t.encoding.value == "vocab" and t.min_count == 1 and t.embedding_dim == 16 for t in schema.tables)
    assert schema.label_names == ["label"]
    assert (schema.user_key.name, schema.item_key.name, schema.timestamp.name) == ("user_key", "item_key", "timestamp")
    frame = read_all(out)
    assert frame["genres"].dtype == pl.List(pl.Int64) and frame["hist_item_id"].dtype == pl.List(pl.Int64)


def test_history_is_strictly_earlier_newest_first_and_capped(prepared) -> None:
    _, out, _, _ = prepared
    items = vocab(out, "item_id")
    expected = brute_force_histories(HISTORY_LENGTH)
    frame = read_all(out)
    known = set(items.values())
    for user, movie, history in frame.select("user_key", "item_key", "hist_item_id").iter_rows():
        want = [m if m in known else None for m in expected[(int(user), int(movie))]]
        assert decode(history, items) == want, (user, movie)
    assert expected[(1, 2)] == ["5"]  # movie 1 shares its timestamp: not history
    assert expected[(2, 9)] == ["5", "4", "3"]  # capped; movie 6 shares the timestamp 1005
    assert frame["hist_item_id"].list.len().max() == HISTORY_LENGTH


def test_side_features_decode_to_the_files(prepared) -> None:
    layout, out, _, _ = prepared
    movies = EXPECTED_MOVIES[layout]
    genres, years = vocab(out, "genres"), vocab(out, "year")
    frame = read_all(out)
    for movie, genre_ids, year_id, release in frame.select("item_key", "genres", "year", "release_year").iter_rows():
        want_genres, want_year = movies[int(movie)]
        assert decode(genre_ids, genres) == [g if g in genres.values() else None for g in want_genres], movie
        assert decode(year_id, years) == (want_year if want_year in years.values() else None), movie
        if want_year is None:  # missing years get the fill value, not 0
            assert abs(release) < 10
    if layout != "latest":
        users = USERS[layout]
        for column, position in (("gender", 0), ("age", 1), ("occupation", 2), ("zip3", 3)):
            table = vocab(out, column)
            for user, value in frame.select("user_key", column).iter_rows():
                want = users[int(user)][position]
                assert decode(value, table) == (want if want in table.values() else None), (column, user)


def test_bad_lines_are_quarantined_with_line_and_reason(prepared) -> None:
    layout, out, _, bad = prepared
    records = [json.loads(line) for line in (out / "quarantine" / "bad_rows.jsonl").read_text().splitlines()]
    ratings_file = {"latest": "ratings.csv", "1m": "ratings.dat", "100k": "u.data"}[layout]
    assert all(Path(r["source"]).name == ratings_file for r in records)
    assert {r["line"]: r["reason"].split(":")[0].removesuffix(" (unix seconds)").removesuffix(" (not UTF-8)")
            for r in records} == bad
    lines = (out.parent / "ml" / ratings_file).read_bytes().split(b"\n")
    for record in records:
        if record["reason"].startswith("undecodable"):
            assert "\ufffd" in record["raw"]
        else:
            assert record["raw"] == lines[record["line"] - 1].decode()


def test_hour_and_weekday_are_utc(tmp_path: Path) -> None:
    write_1m(tmp_path / "ml")
    source = MovieLensSource(tmp_path / "ml", history_length=HISTORY_LENGTH)
    (part,) = list(source.parts())
    rows = part.rows
    assert rows.height == len(RATINGS) and part.bad is not None and part.bad.height == len(BAD)
    for timestamp, hour, weekday in rows.select("timestamp", "hour", "weekday").iter_rows():
        when = datetime.fromtimestamp(timestamp, UTC)
        assert (hour, weekday) == (str(when.hour), str(when.isoweekday()))
    assert rows.filter(pl.col("timestamp") == 0).select("hour", "weekday").row(0) == ("0", "4")  # 1970-01-01 was a Thursday
    assert rows.schema["genres"] == pl.List(pl.String) and rows.schema["release_year"] == pl.Float64


def test_implicit_keeps_positives_only_without_label(tmp_path: Path) -> None:
    write_latest(tmp_path / "ml")
    result = prepare(tmp_path / "ml", tmp_path / "out", task="implicit", split="random")
    assert result.schema.task is Task.IMPLICIT and result.schema.labels == []
    frame = read_all(tmp_path / "out")
    assert "label" not in frame.columns
    positives = {(str(u), str(m)) for u, m, r, _ in RATINGS if r >= POSITIVE}
    assert set(frame.select("user_key", "item_key").iter_rows()) == positives
    assert frame.height == len(positives) == result.stats["rows_written"]
    # Every rating was read; the negatives were dropped on purpose, not lost.
    assert result.stats["rows_read"] == len(RATINGS) + len(BAD)
    assert result.stats["rows_filtered"] == len(RATINGS) - len(positives)
    # Histories still hold every earlier rating, liked or not: user 2 rated movie 1 (a 1) before movie 2.
    (part,) = list(MovieLensSource(tmp_path / "ml", task="implicit", history_length=HISTORY_LENGTH).parts())
    raw = part.rows.filter((pl.col("user_key") == "2") & (pl.col("item_key") == "2"))
    assert raw["hist_item_id"].to_list() == [["1"]]


def test_missing_or_foreign_folder_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(RecsysError, match=f"{tmp_path / 'nope'}: MovieLens folder not found.*ratings.csv"):
        MovieLensSource(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("1,2,3\n")
    with pytest.raises(RecsysError, match=r"not a MovieLens folder \(expected ratings.csv .* u.data"):
        MovieLensSource(tmp_path / "other")
    (tmp_path / "halfway").mkdir()
    (tmp_path / "halfway" / "ratings.dat").write_text("1::1::4::1\n")
    with pytest.raises(RecsysError, match="has ratings.dat but no movies.dat"):
        MovieLensSource(tmp_path / "halfway")
    with pytest.raises(RecsysError, match="unknown MovieLens task 'ranking'"):
        write_1m(tmp_path / "ok")
        MovieLensSource(tmp_path / "ok", task="ranking")


def test_user_schema_replaces_the_built_in_one(tmp_path: Path) -> None:
    write_100k(tmp_path / "ml")
    schema = Schema(
        sparse=[SparseFeature(name="user", source="user_id", entity=Entity.USER),
                SparseFeature(name="item_id", entity=Entity.ITEM),
                SparseFeature(name="occupation", entity=Entity.USER)],
        sequences=[SequenceFeature(name="recent", source="hist_item_id", table="item_id", max_length=2)],
        tables=[Table(name="user"), Table(name="item_id"), Table(name="occupation")],
        labels=[Label(name="label")],
        timestamp=Column(name="timestamp"),
    )
    prepare(tmp_path / "ml", tmp_path / "out", schema=schema)
    frame = read_all(tmp_path / "out")
    assert set(frame.columns) == {"user", "item_id", "occupation", "recent", "label", "timestamp", "split"}
    assert frame["recent"].list.len().max() == 2
    assert vocab(tmp_path / "out", "occupation")  # user features come from u.user

    unknown = schema.model_copy(update={"sparse": [*schema.sparse, SparseFeature(name="budget", entity=Entity.ITEM)]})
    with pytest.raises(RecsysError, match="schema column 'budget' reads 'budget'"):
        MovieLensSource(tmp_path / "ml", schema=Schema.model_validate(unknown.model_dump()))
    write_latest(tmp_path / "latest")
    with pytest.raises(RecsysError, match="schema column 'occupation' reads 'occupation'.*no user features"):
        MovieLensSource(tmp_path / "latest", schema=schema)
    with pytest.raises(RecsysError, match="schema task is 'ctr' but the MovieLens task is 'implicit'"):
        MovieLensSource(tmp_path / "ml", task="implicit", schema=schema)


def test_malformed_side_table_lines_only_lose_features(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "ml"
    write_1m(folder)
    with (folder / "movies.dat").open("ab") as handle:
        handle.write(b"not a movie line\n7::Dup (1990)::Drama\n7::Dup again (1991)::Comedy\n")
    with caplog.at_level(logging.WARNING):
        source = MovieLensSource(folder)
    assert "movies.dat: 1 malformed movie lines ignored (first at line 7)" in caplog.text
    assert source.movies["item"].to_list() == [1, 2, 3, 4, 5, 6, 7]  # duplicates keep the first
    assert source.movies.filter(pl.col("item") == 7)["year"].item() == "1990"


SHARED = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "movielens" / "ml-latest-small"


@pytest.mark.shared_data
def test_ml_latest_small(tmp_path: Path) -> None:
    if not (SHARED / "ratings.csv").is_file():
        pytest.skip(f"MovieLens latest-small not found at {SHARED}")
    source = MovieLensSource(SHARED)
    result = run(source, tmp_path / "out", PrepareOptions(split="time"))
    stats = result.stats
    assert (stats["rows_read"], stats["bad_rows"], stats["rows_written"]) == (100_836, 0, 100_836)
    frame = read_all(tmp_path / "out").select("split", "user_key", "item_key", "hist_item_id")
    assert frame["user_key"].n_unique() == 610
    train_items = frame.filter(pl.col("split") == "train")["item_key"].n_unique()
    # Time split: every history item of a train row is an earlier train row's item, so the shared
    # item_id vocabulary is exactly the train items.
    assert stats["cardinalities"]["item_id"] == train_items + 1
    assert frame["hist_item_id"].list.len().max() == 50
    assert frame.filter(pl.col("split") == "train")["hist_item_id"].list.contains(0).sum() == 0


def test_parts_and_history_blocks_do_not_change_the_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from recsys.data.formats import movielens

    write_100k(tmp_path / "ml")
    whole = list(MovieLensSource(tmp_path / "ml", history_length=HISTORY_LENGTH).parts())
    monkeypatch.setattr(movielens, "PART_ROWS", 4)
    monkeypatch.setattr(movielens, "HISTORY_BLOCK", 5)  # one row per index block
    pieces = list(MovieLensSource(tmp_path / "ml", history_length=HISTORY_LENGTH).parts())
    assert [p.rows.height for p in pieces] == [4, 4, 4, 1]
    assert pieces[0].bad is not None and pieces[0].bad.height == len(BAD)
    assert all(p.bad is None for p in pieces[1:])
    assert pl.concat([p.rows for p in pieces]).equals(whole[0].rows)
    expected = brute_force_histories(HISTORY_LENGTH)
    got = {(int(u), int(m)): h for u, m, h in whole[0].rows.select("user_key", "item_key", "hist_item_id").iter_rows()}
    assert got == expected
