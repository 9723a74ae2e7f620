"""The embedded store: one SQLite database (a file, or memory when none is given), one node.

One connection serves every worker thread under a lock: SQLite has one writer at a time anyway,
and the operations are short. WAL with ``synchronous=NORMAL``: a commit survives a killed
process (the WAL is in the OS's hands); only a power cut may lose the last commits.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pushservice.model import (
    RECEIPT_ACKED,
    RECEIPT_GONE,
    Message,
    NewMessage,
    ReceiptEvent,
    Subscription,
    Urgency,
    new_token,
)
from pushservice.store import (
    NO_CHANGES,
    RECEIPT_RETENTION,
    Accepted,
    Acked,
    Changes,
    Counts,
    DueQuery,
    InvalidSet,
    Refusal,
    ResourceKind,
    StoreUnavailable,
    Swept,
    TargetKind,
    stored_message,
)

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sets (id TEXT PRIMARY KEY, joinable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, push_id TEXT UNIQUE NOT NULL, set_id TEXT NOT NULL,
    vapid_key BLOB, created REAL NOT NULL, pending INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS subscriptions_set ON subscriptions (set_id);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL, sub_id TEXT NOT NULL,
    push_id TEXT NOT NULL, set_id TEXT NOT NULL, body BLOB NOT NULL, content_encoding TEXT,
    urgency INTEGER NOT NULL, topic TEXT, created REAL NOT NULL, expires REAL NOT NULL,
    receipt_id TEXT, pushed_at REAL);
CREATE INDEX IF NOT EXISTS messages_set ON messages (set_id, seq);
CREATE INDEX IF NOT EXISTS messages_sub ON messages (sub_id, seq);
CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires);
CREATE INDEX IF NOT EXISTS messages_pushed ON messages (pushed_at) WHERE pushed_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS receipts (id TEXT PRIMARY KEY, created REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS receipt_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, receipt_id TEXT NOT NULL, message_id TEXT NOT NULL,
    status INTEGER NOT NULL, pushed INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS receipt_events_receipt ON receipt_events (receipt_id, seq);
CREATE INDEX IF NOT EXISTS receipt_events_created ON receipt_events (created);
"""
# The layout before SCHEMA_VERSION 1 (``--state FILE`` of earlier releases): no message order,
# no set id on messages, no pending count, no receipt times. Upgraded in place on open.
_UPGRADE_FROM_0 = """
ALTER TABLE messages RENAME TO messages_v0;
ALTER TABLE subscriptions ADD COLUMN pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE receipts ADD COLUMN created REAL NOT NULL DEFAULT 0;
ALTER TABLE receipt_events ADD COLUMN created REAL NOT NULL DEFAULT 0;
"""
_COPY_FROM_0 = """
INSERT INTO messages (id, sub_id, push_id, set_id, body, content_encoding, urgency, topic,
                      created, expires, receipt_id)
    SELECT m.id, m.sub_id, s.push_id, s.set_id, m.body, m.content_encoding, m.urgency, m.topic,
           m.created, m.expires, m.receipt_id
    FROM messages_v0 m JOIN subscriptions s ON s.id = m.sub_id ORDER BY m.created;
DROP TABLE messages_v0;
UPDATE subscriptions SET pending = (SELECT count(*) FROM messages WHERE sub_id = subscriptions.id);
"""
_MESSAGE_COLUMNS = (
    "id, sub_id, push_id, set_id, body, content_encoding, urgency, topic, created, expires,"
    " receipt_id, seq"
)


def _message(row: Sequence[Any]) -> Message:
    return Message(
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], Urgency(row[6]), row[7], row[8],
        row[9], row[10], row[11],
    )  # fmt: skip


def _subscription(row: Sequence[Any]) -> Subscription:
    return Subscription(row[0], row[1], row[2], None if row[3] is None else bytes(row[3]), row[4])


