"""The shared store: PostgreSQL through psycopg 3's blocking API, for several nodes.

Worker threads take a connection from a small pool (one per thread the service lets in at once,
:mod:`pushservice.db`); a connection that fails is dropped and the next call connects anew, so a
restarted database is used again without anyone's help. Every mutation that other nodes must
hear about calls ``pg_notify`` in its own transaction (delivered at commit); each node LISTENs
on a dedicated connection and thread (:class:`Listener`). The hot paths (accept, claim, ack)
are single statements: one round trip each.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import conninfo

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
    NOTIFY_CHANNEL,
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
    decode_payload,
    encode_changes,
    payload_prefix,
    stored_message,
)

SCHEMA_VERSION = 1
# Connecting to a database on the same network takes milliseconds; a server that does not
# answer within this is down for our purposes (the request gets 503).
CONNECT_TIMEOUT = 3
# No statement of ours runs long; one that does is stuck behind a lock or a dying server.
STATEMENT_TIMEOUT_MS = 5000
# TCP keepalive (libpq's keepalives_*): a peer gone without a FIN is found within ~25 s.
KEEPALIVE = {"keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5"}
# The listener waits this long per poll for notifications, then checks whether to stop.
LISTEN_POLL = 0.5
# Reconnect backoff of the listener, doubling from the first to the last (seconds).
LISTEN_RETRY = (0.1, 2.0)
# Serialises schema creation when several nodes start at once (any constant key will do).
SCHEMA_LOCK_KEY = 0x66676174  # "fgat"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fieldgate_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sets (id TEXT PRIMARY KEY, joinable BOOLEAN NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, push_id TEXT UNIQUE NOT NULL, set_id TEXT NOT NULL, vapid_key BYTEA,
    created DOUBLE PRECISION NOT NULL, pending INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS subscriptions_set ON subscriptions (set_id);
CREATE TABLE IF NOT EXISTS messages (
    seq BIGSERIAL PRIMARY KEY, id TEXT UNIQUE NOT NULL, sub_id TEXT NOT NULL,
    push_id TEXT NOT NULL, set_id TEXT NOT NULL, body BYTEA NOT NULL, content_encoding TEXT,
    urgency SMALLINT NOT NULL, topic TEXT, created DOUBLE PRECISION NOT NULL,
    expires DOUBLE PRECISION NOT NULL, receipt_id TEXT, pushed_at DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS messages_set ON messages (set_id, seq);
CREATE INDEX IF NOT EXISTS messages_sub ON messages (sub_id, seq);
CREATE INDEX IF NOT EXISTS messages_due_set ON messages (set_id, seq) WHERE pushed_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_due_sub ON messages (sub_id, seq) WHERE pushed_at IS NULL;
CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires);
CREATE INDEX IF NOT EXISTS messages_pushed ON messages (pushed_at) WHERE pushed_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS receipts (id TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS receipt_events (
    seq BIGSERIAL PRIMARY KEY, receipt_id TEXT NOT NULL, message_id TEXT NOT NULL,
    status SMALLINT NOT NULL, pushed BOOLEAN NOT NULL DEFAULT false,
    created DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS receipt_events_receipt ON receipt_events (receipt_id, seq);
CREATE INDEX IF NOT EXISTS receipt_events_created ON receipt_events (created);
"""
_MESSAGE_COLUMNS = (
    "m.id, m.sub_id, m.push_id, m.set_id, m.body, m.content_encoding, m.urgency, m.topic,"
    " m.created, m.expires, m.receipt_id, m.seq"
)
_ACCEPT = """
WITH s AS (
    UPDATE subscriptions SET pending = pending + 1
    WHERE id = %(sub)s AND pending < %(max)s RETURNING id),
m AS (
    INSERT INTO messages (id, sub_id, push_id, set_id, body, content_encoding, urgency, topic,
                          created, expires, receipt_id, pushed_at)
    SELECT %(id)s, %(sub)s, %(push)s, %(set)s, %(body)s, %(ce)s, %(urgency)s, NULL, %(created)s,
           %(expires)s, %(receipt)s, %(pushed)s FROM s
    RETURNING seq)
SELECT m.seq{notify} FROM m
"""
_REPLACE_TOPIC = """
WITH d AS (DELETE FROM messages WHERE sub_id = %(sub)s AND topic = %(topic)s
           RETURNING id, receipt_id),
r AS (INSERT INTO receipt_events (receipt_id, message_id, status, created)
      SELECT receipt_id, id, %(gone)s, %(created)s FROM d WHERE receipt_id IS NOT NULL)
SELECT d.id, d.receipt_id FROM d
"""
_INSERT_WITH_TOPIC = """
WITH m AS (
    INSERT INTO messages (id, sub_id, push_id, set_id, body, content_encoding, urgency, topic,
                          created, expires, receipt_id, pushed_at)
    VALUES (%(id)s, %(sub)s, %(push)s, %(set)s, %(body)s, %(ce)s, %(urgency)s, %(topic)s,
            %(created)s, %(expires)s, %(receipt)s, %(pushed)s)
    RETURNING seq),
s AS (UPDATE subscriptions SET pending = pending + 1 - %(replaced)s WHERE id = %(sub)s)
SELECT m.seq FROM m
"""
# Removes rows of ``doomed`` (a CTE yielding message ids), lowers the pending counts, records a
# ``status`` receipt for each that asked, and notifies each receipt subscription.
_REMOVE = """
d AS (DELETE FROM messages WHERE id IN (SELECT id FROM doomed)
      RETURNING id, sub_id, receipt_id),
c AS (UPDATE subscriptions s SET pending = s.pending - x.n
      FROM (SELECT sub_id, count(*) AS n FROM d GROUP BY sub_id) x WHERE s.id = x.sub_id),
r AS (INSERT INTO receipt_events (receipt_id, message_id, status, created)
      SELECT receipt_id, id, %(status)s, %(now)s FROM d WHERE receipt_id IS NOT NULL)
SELECT d.id, d.receipt_id,
       CASE WHEN d.receipt_id IS NOT NULL
            THEN pg_notify(%(channel)s, %(receipt_prefix)s || d.receipt_id) END
FROM d
"""
_ACK = "WITH doomed AS (SELECT unnest(%(ids)s::text[]) AS id),\n" + _REMOVE
_EXPIRE = (
    "WITH doomed AS (SELECT id FROM messages WHERE expires <= %(now)s"
    " AND (pushed_at IS NULL OR pushed_at <= %(stale)s) ORDER BY expires LIMIT %(limit)s"
    " FOR UPDATE SKIP LOCKED),\n" + _REMOVE
)
_REDELIVER = """
WITH c AS (SELECT seq FROM messages WHERE pushed_at <= %(stale)s AND expires > %(now)s
           ORDER BY pushed_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE messages m SET pushed_at = NULL FROM c WHERE m.seq = c.seq RETURNING m.set_id, m.sub_id
"""
_CLAIM = f"""
WITH c AS (SELECT seq FROM messages
           WHERE (set_id = ANY(%(sets)s) OR sub_id = ANY(%(subs)s)) AND pushed_at IS NULL
             AND expires > %(now)s AND urgency >= %(urgency)s
           ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
UPDATE messages m SET pushed_at = %(now)s FROM c WHERE m.seq = c.seq RETURNING {_MESSAGE_COLUMNS}
"""
_STORED = """
WITH c AS (SELECT seq FROM messages
           WHERE {column} = %(ident)s AND seq > %(after)s AND expires > %(now)s
             AND urgency >= %(urgency)s
           ORDER BY seq LIMIT %(limit)s)
UPDATE messages m SET pushed_at = %(now)s FROM c WHERE m.seq = c.seq RETURNING {columns}
"""
_CLAIM_RECEIPTS = """
WITH c AS (SELECT seq FROM receipt_events WHERE receipt_id = ANY(%(ids)s) AND NOT pushed
           ORDER BY seq FOR UPDATE SKIP LOCKED)
UPDATE receipt_events e SET pushed = true FROM c WHERE e.seq = c.seq
RETURNING e.receipt_id, e.message_id, e.status, e.seq
"""


