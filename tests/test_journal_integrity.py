"""A journal deleted, replaced, truncated or damaged under the store: found, refused, reported;
and a lost journal is never silently replaced by a new one at start."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway.config import JournalConfig
from gateway.statedir import JOURNAL_MARKER
from gateway.store import DB_NAME, JournalMissing, Store, StoreError
from gateway.store_types import JournalProblem
from tests.test_store import JournalUnderTest, incoming, open_store


def filled(tmp_path: Path) -> JournalUnderTest:
    store = open_store(tmp_path)
    store.admit([incoming(f"u{i}", body=os.urandom(2000)) for i in range(20)])
    return store


def refuses(store: JournalUnderTest, kind: str) -> JournalProblem:
    with pytest.raises(StoreError, match="no message is acknowledged any more"):
        store.admit([incoming("after")])
    problem = store.check_integrity()
    assert problem is not None and problem.kind == kind
    assert store.problem == problem
    with pytest.raises(StoreError):  # for good: a restored file is not trusted either
        store.admit([incoming("later")])
    return problem


def test_a_deleted_journal_refuses_every_ingest(tmp_path, caplog):
    store = filled(tmp_path)
    assert store.check_integrity(deep=True) is None
    (tmp_path / "state" / DB_NAME).unlink()
    problem = refuses(store, "deleted")
    assert "was deleted while in use" in problem.detail
    assert [r.levelno for r in caplog.records if "deleted" in r.getMessage()] == [logging.ERROR]
    # What it holds is still delivered from the open file.
    assert len(store.pending_deliveries("r", "0:a")) == 20
    store.close()


def test_a_replaced_journal_refuses_every_ingest(tmp_path):
    store = filled(tmp_path)
    db = tmp_path / "state" / DB_NAME
    shutil.copy(db, tmp_path / "copy")
    os.replace(tmp_path / "copy", db)  # a backup restored over it, say
    assert "replaced by another file" in refuses(store, "replaced").detail
    store.close()


@pytest.mark.parametrize("size", [0, 4096])
def test_a_truncated_journal_refuses_every_ingest(tmp_path, size):
    store = filled(tmp_path)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the pages are in the file now
    store.admit([incoming("one more")])  # a commit: the store sees the file's size
    os.truncate(tmp_path / "state" / DB_NAME, size)
    assert f"to {size} bytes" in refuses(store, "truncated").detail
    store.close()


def test_a_deleted_wal_refuses_every_ingest(tmp_path):
    store = filled(tmp_path)
    (tmp_path / "state" / (DB_NAME + "-wal")).unlink()
    assert "write-ahead log" in refuses(store, "deleted").detail
    store.close()


def test_a_damaged_page_is_found_by_the_deep_check(tmp_path):
    store = filled(tmp_path)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db = tmp_path / "state" / DB_NAME
    with db.open("r+b") as f:  # overwrite page 3 in place: same inode, same size
        f.seek(2 * 4096)
        f.write(b"\xff" * 4096)
    assert store.check_integrity() is None  # the cheap check cannot see inside
    problem = store.check_integrity(deep=True)
    assert problem is not None and problem.kind == "corrupt"
    refuses(store, "corrupt")
    store.close()


def test_housekeeping_runs_the_deep_check(tmp_path):
    store = filled(tmp_path)
    store._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with (tmp_path / "state" / DB_NAME).open("r+b") as f:
        f.seek(2 * 4096)
        f.write(b"\xff" * 4096)
    store._clock.now += 7 * 3600  # type: ignore[attr-defined]
    store.prune()
    assert store.problem is not None and store.problem.kind == "corrupt"
    store.close()


# ------------------------------------------------------------------------------- at start


def test_a_missing_journal_is_not_recreated_without_reset(tmp_path, caplog):
    store = filled(tmp_path)
    store.close()
    state = tmp_path / "state"
    assert (state / JOURNAL_MARKER).exists()
    for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
        (state / name).unlink(missing_ok=True)
    with pytest.raises(StoreError) as refused:
        open_store(tmp_path)
    message = str(refused.value)
    assert "is missing" in message and "fieldgate run --reset" in message
    assert "new push resources" in message and "fieldgate subscriptions" in message
    assert not (state / DB_NAME).exists()  # nothing created
    with pytest.raises(StoreError, match="is missing"):
        Store.open(state, journal=store._journal, create=False)  # the CLI is told the same
    caplog.set_level(logging.INFO)
    reset = JournalUnderTest.open(state, journal=store._journal, reset=True)
    assert reset.subscriptions() == []
    assert any("--reset: created a new journal" in r.getMessage() for r in caplog.records)
    reset.close()
    Store.open(state, journal=store._journal).close()  # from then on it is the journal


def test_an_emptied_journal_is_not_recreated_without_reset(tmp_path):
    store = filled(tmp_path)
    store.close()
    state = tmp_path / "state"
    (state / (DB_NAME + "-wal")).unlink(missing_ok=True)
    os.truncate(state / DB_NAME, 0)
    with pytest.raises(StoreError, match="is empty"):
        open_store(tmp_path)
    assert (state / DB_NAME).stat().st_size == 0  # left as found
    Store.open(state, journal=store._journal, reset=True).close()


def test_a_first_start_creates_the_journal_and_its_marker(tmp_path):
    state = tmp_path / "state"
    store = Store.open(state, journal=JournalConfig())
    store.close()
    assert (state / DB_NAME).exists() and (state / JOURNAL_MARKER).exists()
    assert oct((state / JOURNAL_MARKER).stat().st_mode & 0o777) == "0o600"


def test_a_journal_from_before_the_marker_gets_one(tmp_path):
    store = filled(tmp_path)
    store.close()
    marker = tmp_path / "state" / JOURNAL_MARKER
    marker.unlink()  # as an installation from before this release
    open_store(tmp_path).close()
    assert marker.exists()


def test_read_only_commands_never_create_a_journal(tmp_path):
    state = tmp_path / "state"
    with pytest.raises(JournalMissing):
        Store.open(state, journal=JournalConfig(), create=False)
    assert not state.exists()
    state.mkdir(mode=0o700)
    with pytest.raises(JournalMissing):
        Store.open(state, journal=JournalConfig(), create=False)
    assert list(state.iterdir()) == []
    (state / DB_NAME).touch(mode=0o600)  # an empty file: still no journal, and left alone
    with pytest.raises(JournalMissing):
        Store.open(state, journal=JournalConfig(), create=False)
    assert (state / DB_NAME).stat().st_size == 0
    assert sqlite3.connect(state / DB_NAME).execute("PRAGMA journal_mode").fetchone()[0] == "delete"
