"""No read mixes two versions, while versions are committed (and old ones deleted) under it: on every
implementation (``open_store``), so on Redis Cluster too, where a read spans several masters."""

from __future__ import annotations

import threading
from services.feature_store.store import Fetched
from tests.services.feature_store.conftest import OpenStore

USERS = [f"u{i}" for i in range(5)]
ITEMS = [f"i{i}" for i in range(300)]


def test_every_fetch_comes_from_one_version(open_store: OpenStore) -> None:
    writer_store = open_store(grace_seconds=0)  # old versions are deleted at once: the hardest case
    reader = open_store(same_as=writer_store)
    stop = threading.Event()
    seen: list[Fetched] = []
    versions_read: set[str | None] = set()
    errors: list[BaseException] = []
    read_one = threading.Condition()

    def read() -> None:
        try:
            n = 0
            while not stop.is_set():
                fetched = reader.fetch(USERS[n % len(USERS)], ITEMS)
                with read_one:
                    seen.append(fetched)
                    versions_read.add(fetched.version)
                    read_one.notify_all()
                n += 1
        except BaseException as exc:  # surfaced below
            errors.append(exc)
            with read_one:
                read_one.notify_all()

    thread = threading.Thread(target=read)
    thread.start()
    committed = []
    try:
        for round_ in range(3):
            for name in ("v1", "v2", "v3"):
                version = f"{name}r{round_}"
                writer = writer_store.begin_version(version)
                writer.put_users(USERS, [f"{version}/{u}".encode() for u in USERS])
                writer.put_items(ITEMS, [f"{version}/{i}".encode() for i in ITEMS])
                writer.commit()
                committed.append(version)
                with read_one:  # the next commit (which deletes this version) waits until the reader has read it
                    assert read_one.wait_for(lambda: errors or version in versions_read, 60), version
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    assert {f.version for f in seen} - {None} == set(committed)  # every version, each read while it was active
    for fetched in seen:
        if fetched.version is None:
            assert fetched.user is None and fetched.items == [None] * len(ITEMS)
            continue
        prefix = f"{fetched.version}/".encode()
        assert fetched.user is not None and fetched.user.startswith(prefix), (fetched.version, fetched.user)
        for item, record in zip(ITEMS, fetched.items, strict=True):
            assert record == prefix + item.encode(), (fetched.version, item, record)