def _message(row: Sequence[Any]) -> Message:
    return Message(
        row[0], row[1], row[2], row[3], bytes(row[4]), row[5], Urgency(row[6]), row[7], row[8],
        row[9], row[10], int(row[11]),
    )  # fmt: skip


def _subscription(row: Sequence[Any]) -> Subscription:
    return Subscription(row[0], row[1], row[2], None if row[3] is None else bytes(row[3]), row[4])


def connection_kwargs(url: str) -> dict[str, Any]:
    """libpq parameters: the URL's, with our timeouts and keepalives where it sets none."""
    params: dict[str, Any] = conninfo.conninfo_to_dict(url)
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT))
    params.setdefault("application_name", "fieldgate-push-service")
    for key, value in KEEPALIVE.items():
        params.setdefault(key, value)
    return params


def connect(url: str, *, autocommit: bool = True) -> psycopg.Connection[Any]:
    """A connection with our session settings; psycopg errors propagate."""
    conn = psycopg.connect(**connection_kwargs(url), autocommit=autocommit)
    conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
    return conn


class PostgresStore:
    """The :class:`~pushservice.store.Store` on PostgreSQL, shared by every node."""

    shared = True
    blocking_io = True

    def __init__(self, url: str, *, node: str, pool_size: int) -> None:
        self._url = url
        self._node = node
        self._pool_size = pool_size
        self._idle: deque[psycopg.Connection[Any]] = deque()
        self._lock = threading.Lock()
        self.round_trips = 0
        with self._connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK_KEY,))
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT version FROM fieldgate_schema").fetchone()
            if row is None:
                conn.execute("INSERT INTO fieldgate_schema VALUES (%s)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"the database holds schema version {row[0]}, this release uses "
                    f"{SCHEMA_VERSION}"
                )

    # -- connections --------------------------------------------------------------------------
    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None or conn.closed:
                conn = connect(self._url)
            yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if conn is not None:
                conn.close()
            raise StoreUnavailable(str(exc).strip() or type(exc).__name__) from exc
        except BaseException:
            if (
                conn is not None
                and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
            ):
                conn.close()  # left mid-transaction by a bug: never hand it out again
            raise
        else:
            with self._lock:
                if len(self._idle) < self._pool_size:
                    self._idle.append(conn)
                    conn = None
            if conn is not None:
                conn.close()

    def _run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """One statement in autocommit mode (one round trip); its rows."""
        with self._connection() as conn:
            self.round_trips += 1
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    @contextmanager
    def _tx(self) -> Iterator[_Tx]:
        """A transaction of several statements (BEGIN and COMMIT are round trips too)."""
        with self._connection() as conn, conn.transaction():
            tx = _Tx(conn, self)
            self.round_trips += 2
            yield tx

    def _notify(self, tx: _Tx, changes: Changes) -> None:
        payloads = encode_changes(self._node, changes)
        if payloads:
            tx.run(
                "SELECT pg_notify(%s, p) FROM unnest(%s::text[]) AS p", (NOTIFY_CHANNEL, payloads)
            )

    def close(self) -> None:
        """Close the pooled connections."""
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for conn in idle:
            conn.close()

    def ping(self) -> None:
        """One trivial query."""
        self._run("SELECT 1")

    # -- subscriptions and sets ---------------------------------------------------------------
    def subscribe(self, set_id: str | None, vapid_key: bytes | None, now: float) -> Subscription:
        """See :meth:`pushservice.store.Store.subscribe`."""
        with self._tx() as tx:
            if set_id is not None:
                rows = tx.run("SELECT joinable FROM sets WHERE id = %s FOR SHARE", (set_id,))
                if not rows or not rows[0][0]:
                    raise InvalidSet(set_id)
            else:
                set_id = new_token()
                tx.run("INSERT INTO sets VALUES (%s, true)", (set_id,))
            sub = Subscription(new_token(), new_token(), set_id, vapid_key, now)
            tx.run(
                "INSERT INTO subscriptions (id, push_id, set_id, vapid_key, created)"
                " VALUES (%s, %s, %s, %s, %s)",
                (sub.id, sub.push_id, sub.set_id, sub.vapid_key, sub.created),
            )
            return sub

    def subscription_by_push(self, push_id: str) -> Subscription | None:
        """See :meth:`pushservice.store.Store.subscription_by_push`."""
        rows = self._run(
            "SELECT id, push_id, set_id, vapid_key, created FROM subscriptions WHERE push_id = %s",
            (push_id,),
        )
        return _subscription(rows[0]) if rows else None

    def exists(self, kind: ResourceKind, ident: str) -> bool:
        """See :meth:`pushservice.store.Store.exists`."""
        table = {"subscription": "subscriptions", "set": "sets", "receipt": "receipts"}[kind]
        return bool(self._run(f"SELECT 1 FROM {table} WHERE id = %s", (ident,)))

    def _remove_subscriptions(self, tx: _Tx, sub_ids: list[str], now: float) -> Changes:
        if not sub_ids:
            return NO_CHANGES
        rows = tx.run(
            "WITH doomed AS (SELECT id FROM messages WHERE sub_id = ANY(%(subs)s)),\n" + _REMOVE,
            self._remove_params(RECEIPT_GONE, now) | {"subs": sub_ids},
        )
        tx.run("DELETE FROM subscriptions WHERE id = ANY(%s)", (sub_ids,))
        gone: frozenset[tuple[TargetKind, str]] = frozenset(("subscription", s) for s in sub_ids)
        return Changes(receipts=frozenset(r[1] for r in rows if r[1] is not None), gone=gone)

    def _remove_params(self, status: int, now: float) -> dict[str, Any]:
        return {
            "status": status,
            "now": now,
            "channel": NOTIFY_CHANNEL,
            "receipt_prefix": payload_prefix(self._node, "r"),
        }

    def delete_subscription(self, sub_id: str, now: float) -> Changes | None:
        """See :meth:`pushservice.store.Store.delete_subscription`."""
        with self._tx() as tx:
            if not tx.run("SELECT 1 FROM subscriptions WHERE id = %s FOR UPDATE", (sub_id,)):
                return None
            changes = self._remove_subscriptions(tx, [sub_id], now)
            self._notify(tx, Changes(gone=changes.gone))
            return changes

    def delete_set(self, set_id: str, now: float) -> Changes | None:
        """See :meth:`pushservice.store.Store.delete_set`."""
        with self._tx() as tx:
            if not tx.run("SELECT 1 FROM sets WHERE id = %s FOR UPDATE", (set_id,)):
                return None
            return self._delete_sets(tx, [set_id], now)

    def _delete_sets(self, tx: _Tx, set_ids: list[str], now: float) -> Changes:
        members = [
            r[0] for r in tx.run("SELECT id FROM subscriptions WHERE set_id = ANY(%s)", (set_ids,))
        ]
        tx.run("DELETE FROM sets WHERE id = ANY(%s)", (set_ids,))
        changes = self._remove_subscriptions(tx, members, now)
        gone: frozenset[tuple[TargetKind, str]] = frozenset(("set", s) for s in set_ids)
        changes = changes | Changes(gone=gone)
        self._notify(tx, Changes(gone=changes.gone))
        return changes

    def delete_all_sets(self, now: float) -> Changes:
        """See :meth:`pushservice.store.Store.delete_all_sets`."""
        with self._tx() as tx:
            set_ids = [r[0] for r in tx.run("SELECT id FROM sets FOR UPDATE")]
            return self._delete_sets(tx, set_ids, now) if set_ids else NO_CHANGES

    def close_sets(self) -> None:
        """See :meth:`pushservice.store.Store.close_sets`."""
        self._run("UPDATE sets SET joinable = false")

    # -- messages -----------------------------------------------------------------------------
    def _message_params(self, m: NewMessage, claimed: bool) -> dict[str, Any]:
        return {
            "id": m.id,
            "sub": m.sub_id,
            "push": m.push_id,
            "set": m.set_id,
            "body": m.body,
            "ce": m.content_encoding,
            "urgency": int(m.urgency),
            "topic": m.topic,
            "created": m.created,
            "expires": m.expires,
            "receipt": m.receipt_id,
            "pushed": m.created if claimed else None,
        }

    def accept(self, message: NewMessage, *, max_pending: int, claimed: bool) -> Accepted | Refusal:
        """See :meth:`pushservice.store.Store.accept`."""
        m = message
        params = self._message_params(m, claimed)
        due = NO_CHANGES if claimed else Changes(due=frozenset({(m.set_id, m.sub_id)}))
        if m.topic is None:
            notify = ", pg_notify(%(channel)s, %(payload)s)" if due else ""
            params |= {"max": max_pending, "channel": NOTIFY_CHANNEL}
            params["payload"] = encode_changes(self._node, due)[0] if due else None
            rows = self._run(_ACCEPT.format(notify=notify), params)
            receipts: frozenset[str] = frozenset()
            if rows:
                seq = int(rows[0][0])
            else:
                left = self._run("SELECT 1 FROM subscriptions WHERE id = %s", (m.sub_id,))
                return "full" if left else "gone"
        else:
            try:
                seq, receipts = self._accept_with_topic(params, max_pending, due)
            except _Refused as refused:
                return refused.reason
        return Accepted(stored_message(m, seq), Changes(receipts=receipts))

    def _accept_with_topic(
        self, params: dict[str, Any], max_pending: int, due: Changes
    ) -> tuple[int, frozenset[str]]:
        """Lock the subscription, replace same-topic messages, insert: one transaction."""
        with self._tx() as tx:
            row = tx.run(
                "SELECT pending FROM subscriptions WHERE id = %s FOR UPDATE", (params["sub"],)
            )
            if not row:
                raise _Refused("gone")
            replaced = tx.run(_REPLACE_TOPIC, params | {"gone": RECEIPT_GONE})
            if row[0][0] - len(replaced) >= max_pending:
                raise _Refused("full")  # rolls the replacement back too
            seq = int(tx.run(_INSERT_WITH_TOPIC, params | {"replaced": len(replaced)})[0][0])
            receipts = frozenset(r[1] for r in replaced if r[1] is not None)
            self._notify(tx, due | Changes(receipts=receipts))
        return seq, receipts

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
        sql = _STORED.format(
            column="set_id" if kind == "set" else "sub_id", columns=_MESSAGE_COLUMNS
        )
        rows = self._run(
            sql,
            {
                "ident": ident,
                "after": after_seq,
                "now": now,
                "urgency": int(min_urgency),
                "limit": limit,
            },
        )
        return sorted((_message(r) for r in rows), key=lambda m: m.seq)

    def claim(self, query: DueQuery, *, now: float, limit: int) -> list[Message]:
        """See :meth:`pushservice.store.Store.claim`."""
        rows = self._run(
            _CLAIM,
            {
                "sets": list(query.sets),
                "subs": list(query.subscriptions),
                "now": now,
                "urgency": int(query.min_urgency),
                "limit": limit,
            },
        )
        return sorted((_message(r) for r in rows), key=lambda m: m.seq)

    def release(self, message_ids: Sequence[str]) -> Changes:
        """See :meth:`pushservice.store.Store.release`."""
        if not message_ids:
            return NO_CHANGES
        with self._tx() as tx:
            rows = tx.run(
                "UPDATE messages SET pushed_at = NULL WHERE id = ANY(%s) RETURNING set_id, sub_id",
                (list(message_ids),),
            )
            changes = Changes(due=frozenset((r[0], r[1]) for r in rows))
            self._notify(tx, changes)
        return changes

    def ack(self, message_ids: Sequence[str], now: float) -> Acked:
        """See :meth:`pushservice.store.Store.ack`."""
        if not message_ids:
            return Acked(frozenset(), NO_CHANGES)
        params = self._remove_params(RECEIPT_ACKED, now) | {"ids": list(message_ids)}
        rows = self._run(_ACK, params)
        receipts = frozenset(r[1] for r in rows if r[1] is not None)
        return Acked(frozenset(r[0] for r in rows), Changes(receipts=receipts))

    def sweep(self, now: float, redelivery_after: float, limit: int) -> Swept:
        """See :meth:`pushservice.store.Store.sweep`."""
        stale = now - redelivery_after
        with self._tx() as tx:
            params = self._remove_params(RECEIPT_GONE, now) | {"stale": stale, "limit": limit}
            expired = tx.run(_EXPIRE, params)
            due = tx.run(_REDELIVER, {"stale": stale, "now": now, "limit": limit})
            changes = Changes(due=frozenset((r[0], r[1]) for r in due))
            self._notify(tx, changes)
            tx.run("DELETE FROM receipt_events WHERE created < %s", (now - RECEIPT_RETENTION,))
        receipts = frozenset(r[1] for r in expired if r[1] is not None)
        return Swept(len(expired), len(due), changes | Changes(receipts=receipts))

    # -- receipts -----------------------------------------------------------------------------
    def new_receipt(self, now: float) -> str:
        """See :meth:`pushservice.store.Store.new_receipt`."""
        receipt_id = new_token()
        self._run("INSERT INTO receipts (id, created) VALUES (%s, %s)", (receipt_id, now))
        return receipt_id

    def receipts(self, receipt_id: str) -> list[ReceiptEvent] | None:
        """See :meth:`pushservice.store.Store.receipts`."""
        rows = self._run(
            "SELECT e.receipt_id, e.message_id, e.status, e.seq FROM receipts r"
            " LEFT JOIN receipt_events e ON e.receipt_id = r.id WHERE r.id = %s ORDER BY e.seq",
            (receipt_id,),
        )
        if not rows:
            return None
        return [ReceiptEvent(r[0], r[1], int(r[2]), int(r[3])) for r in rows if r[0] is not None]

    def claim_receipts(self, receipt_ids: Sequence[str]) -> list[ReceiptEvent]:
        """See :meth:`pushservice.store.Store.claim_receipts`."""
        if not receipt_ids:
            return []
        rows = self._run(_CLAIM_RECEIPTS, {"ids": list(receipt_ids)})
        events = (ReceiptEvent(r[0], r[1], int(r[2]), int(r[3])) for r in rows)
        return sorted(events, key=lambda e: e.seq)

    def unclaim_receipts(self, seqs: Sequence[int]) -> None:
        """See :meth:`pushservice.store.Store.unclaim_receipts`."""
        if seqs:
            self._run("UPDATE receipt_events SET pushed = false WHERE seq = ANY(%s)", (list(seqs),))

    def record_receipt(self, receipt_id: str, message_id: str, status: int, now: float) -> Changes:
        """See :meth:`pushservice.store.Store.record_receipt`."""
        changes = Changes(receipts=frozenset({receipt_id}))
        with self._tx() as tx:
            tx.run(
                "INSERT INTO receipt_events (receipt_id, message_id, status, created)"
                " VALUES (%s, %s, %s, %s)",
                (receipt_id, message_id, status, now),
            )
            self._notify(tx, changes)
        return changes

    # -- inspection ---------------------------------------------------------------------------
    def counts(self) -> Counts:
        """See :meth:`pushservice.store.Store.counts`."""
        row = self._run(
            "SELECT (SELECT count(*) FROM subscriptions), (SELECT count(*) FROM sets),"
            " (SELECT count(*) FROM messages)"
        )[0]
        return Counts(int(row[0]), int(row[1]), int(row[2]))

    def pending(self, push_id: str | None) -> int:
        """See :meth:`pushservice.store.Store.pending`."""
        if push_id is None:
            return int(self._run("SELECT count(*) FROM messages")[0][0])
        rows = self._run("SELECT pending FROM subscriptions WHERE push_id = %s", (push_id,))
        return int(rows[0][0]) if rows else 0

    def subscriptions(self) -> list[tuple[Subscription, int]]:
        """See :meth:`pushservice.store.Store.subscriptions`."""
        rows = self._run(
            "SELECT id, push_id, set_id, vapid_key, created, pending FROM subscriptions"
        )
        return [(_subscription(r), int(r[5])) for r in rows]

    def message_ids(self) -> list[str]:
        """See :meth:`pushservice.store.Store.message_ids`."""
        return [r[0] for r in self._run("SELECT id FROM messages ORDER BY seq")]


