"""The journal's SQLite schema and its migrations.

``MIGRATIONS[i]`` takes a database from version ``i`` to ``i + 1``; a released migration is never
edited, a change is a new entry. Version 0 is an empty file.

Layout chosen for flash wear (every page a commit touches is written twice: WAL, checkpoint):
journal rows are deleted once delivered; pending deliveries are one ``WITHOUT ROWID`` b-tree
ordered by (route, target, message) so a target's queue is contiguous; the acks still owed live
in their own small table instead of updating the large dedupe table. Message ids use
AUTOINCREMENT: an id is never reused (devices may dedupe by it, and the router's per-target
cursor relies on ids only growing).
"""

from __future__ import annotations

import sqlite3

from gateway.store_types import StoreError

SCHEMA_V1 = """
CREATE TABLE subscriptions (
    route TEXT PRIMARY KEY,
    subscription_url TEXT NOT NULL,
    push_url TEXT NOT NULL,
    set_url TEXT,
    private_key_der BLOB NOT NULL,
    auth_secret BLOB NOT NULL,
    created_at REAL NOT NULL,
    distributed_at REAL
);
CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    route TEXT NOT NULL,
    push_message_url TEXT NOT NULL,
    body BLOB NOT NULL,
    received_at REAL NOT NULL,
    expires_at REAL,
    ack_policy TEXT NOT NULL
);
CREATE TABLE deliveries (
    route TEXT NOT NULL,
    target TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    PRIMARY KEY (route, target, message_id)
) WITHOUT ROWID;
CREATE INDEX deliveries_by_message ON deliveries (message_id);
CREATE TABLE dedupe (
    url TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX dedupe_by_age ON dedupe (seen_at);
CREATE TABLE acks (
    url TEXT PRIMARY KEY,
    state TEXT NOT NULL CHECK (state IN ('held', 'owed'))
) WITHOUT ROWID;
CREATE TABLE dead_letters (
    id INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    route TEXT,
    target TEXT,
    push_message_url TEXT,
    headers TEXT NOT NULL,
    raw_body BLOB NOT NULL,
    plaintext BLOB,
    received_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    expires_at REAL
);
"""

# v2: the dedupe record becomes an append-only log (rowid order is arrival order) looked up
# through an index the store keeps in memory. A b-tree keyed by the (random) URL dirtied one 4 KiB
# page per message: ~6.6 KB written per message in bench_router, against a 2 KB budget.
SCHEMA_V2 = """
CREATE TABLE dedupe_log (
    id INTEGER PRIMARY KEY,
    url TEXT NOT NULL,
    seen_at REAL NOT NULL
);
INSERT INTO dedupe_log (url, seen_at) SELECT url, seen_at FROM dedupe ORDER BY seen_at;
DROP TABLE dedupe;
"""

# v3: each dedupe record knows when it may be forgotten: once the push service can no longer
# redeliver the message (its remaining TTL when pushed, plus slack), at the latest after
# journal.dedupe_retention (NULL: that default). Memory and disk then follow rate x TTL.
SCHEMA_V3 = """
ALTER TABLE dedupe_log ADD COLUMN forget_at REAL
"""

# v4: what the upstream side must remember besides subscriptions: the push service they belong
# to (a new service URL means new subscriptions) and the autopush uaid. A few small rows.
SCHEMA_V4 = """
CREATE TABLE upstream_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID
"""

# v5: the record salts of journalled messages (gateway/salt_memory.py): a replay of the same
# ciphertext is recognised by them. Append-only like dedupe_log (rowid order is arrival order, so
# a commit dirties the last page only; no index on the random digest, which would dirty a random
# page per message); the store keeps the last MAX_SALTS digests in memory and prunes the rest.
SCHEMA_V5 = """
CREATE TABLE salts (
    id INTEGER PRIMARY KEY,
    digest INTEGER NOT NULL,
    seen_at REAL NOT NULL
)
"""