def _run(db: sqlite3.Connection, script: str) -> None:
    """Run ``;``-separated statements inside the caller's transaction (executescript commits)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _marks(count: int) -> str:
    return ",".join("?" * count)


class SqliteStore:
    """The :class:`~pushservice.store.Store` on SQLite (``path`` None: in memory, lost on exit)."""

    shared = False

    def __init__(self, path: Path | None = None) -> None:
        # In memory there is no disk to wait on: the calls are cheaper than a thread hop.
        self.blocking_io = path is not None
        if path is not None:
            fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # capability URLs are secrets
            os.close(fd)
        self._lock = threading.Lock()
        self.round_trips = 0
        try:
            self._db = sqlite3.connect(
                ":memory:" if path is None else str(path),
                isolation_level=None,
                check_same_thread=False,  # used by worker threads, one at a time (the lock)
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open the SQLite store {path}: {exc}") from exc

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(messages)")}
        upgrade = version == 0 and bool(columns) and "seq" not in columns
        self._db.execute("BEGIN IMMEDIATE")
        try:
            _run(self._db, (_UPGRADE_FROM_0 if upgrade else "") + _SCHEMA)
            if upgrade:
                _run(self._db, _COPY_FROM_0)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction, under the lock; sqlite3 errors become StoreUnavailable."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:  # locked, disk full, I/O error
                raise StoreUnavailable(str(exc)) from exc
            finally:
                self.round_trips += 1  # an in-process call: one "round trip" per transaction

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def ping(self) -> None:
        """SQLite in-process is there as long as the file is."""
        with self._tx() as db:
            db.execute("SELECT 1").fetchone()

    # -- subscriptions and sets ---------------------------------------------------------------
    def subscribe(self, set_id: str | None, vapid_key: bytes | None, now: float) -> Subscription:
        """See :meth:`pushservice.store.Store.subscribe`."""
        with self._tx() as db:
            if set_id is not None:
                row = db.execute("SELECT joinable FROM sets WHERE id = ?", (set_id,)).fetchone()
                if row is None or not row[0]:
                    raise InvalidSet(set_id)
            else:
                set_id = new_token()
                db.execute("INSERT INTO sets VALUES (?, 1)", (set_id,))
            sub = Subscription(new_token(), new_token(), set_id, vapid_key, now)
            db.execute(
                "INSERT INTO subscriptions (id, push_id, set_id, vapid_key, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (sub.id, sub.push_id, sub.set_id, sub.vapid_key, sub.created),
            )
            return sub

    def subscription_by_push(self, push_id: str) -> Subscription | None:
        """See :meth:`pushservice.store.Store.subscription_by_push`."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id, push_id, set_id, vapid_key, created FROM subscriptions"
                " WHERE push_id = ?",
                (push_id,),
            ).fetchone()
        return None if row is None else _subscription(row)

    def exists(self, kind: ResourceKind, ident: str) -> bool:
        """See :meth:`pushservice.store.Store.exists`."""
        table = {"subscription": "subscriptions", "set": "sets", "receipt": "receipts"}[kind]
        with self._tx() as db:
            return (
                db.execute(f"SELECT 1 FROM {table} WHERE id = ?", (ident,)).fetchone() is not None
            )

    def _remove_subscriptions(
        self, db: sqlite3.Connection, sub_ids: list[str], now: float
    ) -> Changes:
        if not sub_ids:
            return NO_CHANGES
        marks = _marks(len(sub_ids))
        rows = db.execute(
            f"DELETE FROM messages WHERE sub_id IN ({marks}) RETURNING id, receipt_id", sub_ids
        ).fetchall()
        db.execute(f"DELETE FROM subscriptions WHERE id IN ({marks})", sub_ids)
        receipts = self._receipts_for(db, rows, RECEIPT_GONE, now)
        gone = frozenset(("subscription", s) for s in sub_ids)
        return Changes(receipts=receipts, gone=gone)  # type: ignore[arg-type]

    @staticmethod
    def _receipts_for(
        db: sqlite3.Connection, rows: Iterable[Sequence[Any]], status: int, now: float
    ) -> frozenset[str]:
        """Record ``status`` for every (message id, receipt id) row that asked for a receipt."""
        events = [(r[1], r[0], status, now) for r in rows if r[1] is not None]
        db.executemany(
            "INSERT INTO receipt_events (receipt_id, message_id, status, created)"
            " VALUES (?, ?, ?, ?)",
            events,
        )
        return frozenset(e[0] for e in events)

    def delete_subscription(self, sub_id: str, now: float) -> Changes | None:
        """See :meth:`pushservice.store.Store.delete_subscription`."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM subscriptions WHERE id = ?", (sub_id,)).fetchone() is None:
                return None
            return self._remove_subscriptions(db, [sub_id], now)

    def delete_set(self, set_id: str, now: float) -> Changes | None:
        """See :meth:`pushservice.store.Store.delete_set`."""
        with self._tx() as db:
            return self._delete_sets(db, [set_id], now) if self._has_set(db, set_id) else None

    @staticmethod
    def _has_set(db: sqlite3.Connection, set_id: str) -> bool:
        return db.execute("SELECT 1 FROM sets WHERE id = ?", (set_id,)).fetchone() is not None

    def _delete_sets(self, db: sqlite3.Connection, set_ids: list[str], now: float) -> Changes:
        marks = _marks(len(set_ids))
        members = [
            r[0]
            for r in db.execute(f"SELECT id FROM subscriptions WHERE set_id IN ({marks})", set_ids)
        ]
        db.execute(f"DELETE FROM sets WHERE id IN ({marks})", set_ids)
        changes = self._remove_subscriptions(db, members, now)
        return changes | Changes(gone=frozenset(("set", s) for s in set_ids))

    def delete_all_sets(self, now: float) -> Changes:
        """See :meth:`pushservice.store.Store.delete_all_sets`."""
        with self._tx() as db:
            set_ids = [r[0] for r in db.execute("SELECT id FROM sets")]
            return self._delete_sets(db, set_ids, now) if set_ids else NO_CHANGES

    def close_sets(self) -> None:
        """See :meth:`pushservice.store.Store.close_sets`."""
        with self._tx() as db:
            db.execute("UPDATE sets SET joinable = 0")

    # -- messages -----------------------------------------------------------------------------
    def accept(self, message: NewMessage, *, max_pending: int, claimed: bool) -> Accepted | Refusal:
        """See :meth:`pushservice.store.Store.accept`."""
        m = message
        with self._tx() as db:
            row = db.execute(
                "SELECT pending FROM subscriptions WHERE id = ?", (m.sub_id,)
            ).fetchone()
            if row is None:
                return "gone"
            replaced: list[Any] = []
            receipts: frozenset[str] = frozenset()
            if m.topic is not None:
                db.execute("SAVEPOINT replace")
                replaced = db.execute(
                    "DELETE FROM messages WHERE sub_id = ? AND topic = ? RETURNING id, receipt_id",
                    (m.sub_id, m.topic),
                ).fetchall()
                receipts = self._receipts_for(db, replaced, RECEIPT_GONE, m.created)
            if row[0] - len(replaced) >= max_pending:
                if m.topic is not None:
                    db.execute("ROLLBACK TO replace")  # a refused message replaces nothing
                return "full"
            seq = db.execute(
                "INSERT INTO messages (id, sub_id, push_id, set_id, body, content_encoding,"
                " urgency, topic, created, expires, receipt_id, pushed_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?) RETURNING seq",
                (
                    m.id,
                    m.sub_id,
                    m.push_id,
                    m.set_id,
                    m.body,
                    m.content_encoding,
                    int(m.urgency),
                    m.topic,
                    m.created,
                    m.expires,
                    m.receipt_id,
                    m.created if claimed else None,
                ),
            ).fetchone()[0]
            db.execute(
                "UPDATE subscriptions SET pending = pending + ? WHERE id = ?",
                (1 - len(replaced), m.sub_id),
            )
        return Accepted(stored_message(m, seq), Changes(receipts=receipts))

    def stored(
        self,
        kind: TargetKind,
        ident: str,
        *,
        after_seq: int,
        min_urgency: Urgency,
        now: float,
        limit: int,
    ) -> list[Message]:
        """See :meth:`pushservice.store.Store.stored`."""
        column = "set_id" if kind == "set" else "sub_id"
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET pushed_at = ? WHERE seq IN (SELECT seq FROM messages"
                f" WHERE {column} = ? AND seq > ? AND expires > ? AND urgency >= ?"
                f" ORDER BY seq LIMIT ?) RETURNING {_MESSAGE_COLUMNS}",
                (now, ident, after_seq, now, int(min_urgency), limit),
            ).fetchall()
        return sorted((_message(r) for r in rows), key=lambda m: m.seq)

    def claim(self, query: DueQuery, *, now: float, limit: int) -> list[Message]:
        """See :meth:`pushservice.store.Store.claim`."""
        sets, subs = list(query.sets), list(query.subscriptions)
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET pushed_at = ? WHERE seq IN (SELECT seq FROM messages"
                f" WHERE (set_id IN ({_marks(len(sets))}) OR sub_id IN ({_marks(len(subs))}))"
                f" AND pushed_at IS NULL AND expires > ? AND urgency >= ? ORDER BY seq LIMIT ?)"
                f" RETURNING {_MESSAGE_COLUMNS}",
                (now, *sets, *subs, now, int(query.min_urgency), limit),
            ).fetchall()
        return sorted((_message(r) for r in rows), key=lambda m: m.seq)

    def release(self, message_ids: Sequence[str]) -> Changes:
        """See :meth:`pushservice.store.Store.release`."""
        if not message_ids:
            return NO_CHANGES
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE messages SET pushed_at = NULL WHERE id IN ({_marks(len(message_ids))})"
                " RETURNING set_id, sub_id",
                list(message_ids),
            ).fetchall()
        return Changes(due=frozenset((r[0], r[1]) for r in rows))

    def ack(self, message_ids: Sequence[str], now: float) -> Acked:
        """See :meth:`pushservice.store.Store.ack`."""
        if not message_ids:
            return Acked(frozenset(), NO_CHANGES)
        with self._tx() as db:
            rows = db.execute(
                f"DELETE FROM messages WHERE id IN ({_marks(len(message_ids))})"
                " RETURNING id, receipt_id, sub_id",
                list(message_ids),
            ).fetchall()
            self._count_removed(db, rows)
            receipts = self._receipts_for(db, rows, RECEIPT_ACKED, now)
        return Acked(frozenset(r[0] for r in rows), Changes(receipts=receipts))

    @staticmethod
    def _count_removed(db: sqlite3.Connection, rows: Iterable[Sequence[Any]]) -> None:
        """Lower the pending counts for removed (id, receipt id, sub id) rows."""
        per_sub: dict[str, int] = {}
        for r in rows:
            per_sub[r[2]] = per_sub.get(r[2], 0) + 1
        db.executemany(
            "UPDATE subscriptions SET pending = pending - ? WHERE id = ?",
            [(n, sub) for sub, n in per_sub.items()],
        )

    def sweep(self, now: float, redelivery_after: float, limit: int) -> Swept:
        """See :meth:`pushservice.store.Store.sweep`."""
        stale = now - redelivery_after
        with self._tx() as db:
            expired = db.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE expires <= ?"
                " AND (pushed_at IS NULL OR pushed_at <= ?) LIMIT ?)"
                " RETURNING id, receipt_id, sub_id",
                (now, stale, limit),
            ).fetchall()
            self._count_removed(db, expired)
            receipts = self._receipts_for(db, expired, RECEIPT_GONE, now)
            due = db.execute(
                "UPDATE messages SET pushed_at = NULL WHERE seq IN (SELECT seq FROM messages"
                " WHERE pushed_at <= ? AND expires > ? LIMIT ?) RETURNING set_id, sub_id",
                (stale, now, limit),
            ).fetchall()
            db.execute("DELETE FROM receipt_events WHERE created < ?", (now - RECEIPT_RETENTION,))
        changes = Changes(due=frozenset((r[0], r[1]) for r in due), receipts=receipts)
        return Swept(len(expired), len(due), changes)

    # -- receipts -----------------------------------------------------------------------------
    def new_receipt(self, now: float) -> str:
        """See :meth:`pushservice.store.Store.new_receipt`."""
        receipt_id = new_token()
        with self._tx() as db:
            db.execute("INSERT INTO receipts (id, created) VALUES (?, ?)", (receipt_id, now))
        return receipt_id

    def receipts(self, receipt_id: str) -> list[ReceiptEvent] | None:
        """See :meth:`pushservice.store.Store.receipts`."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM receipts WHERE id = ?", (receipt_id,)).fetchone() is None:
                return None
            rows = db.execute(
                "SELECT receipt_id, message_id, status, seq FROM receipt_events"
                " WHERE receipt_id = ? ORDER BY seq",
                (receipt_id,),
            ).fetchall()
        return [ReceiptEvent(*r) for r in rows]

    def claim_receipts(self, receipt_ids: Sequence[str]) -> list[ReceiptEvent]:
        """See :meth:`pushservice.store.Store.claim_receipts`."""
        if not receipt_ids:
            return []
        with self._tx() as db:
            rows = db.execute(
                f"UPDATE receipt_events SET pushed = 1 WHERE pushed = 0 AND receipt_id IN"
                f" ({_marks(len(receipt_ids))}) RETURNING receipt_id, message_id, status, seq",
                list(receipt_ids),
            ).fetchall()
        return sorted((ReceiptEvent(*r) for r in rows), key=lambda e: e.seq)

    def unclaim_receipts(self, seqs: Sequence[int]) -> None:
        """See :meth:`pushservice.store.Store.unclaim_receipts`."""
        if seqs:
            with self._tx() as db:
                db.execute(
                    f"UPDATE receipt_events SET pushed = 0 WHERE seq IN ({_marks(len(seqs))})",
                    list(seqs),
                )

    def record_receipt(self, receipt_id: str, message_id: str, status: int, now: float) -> Changes:
        """See :meth:`pushservice.store.Store.record_receipt`."""
        with self._tx() as db:
            receipts = self._receipts_for(db, [(message_id, receipt_id)], status, now)
        return Changes(receipts=receipts)

    # -- inspection ---------------------------------------------------------------------------
    def counts(self) -> Counts:
        """See :meth:`pushservice.store.Store.counts`."""
        with self._tx() as db:
            subs, sets, messages = db.execute(
                "SELECT (SELECT count(*) FROM subscriptions), (SELECT count(*) FROM sets),"
                " (SELECT count(*) FROM messages)"
            ).fetchone()
        return Counts(subs, sets, messages)

    def pending(self, push_id: str | None) -> int:
        """See :meth:`pushservice.store.Store.pending`."""
        with self._tx() as db:
            if push_id is None:
                return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])
            row = db.execute(
                "SELECT pending FROM subscriptions WHERE push_id = ?", (push_id,)
            ).fetchone()
        return 0 if row is None else int(row[0])

    def subscriptions(self) -> list[tuple[Subscription, int]]:
        """See :meth:`pushservice.store.Store.subscriptions`."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, push_id, set_id, vapid_key, created, pending FROM subscriptions"
            ).fetchall()
        return [(_subscription(r), int(r[5])) for r in rows]

    def message_ids(self) -> list[str]:
        """See :meth:`pushservice.store.Store.message_ids`."""
        with self._tx() as db:
            return [r[0] for r in db.execute("SELECT id FROM messages ORDER BY seq")]