class _Tx:
    """Statements of one transaction, counted as round trips."""

    def __init__(self, conn: psycopg.Connection[Any], store: PostgresStore) -> None:
        self._conn = conn
        self._store = store

    def run(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        self._store.round_trips += 1
        cur = self._conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


class _Refused(Exception):
    """Leaves a transaction (rolled back) with the reason a message is refused."""

    def __init__(self, reason: Refusal) -> None:
        super().__init__(reason)
        self.reason: Refusal = reason


class Listener:
    """LISTEN on a dedicated connection, in a thread of its own; reconnects forever.

    ``on_changes`` gets what other nodes notified (own notifications are skipped: the node
    applied them already); ``on_connected`` runs after every (re)connection, because
    notifications sent while the listener was away are lost and the node must re-read.
    """

    def __init__(
        self,
        url: str,
        node: str,
        on_changes: Callable[[Changes], None],
        on_connected: Callable[[], None],
        on_lost: Callable[[str], None],
    ) -> None:
        self._url = url
        self._node = node
        self._on_changes = on_changes
        self._on_connected = on_connected
        self._on_lost = on_lost
        self.stop = threading.Event()

    def run(self) -> None:
        """Until ``stop`` is set (checked every LISTEN_POLL seconds)."""
        delay = LISTEN_RETRY[0]
        while not self.stop.is_set():
            try:
                with connect(self._url) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    delay = LISTEN_RETRY[0]
                    self._on_connected()
                    self._listen(conn)
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._on_lost(str(exc).strip() or type(exc).__name__)
                self.stop.wait(delay)
                delay = min(delay * 2, LISTEN_RETRY[1])

    def _listen(self, conn: psycopg.Connection[Any]) -> None:
        while not self.stop.is_set():
            changes = NO_CHANGES
            for notify in conn.notifies(timeout=LISTEN_POLL, stop_after=1):
                try:
                    node, change = decode_payload(notify.payload)
                except ValueError:
                    continue  # someone else's NOTIFY on our channel
                if node != self._node:
                    changes = changes | change
            if changes:
                self._on_changes(changes)