# v6: one row per message (issue 20: one durable write per message). The message, its pending
# targets, the state of its upstream acknowledgement and its dedupe record are one row of
# `journal`, so a commit at a field rate dirties one leaf (the newest rows share it) instead of
# a page in each of messages, deliveries, its index, dedupe_log and acks. A row stays after
# delivery (body NULL) as the dedupe record until its acknowledgement is confirmed and a grace
# period passed (forget_at). Ids are explicit and never reused: the row with the largest id is
# never pruned (the migration keeps AUTOINCREMENT's high-water mark as such a row). Retry
# schedules, rare, have their own table.
SCHEMA_V6 = """
CREATE TABLE journal (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    route TEXT,
    body BLOB,
    received_at REAL NOT NULL,
    expires_at REAL,
    targets TEXT NOT NULL DEFAULT '',
    ack TEXT CHECK (ack IN ('held', 'owed')),
    forget_at REAL
);
CREATE TABLE retries (
    message_id INTEGER NOT NULL,
    target TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    PRIMARY KEY (message_id, target)
) WITHOUT ROWID;
INSERT INTO journal (id, key, route, body, received_at, expires_at, targets, ack)
    SELECT m.id, m.push_message_url, m.route, m.body, m.received_at, m.expires_at,
           coalesce((SELECT group_concat(d.target, ' ') FROM deliveries d
                     WHERE d.message_id = m.id), ''),
           (SELECT a.state FROM acks a WHERE a.url = m.push_message_url)
    FROM messages m;
INSERT INTO retries (message_id, target, attempts, next_attempt_at, last_error)
    SELECT message_id, target, attempts, next_attempt_at, last_error FROM deliveries
    WHERE attempts > 0;
INSERT INTO journal (key, received_at, ack, forget_at)
    SELECT l.url, l.seen_at, (SELECT a.state FROM acks a WHERE a.url = l.url), l.forget_at
    FROM dedupe_log l WHERE l.url NOT IN (SELECT push_message_url FROM messages);
INSERT INTO journal (id, key, received_at)
    SELECT seq, '', 0 FROM sqlite_sequence
    WHERE name = 'messages' AND seq > (SELECT coalesce(max(id), 0) FROM journal);
DROP TABLE deliveries;
DROP TABLE messages;
DROP TABLE dedupe_log;
DROP TABLE acks
"""

# v7: a journalled message's record salt lives in its journal row (issue 20): a commit at a field
# rate then dirties the journal's newest leaf alone, not the salts table's too (bare SQLite, WAL,
# 1 KiB pages, one commit per message at 20/s: 5.9 KB written per commit with one table, 7.2 KB
# with two). A row's salt moves to `salts` when the row is forgotten (a prune: many at once),
# so a replay is still recognised after its original's dedupe record is gone.
SCHEMA_V7 = """
ALTER TABLE journal ADD COLUMN salt INTEGER
"""

MIGRATIONS: tuple[str, ...] = (
    SCHEMA_V1,
    SCHEMA_V2,
    SCHEMA_V3,
    SCHEMA_V4,
    SCHEMA_V5,
    SCHEMA_V6,
    SCHEMA_V7,
)
CURRENT_VERSION = len(MIGRATIONS)


def _version(conn: sqlite3.Connection) -> int:
    has_table = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if not has_table:
        return 0
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    return int(row[0]) if row else 0


def version(conn: sqlite3.Connection) -> int:
    """The schema version of an open journal (0: an empty file)."""
    return _version(conn)


def migrate(conn: sqlite3.Connection, path: str) -> int:
    """Bring the schema to :data:`CURRENT_VERSION` in one transaction; return the old version."""
    old = _version(conn)
    if old > CURRENT_VERSION:
        raise StoreError(
            f"{path}: journal schema version {old} is newer than this fieldgate understands "
            f"({CURRENT_VERSION}); run the newer fieldgate or move the file away"
        )
    if old == CURRENT_VERSION:
        return old
    conn.execute("BEGIN IMMEDIATE")
    try:
        if old == 0:
            conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            conn.execute("INSERT INTO schema_version VALUES (0)")
        for script in MIGRATIONS[old:]:
            # executescript() would COMMIT first; run statement by statement inside ours.
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
        conn.execute("UPDATE schema_version SET version = ?", (CURRENT_VERSION,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return old
