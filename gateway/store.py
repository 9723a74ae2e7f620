"""The durable store: subscriptions, the message journal, dedupe records, acks owed, dead letters.

One SQLite file in the state directory (WAL, ``synchronous=FULL``, mode 0600). Every method is
synchronous and thread-safe (one connection behind a lock); async callers use
``trio.to_thread.run_sync``. The store carries out what :mod:`gateway.policy` decides; policy
about *when* to deliver or retry lives in the router.

Lifecycle of a message: :meth:`Store.ingest` journals it with one pending delivery per target of
its route (one transaction per batch: group commit); the router reads a target's queue with
:meth:`Store.pending_deliveries`, reports retries with :meth:`Store.schedule_retry` and finished
deliveries with :meth:`Store.resolve`; the message row is deleted when no delivery is left
(flash wear: the journal holds only what is undelivered). The dedupe record of its push message
URL stays for ``journal.dedupe_retention`` (:meth:`Store.prune`).

The journal's files are watched (:mod:`gateway.journal_files`): deleted, replaced or truncated
under the running gateway, or failing ``PRAGMA quick_check``, the store refuses every further
ingest (so nothing more is acknowledged) and :meth:`Store.check_integrity` says why. A start that
finds no journal where one was created (``journal.created``, :mod:`gateway.statedir`) refuses to
make a new one unless ``reset`` is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.base import Message
from fieldgate_common.logs import get_logger
from gateway import policy, statedir
from gateway.config import JournalConfig, RouteConfig
from gateway.journal_files import JournalFiles
from gateway.routes import RouteTable
from gateway.salt_memory import MAX_SALTS, RecentSalts, salt_key
from gateway.store_schema import migrate, version
from gateway.store_types import (
    DeadLetter,
    Incoming,
    IngestResult,
    JournalMissing,
    JournalProblem,
    PendingDelivery,
    QueueUsage,
    Resolution,
    StoreCounts,
    StoreError,
    SubscriptionRecord,
    target_key,
)

__all__ = [
    "DeadLetter",
    "Incoming",
    "IngestResult",
    "JournalMissing",
    "JournalProblem",
    "PendingDelivery",
    "QueueUsage",
    "Resolution",
    "Store",
    "StoreCounts",
    "StoreError",
    "SubscriptionRecord",
    "target_key",
]

DB_NAME = "journal.sqlite3"
# Another process (``fieldgate dead-letters`` beside the running gateway) may hold the write lock
# for one commit; an fsync on a slow SD card takes tens of milliseconds, so wait up to 5 s.
BUSY_TIMEOUT_MS = 5000
# A failed commit (disk full, a failing card) is retried by its caller between these bounds
# (exponential backoff with full jitter): soon enough to notice a freed disk, rarely enough
# not to hammer a failing one. The cap also bounds how long deliveries the devices confirmed
# stay uncommitted after the disk is freed (a restart in that window delivers them again, and a
# device remembers only its last few message ids): 5 s, not 30 (a failed attempt costs a write).
COMMIT_RETRY_BASE = 0.5
COMMIT_RETRY_CAP = 5.0
# The WAL counts towards journal.max_bytes, so it gets a share of it (set aside from what the
# database pages may take). It is checkpointed once it holds half of that, SQLite's default
# threshold (1,000 pages, ~4 MiB) for the default limit, and kept at that size after each
# checkpoint (journal_size_limit): the other half is room for the commit that crosses the line.
# A commit that took it past the whole share restarts it (the next commit truncates it back).
# The file keeps its half allocated: a full disk still takes small commits. A tiny limit still
# leaves room for a few commits' pages between checkpoints.
WAL_SHARE = 8
WAL_BUDGET_MIN = 64 * 1024
WAL_BUDGET_MAX = 8 * 1024 * 1024
# PRAGMA quick_check reads every page (milliseconds for a journal of undelivered messages, seconds
# for a full 256 MiB one on an SD card, holding the store's lock): at most this often.
QUICK_CHECK_INTERVAL = 6 * 3600.0

log = get_logger("store")

# How a journalled message's upstream acknowledgement is timed (the messages.ack_policy column).
_ACK_POLICY = {False: "stored", True: "delivered"}


@dataclass
class _Usage:
    messages: int = 0
    bytes: int = 0
    last_received_at: float | None = None


@dataclass
class _BatchSpace:
    """The database pages in use as a batch is carried out: measured (at its start, and again
    near the limit), plus an estimate of what was journalled since."""

    measured: int
    added: int = 0

    @property
    def used(self) -> int:
        return self.measured + self.added

    def add(self, cost: int) -> None:
        self.added += cost


def wal_budget(max_bytes: int) -> int:
    """The bytes of ``journal.max_bytes`` the WAL may take before it is checkpointed."""
    return max(WAL_BUDGET_MIN, min(WAL_BUDGET_MAX, max_bytes // WAL_SHARE))


def _url_key(url: str) -> int:
    """A push message URL's 64-bit digest (the in-memory dedupe index holds these)."""
    return int.from_bytes(hashlib.blake2b(url.encode(), digest_size=8).digest(), "big")


def _lost_journal(db: Path, marker: str, what: str) -> StoreError:
    return StoreError(
        f"journal {db} {what}, but {db.parent / statedir.JOURNAL_MARKER} shows one was "
        f"created here ({marker}). Its keys and subscriptions are gone with it: application "
        "servers still send to the old push resources, which no gateway reads. Restore the file "
        "from a backup if there is one; otherwise `fieldgate run --reset` creates a new journal "
        "with new subscriptions, and every application server must then be given the new push "
        "resources (`fieldgate subscriptions`)"
    )


def _prepare_files(directory: Path, *, create: bool, reset: bool) -> Path:
    if create:
        statedir.prepare(directory)
    elif not directory.is_dir():
        raise JournalMissing(f"no journal in {directory} yet (the gateway has not run)")
    else:
        statedir.check_private(directory, "state directory", "700")
    db = directory / DB_NAME
    if db.exists():
        for path in (db, db.with_name(DB_NAME + "-wal"), db.with_name(DB_NAME + "-shm")):
            if path.exists():
                statedir.check_private(path, "journal file", "600")
        return db
    marker = statedir.journal_marker(directory)
    if marker is not None and not reset:
        raise _lost_journal(db, marker, "is missing")
    if not create:
        raise JournalMissing(f"no journal in {directory} yet (the gateway has not run)")
    try:
        # Create it 0600 ourselves: SQLite would use 0644 (and gives -wal/-shm the db's mode).
        os.close(os.open(db, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError as exc:
        raise StoreError(f"cannot create journal {db}: {exc.strerror or exc}") from None
    return db


class Store:
    """The gateway's SQLite journal. Use :meth:`open`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        journal: JournalConfig,
        clock: Callable[[], float],
    ) -> None:
        self._conn = conn
        self.path = path
        self._journal = journal
        self._clock = clock
        self._lock = threading.Lock()
        # Counts and queue usage have their own lock, held only for dict updates, so the trio
        # thread can read them without waiting for a commit's fsync.
        self._stats_lock = threading.Lock()
        self._counts = StoreCounts()
        self._usage: dict[str, _Usage] = {}
        self.transactions = 0  # committed write transactions (group commit is observable)
        self._load_usage()
        # Subscriptions are few and read often (the status page, every ingest): served from
        # memory under the stats lock, so a reader never waits for a commit's fsync.
        self._subscriptions = self._load_subscriptions()
        self._upstream_state: dict[str, str] = dict(
            conn.execute("SELECT key, value FROM upstream_state").fetchall()
        )
        # The dedupe index: 64-bit digests of every remembered push message URL (~60 bytes of
        # RAM each; 100,000 messages a day for the default 28 days would be ~170 MB, so size
        # dedupe_retention to the message rate). Two URLs share a digest with probability
        # ~n^2 / 2^65: about 1e-8 for a million remembered URLs.
        self._seen: set[int] = {
            _url_key(row[0]) for row in conn.execute("SELECT url FROM dedupe_log")
        }
        self._remembered: list[int] = []
        newest = conn.execute(
            "SELECT digest FROM salts ORDER BY id DESC LIMIT ?", (MAX_SALTS,)
        ).fetchall()
        self._salts = RecentSalts(int(row[0]) for row in reversed(newest))
        self._salted: list[int] = []
        self._files = JournalFiles(path)
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._problem: JournalProblem | None = None
        self._next_quick_check = clock() + QUICK_CHECK_INTERVAL

    @classmethod
    def open(
        cls,
        state_dir: Path,
        *,
        journal: JournalConfig,
        clock: Callable[[], float] = time.time,
        create: bool = True,
        reset: bool = False,
    ) -> Store:
        """Open (creating if needed) the journal in ``state_dir``; raise :class:`StoreError`.

        ``create=False`` (the CLI's read-mostly commands) raises :class:`JournalMissing` instead
        of creating anything. A journal that is missing or empty where ``journal.created`` shows
        one existed is re-created only with ``reset``.
        """
        directory = Path(state_dir)
        db = _prepare_files(directory, create=create, reset=reset)
        try:
            conn = sqlite3.connect(str(db), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open journal {db}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            marker = None
            if version(conn) == 0:
                marker = statedir.journal_marker(directory)
                if marker is not None and not reset:
                    raise _lost_journal(db, marker, "is empty")
                if not create:
                    raise JournalMissing(f"the journal {db} is empty (the gateway has not run)")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"journal {db}: the filesystem does not support WAL ({mode})")
            # FULL: the WAL is fsynced at every commit. An acknowledged message must be on disk:
            # after the DELETE the push service forgets it, so NORMAL (which may lose the last
            # commits on power loss) would lose messages the sender was told were received.
            conn.execute("PRAGMA synchronous = FULL")
            half = wal_budget(journal.max_bytes) // 2
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            conn.execute(f"PRAGMA journal_size_limit = {half}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {max(1, half // page_size)}")
            old = migrate(conn, str(db))
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError(f"journal {db} is not a usable SQLite database: {exc}") from exc
        except sqlite3.Error as exc:
            conn.close()
            raise StoreError(f"cannot open journal {db}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        store = cls(conn, db, journal, clock)
        try:
            if old == 0 or statedir.journal_marker(directory) is None:
                statedir.mark_journal_created(directory, db, clock())
        except OSError as exc:
            store.close()
            raise StoreError(
                f"cannot write {directory / statedir.JOURNAL_MARKER}: {exc.strerror or exc}"
            ) from exc
        if old == 0:
            if marker is not None:
                log.warning(
                    "--reset: created a new journal %s in place of the one created %s; routes get "
                    "new subscriptions: give every application server the new push resources "
                    "(`fieldgate subscriptions`)",
                    db,
                    marker,
                )
            else:
                log.info("created journal %s", db)
        return store

    def close(self) -> None:
        """Close the connection (everything committed is already durable)."""
        with self._lock:
            self._conn.close()

    # -- plumbing --------------------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            # A failed statement or COMMIT (a full disk): SQLite may have rolled back already
            # (SQLITE_FULL, SQLITE_IOERR) or not; make sure, so the next BEGIN starts clean.
            if self._conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                self._load_usage()
            raise
        self.transactions += 1
        self._bound_wal()
        self._files.note_size()

    def _load_usage(self) -> None:
        rows = self._conn.execute(
            "SELECT route, count(*), coalesce(sum(length(body)), 0), max(received_at) "
            "FROM messages GROUP BY route"
        ).fetchall()
        with self._stats_lock:
            self._usage = {r: _Usage(int(n), int(b), t) for r, n, b, t in rows}

    def _usage_of(self, route: str) -> _Usage:
        usage = self._usage.get(route)
        if usage is None:
            usage = self._usage[route] = _Usage()
        return usage

    def disk_bytes(self) -> int:
        """What the journal takes on disk: database pages in use plus the WAL file.

        This is what ``journal.max_bytes`` limits (payload bytes alone let the WAL, the indexes,
        the dedupe records and the dead letters grow unseen): the pages may take it less the
        WAL's budget (:func:`wal_budget`), and the WAL is truncated back to its budget whenever a
        commit took it past, so between commits the two stay within the limit.
        """
        with self._lock:
            return self._pages_bytes() + self._files.wal_bytes()

    def _pages_bytes(self) -> int:
        # Inside a write transaction these count its pages too. Two PRAGMAs: a few microseconds.
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * self._page_size

    def _pages_limit(self) -> int:
        """What the database pages may take of ``journal.max_bytes``: the rest is the WAL's."""
        return self._journal.max_bytes - wal_budget(self._journal.max_bytes)

    def _bound_wal(self) -> None:
        """After a commit: a WAL past its budget is checkpointed and restarted, so the next
        commit writes it from the start and truncates it to half the budget (not to nothing:
        the blocks it keeps are what a commit on a full disk can still use).

        Never raises: the commit is done, and a failed checkpoint (a reader holding the WAL, a
        full disk) is tried again after a later commit.
        """
        with contextlib.suppress(sqlite3.Error, OSError):
            if self._files.wal_bytes() > wal_budget(self._journal.max_bytes):
                self._conn.execute("PRAGMA wal_checkpoint(RESTART)")

    def _publish(self, counts: StoreCounts) -> None:
        with self._stats_lock:
            self._counts.merge(counts)

    # -- integrity -------------------------------------------------------------------------

    @property
    def problem(self) -> JournalProblem | None:
        """Why the journal refuses new messages (found by :meth:`check_integrity`), or None."""
        return self._problem

    def check_integrity(self, *, deep: bool = False) -> JournalProblem | None:
        """Whether the open journal can still be trusted with new messages; the problem, or None.

        Always compares the files with the ones opened (deleted, replaced, truncated: two
        ``stat`` calls); ``deep`` also runs ``PRAGMA quick_check`` (reads every page). A problem
        once found stays until the process ends: :meth:`ingest` refuses every batch from then on,
        so nothing more is acknowledged. The health check calls this.
        """
        with self._lock:
            return self._check_integrity_locked(deep=deep)

    def _quick_check(self) -> str:
        """``PRAGMA quick_check`` on what is on disk: from a connection of its own, since ours
        would answer from the pages it caches."""
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            return str(exc)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            rows = conn.execute("PRAGMA quick_check(1)").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        finally:
            conn.close()
        return str(rows[0][0]) if rows else "no answer"

    def _check_integrity_locked(self, *, deep: bool) -> JournalProblem | None:
        if self._problem is not None:
            return self._problem
        problem = self._files.problem()
        if problem is None and deep:
            self._next_quick_check = self._clock() + QUICK_CHECK_INTERVAL
            verdict = self._quick_check()
            if verdict != "ok":
                problem = JournalProblem("corrupt", f"journal {self.path} is damaged: {verdict}")
        if problem is not None:
            self._problem = problem
            log.error("%s", problem)
        return problem

    # -- subscriptions ---------------------------------------------------------------------

    def _load_subscriptions(self) -> dict[str, SubscriptionRecord]:
        rows = self._conn.execute(
            "SELECT route, subscription_url, push_url, set_url, private_key_der, auth_secret,"
            " created_at, distributed_at FROM subscriptions ORDER BY route"
        ).fetchall()
        return {
            r[0]: SubscriptionRecord(r[0], r[1], r[2], r[3], bytes(r[4]), bytes(r[5]), r[6], r[7])
            for r in rows
        }

    def subscriptions(self) -> list[SubscriptionRecord]:
        """Every stored subscription, by route name (from memory: never waits for a commit)."""
        with self._stats_lock:
            return sorted(self._subscriptions.values(), key=lambda r: r.route)

    def save_subscription(self, record: SubscriptionRecord) -> None:
        """Insert or replace the subscription of ``record.route``."""
        with self._lock, self._transaction():
            self._conn.execute(
                "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.route,
                    record.subscription_url,
                    record.push_url,
                    record.set_url,
                    record.private_key_der,
                    record.auth_secret,
                    record.created_at,
                    record.distributed_at,
                ),
            )
        with self._stats_lock:
            self._subscriptions[record.route] = record

    def upstream_value(self, key: str) -> str | None:
        """A remembered upstream fact (from memory): ``service``, ``autopush.uaid``, ..."""
        with self._stats_lock:
            return self._upstream_state.get(key)

    def set_upstream_values(self, values: dict[str, str | None]) -> None:
        """Remember (or, with None, forget) upstream facts, in one transaction."""
        with self._lock, self._transaction():
            for key, value in values.items():
                if value is None:
                    self._conn.execute("DELETE FROM upstream_state WHERE key = ?", (key,))
                else:
                    self._conn.execute(
                        "INSERT OR REPLACE INTO upstream_state VALUES (?, ?)", (key, value)
                    )
        with self._stats_lock:
            for key, value in values.items():
                if value is None:
                    self._upstream_state.pop(key, None)
                else:
                    self._upstream_state[key] = value

    def delete_subscription(self, route: str) -> None:
        """Forget a route's subscription (no error when there is none)."""
        with self._lock, self._transaction():
            self._conn.execute("DELETE FROM subscriptions WHERE route = ?", (route,))
        with self._stats_lock:
            self._subscriptions.pop(route, None)

    # -- ingest ----------------------------------------------------------------------------

    def ingest(
        self, batch: Sequence[policy.Admission], *, acked: Sequence[str] = ()
    ) -> list[IngestResult]:
        """Carry out a batch of admissions in ONE transaction (group commit); say which may be
        acknowledged now.

        ``acked`` are push message URLs whose DELETE succeeded since the last call: recorded in
        the same transaction (as :meth:`mark_acked` would), so one fsync covers both. Raises
        :class:`StoreError` (nothing journalled, nothing to acknowledge) once the journal's files
        have a problem (see :meth:`check_integrity`).
        """
        counts = StoreCounts()
        with self._lock:
            problem = self._check_integrity_locked(deep=False)
            if problem is not None:
                raise StoreError(str(problem))
            now = self._clock()
            self._remembered = []
            self._salted = []
            space = _BatchSpace(self._pages_bytes())
            try:
                with self._transaction():
                    self._delete_owed(acked)
                    results = [
                        self._ingest_one(admission, now, counts, space) for admission in batch
                    ]
            except BaseException:
                # Rolled back: forget what it remembered too.
                self._seen.difference_update(self._remembered)
                self._salts.forget_newest(self._salted)
                raise
        self._publish(counts)
        return results

    def _remember(self, incoming: Incoming, now: float) -> None:
        """Record a push message URL: appended on disk, indexed in memory."""
        url = incoming.push_message_url
        self._conn.execute(
            "INSERT INTO dedupe_log (url, seen_at, forget_at) VALUES (?, ?, ?)",
            (url, now, policy.dedupe_horizon(incoming.headers, now)),
        )
        key = _url_key(url)
        self._seen.add(key)
        self._remembered.append(key)

    def _remember_salt(self, key: int, now: float) -> None:
        self._conn.execute("INSERT INTO salts (digest, seen_at) VALUES (?, ?)", (key, now))
        self._salts.add(key)
        self._salted.append(key)

    def _owe_ack(self, url: str) -> None:
        self._conn.execute("INSERT OR IGNORE INTO acks VALUES (?, 'owed')", (url,))

    def _dead_letter(self, incoming: Incoming, reason: str, route: str | None, now: float) -> None:
        self._conn.execute(
            "INSERT INTO dead_letters (reason, route, target, push_message_url, headers,"
            " raw_body, plaintext, received_at, dead_at, expires_at)"
            " VALUES (?, ?, NULL, ?, ?, ?, ?, ?, ?, NULL)",
            (
                reason,
                route,
                incoming.push_message_url,
                json.dumps([list(h) for h in incoming.headers]),
                incoming.raw_body,
                incoming.plaintext,
                incoming.received_at,
                now,
            ),
        )

    def _poison(
        self, incoming: Incoming, reason: str, route: str | None, now: float, counts: StoreCounts
    ) -> IngestResult:
        """A dead letter: kept for inspection, remembered, acknowledged."""
        url = incoming.push_message_url
        self._dead_letter(incoming, reason, route, now)
        self._remember(incoming, now)
        self._owe_ack(url)
        counts.dead_letters[reason] = counts.dead_letters.get(reason, 0) + 1
        return IngestResult(url, "dead_lettered", None, ack_now=True)

    def _ingest_one(
        self,
        admission: policy.Admission,
        now: float,
        counts: StoreCounts,
        space: _BatchSpace,
    ) -> IngestResult:
        incoming, disposition = admission.incoming, admission.disposition
        url = incoming.push_message_url
        if _url_key(url) in self._seen:
            counts.duplicates += 1
            row = self._conn.execute("SELECT state FROM acks WHERE url = ?", (url,)).fetchone()
            if row and row[0] == "held":
                return IngestResult(url, "duplicate", None, ack_now=False)
            self._owe_ack(url)  # the service did not see our DELETE: owe it again
            return IngestResult(url, "duplicate", None, ack_now=True)
        if isinstance(disposition, policy.Redelivered):
            # The agent believed it committed, but nothing here remembers it (refused by a full
            # queue, say): not ours, so not acknowledged; the service delivers it again.
            return IngestResult(url, "refused", None, ack_now=False)

        if isinstance(disposition, policy.DeadLetter):
            return self._poison(incoming, disposition.reason, disposition.route, now, counts)

        if isinstance(disposition, policy.Expired):
            self._remember(incoming, now)
            self._owe_ack(url)
            counts.expired[disposition.route] = counts.expired.get(disposition.route, 0) + 1
            return IngestResult(url, "expired", None, ack_now=True)

        route = disposition.route
        assert incoming.plaintext is not None  # the policy journals only what was decrypted
        salt = policy.record_salt(incoming.raw_body)
        salt_digest = None if salt is None else salt_key(route.name, salt)
        if salt_digest is not None and salt_digest in self._salts:
            # The same ciphertext again under a new push message URL: a replay. A duplicate,
            # not poison: acknowledged, remembered, counted, never delivered.
            self._remember(incoming, now)
            self._owe_ack(url)
            counts.replays[route.name] = counts.replays.get(route.name, 0) + 1
            return IngestResult(url, "replayed", None, ack_now=True)

        size = len(incoming.plaintext)
        room = self._make_room(route, size, counts, space)
        if isinstance(room, policy.NeverFits):
            return self._poison(incoming, room.reason, route.name, now, counts)
        if isinstance(room, policy.Refuse):
            # Not journalled, not remembered, not acknowledged: the push service keeps it and
            # redelivers it (backpressure); a later copy finds room once deliveries made some.
            key = (route.name, room.reason)
            counts.refused[key] = counts.refused.get(key, 0) + 1
            return IngestResult(url, "refused", None, ack_now=False)

        message_id = self._insert_message(
            route,
            url,
            incoming.plaintext,
            incoming.received_at,
            disposition.deadline,
            None,
            ack_after_delivery=disposition.ack_after_delivery,
        )
        space.add(policy.disk_cost(size))
        self._remember(incoming, now)
        if salt_digest is not None:
            self._remember_salt(salt_digest, now)
        counts.journalled[route.name] = counts.journalled.get(route.name, 0) + 1
        if disposition.ack_after_delivery:
            self._conn.execute("INSERT OR REPLACE INTO acks VALUES (?, 'held')", (url,))
            return IngestResult(url, "journalled", message_id, ack_now=False)
        self._owe_ack(url)
        return IngestResult(url, "journalled", message_id, ack_now=True)

    def _insert_message(
        self,
        route: RouteConfig,
        url: str,
        body: bytes,
        received_at: float,
        expires_at: float | None,
        only_target: str | None,
        *,
        ack_after_delivery: bool,
    ) -> str:
        targets = [target_key(i, t) for i, t in enumerate(route.deliver)]
        if only_target is not None and only_target in targets:
            targets = [only_target]
        if not targets:
            return ""  # a route that delivers nowhere: nothing to keep
        cursor = self._conn.execute(
            "INSERT INTO messages (route, push_message_url, body, received_at, expires_at,"
            " ack_policy) VALUES (?, ?, ?, ?, ?, ?)",
            (route.name, url, body, received_at, expires_at, _ACK_POLICY[ack_after_delivery]),
        )
        message_id = cursor.lastrowid
        self._conn.executemany(
            "INSERT INTO deliveries (route, target, message_id) VALUES (?, ?, ?)",
            [(route.name, key, message_id) for key in targets],
        )
        with self._stats_lock:
            usage = self._usage_of(route.name)
            usage.messages += 1
            usage.bytes += len(body)
            usage.last_received_at = received_at
        return str(message_id)

    def _make_room(
        self, route: RouteConfig, size: int, counts: StoreCounts, space: _BatchSpace
    ) -> policy.RoomDecision:
        """Carry out :func:`gateway.policy.room_for`: drop the route's oldest while it says so."""
        limit = self._pages_limit()
        while True:
            usage = self._usage_of(route.name)
            decision = policy.room_for(
                route,
                QueueUsage(usage.messages, usage.bytes, usage.last_received_at),
                size,
                policy.JournalSpace(space.used, limit),
            )
            if isinstance(decision, policy.Admit | policy.NeverFits):
                return decision
            if space.added:
                # Full by the estimate: measure what the pages really take before deciding.
                space.measured, space.added = self._pages_bytes(), 0
                continue
            if isinstance(decision, policy.Refuse):
                return decision
            row = self._conn.execute(
                "SELECT id FROM messages WHERE route = ? ORDER BY id LIMIT 1", (route.name,)
            ).fetchone()
            if row is None:
                return policy.Refuse(decision.reason)
            self._remove_message(int(row[0]), counts)
            # Deleting rows frees whole pages only now and then: measure again.
            space.measured = self._pages_bytes()
            key = (route.name, decision.reason)
            counts.dropped[key] = counts.dropped.get(key, 0) + 1

    def _remove_message(self, message_id: int, counts: StoreCounts) -> None:
        """Delete a message and what is left of its deliveries; release a held ack."""
        row = self._conn.execute(
            "SELECT route, push_message_url, length(body), ack_policy FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return
        route, url, size, policy = row
        self._conn.execute("DELETE FROM deliveries WHERE message_id = ?", (message_id,))
        self._conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        with self._stats_lock:
            usage = self._usage_of(route)
            usage.messages -= 1
            usage.bytes -= int(size)
        if policy == "delivered":
            cursor = self._conn.execute(
                "UPDATE acks SET state = 'owed' WHERE url = ? AND state = 'held'", (url,)
            )
            if cursor.rowcount:
                counts.released_acks.append(url)

    # -- acknowledgements ------------------------------------------------------------------

    def mark_acked(self, push_message_urls: Sequence[str]) -> None:
        """The upstream DELETE of these succeeded (404/410 included): they are owed no more."""
        if not push_message_urls:
            return
        with self._lock, self._transaction():
            self._delete_owed(push_message_urls)

    def _delete_owed(self, push_message_urls: Sequence[str]) -> None:
        if push_message_urls:
            self._conn.executemany(
                "DELETE FROM acks WHERE url = ? AND state = 'owed'",
                [(u,) for u in push_message_urls],
            )

    def pending_acks(self) -> list[str]:
        """Acks owed but not yet sent (after a restart the agent sends them)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT url FROM acks WHERE state = 'owed' ORDER BY url"
            ).fetchall()
        return [r[0] for r in rows]

    # -- deliveries (the router's side) ----------------------------------------------------

    def pending_deliveries(
        self, route: str, target: str, *, after_id: str | None = None, limit: int = 64
    ) -> list[PendingDelivery]:
        """The next deliveries owed to one target, oldest first, after message ``after_id``."""
        after = int(after_id) if after_id else 0
        with self._lock:
            rows = self._conn.execute(
                "SELECT m.id, m.route, m.body, m.received_at, m.expires_at, m.push_message_url,"
                " d.attempts, d.next_attempt_at FROM deliveries d JOIN messages m"
                " ON m.id = d.message_id WHERE d.route = ? AND d.target = ? AND d.message_id > ?"
                " ORDER BY d.message_id LIMIT ?",
                (route, target, after, limit),
            ).fetchall()
        return [
            PendingDelivery(
                Message(str(r[0]), r[1], bytes(r[2]), r[3], r[4]), r[5], int(r[6]), float(r[7])
            )
            for r in rows
        ]

    def schedule_retry(
        self,
        message_id: str,
        route: str,
        target: str,
        attempts: int,
        next_attempt_at: float,
        error: str,
    ) -> None:
        """Persist a failed attempt so the retry schedule survives a restart."""
        with self._lock, self._transaction():
            self._conn.execute(
                "UPDATE deliveries SET attempts = ?, next_attempt_at = ?, last_error = ?"
                " WHERE route = ? AND target = ? AND message_id = ?",
                (attempts, next_attempt_at, error, route, target, int(message_id)),
            )

    def resolve(self, resolutions: Sequence[Resolution]) -> list[str]:
        """Finish deliveries in one transaction; prune messages with none left.

        Rejected deliveries become dead letters. Returns the push message URLs of
        ``delivered``-policy messages whose every target is now done: their ack is owed.
        """
        counts = StoreCounts()
        with self._lock:
            now = self._clock()
            with self._transaction():
                touched: dict[int, bool] = {}  # message id -> expired for some target
                for r in resolutions:
                    mid = int(r.message_id)
                    if r.end == "rejected":
                        self._dead_letter_delivery(mid, r, now, counts)
                    cursor = self._conn.execute(
                        "DELETE FROM deliveries WHERE route = ? AND target = ? AND message_id = ?",
                        (r.route, r.target, mid),
                    )
                    if cursor.rowcount:
                        touched[mid] = touched.get(mid, False) or r.end == "expired"
                for mid, expired in touched.items():
                    left = self._conn.execute(
                        "SELECT 1 FROM deliveries WHERE message_id = ? LIMIT 1", (mid,)
                    ).fetchone()
                    if left:
                        continue
                    if expired:
                        route = self._conn.execute(
                            "SELECT route FROM messages WHERE id = ?", (mid,)
                        ).fetchone()
                        if route:
                            counts.expired[route[0]] = counts.expired.get(route[0], 0) + 1
                    self._remove_message(mid, counts)
        released = counts.released_acks
        counts.released_acks = []
        self._publish(counts)
        return released

    def _dead_letter_delivery(
        self, message_id: int, r: Resolution, now: float, counts: StoreCounts
    ) -> None:
        row = self._conn.execute(
            "SELECT push_message_url, body, received_at, expires_at FROM messages WHERE id = ?",
            (message_id,),
        ).fetchone()
        if row is None:
            return
        reason = r.reason or "rejected"
        self._conn.execute(
            "INSERT INTO dead_letters (reason, route, target, push_message_url, headers, raw_body,"
            " plaintext, received_at, dead_at, expires_at) VALUES (?, ?, ?, ?, '[]', x'', ?, ?,"
            " ?, ?)",
            (reason, r.route, r.target, row[0], row[1], row[2], now, row[3]),
        )
        counts.dead_letters[reason] = counts.dead_letters.get(reason, 0) + 1

    # -- statistics and housekeeping -------------------------------------------------------

    def take_counts(self) -> StoreCounts:
        """What happened since the last call (never blocks on a commit)."""
        with self._stats_lock:
            counts, self._counts = self._counts, StoreCounts()
        return counts

    def queue_usage(self) -> dict[str, QueueUsage]:
        """Undelivered messages and bytes per route (never blocks on a commit)."""
        with self._stats_lock:
            return {
                route: QueueUsage(u.messages, u.bytes, u.last_received_at)
                for route, u in self._usage.items()
            }

    def prune(self) -> int:
        """Housekeeping: forget dedupe records past their horizon (at the latest
        ``journal.dedupe_retention``) and record salts past the retention or the newest
        :data:`~gateway.salt_memory.MAX_SALTS`; check the journal (``quick_check`` at most every
        :data:`QUICK_CHECK_INTERVAL`). Returns how many dedupe records went."""
        with self._lock:
            now = self._clock()
            self._check_integrity_locked(deep=now >= self._next_quick_check)
            # A record whose ack is still owed stays (its message can still come back).
            old = self._conn.execute(
                "SELECT id, url FROM dedupe_log WHERE coalesce(forget_at, seen_at + ?) < ?"
                " AND url NOT IN (SELECT url FROM acks) ORDER BY id",
                (self._journal.dedupe_retention, now),
            ).fetchall()
            newest = self._conn.execute("SELECT max(id) FROM salts").fetchone()[0]
            stale_salts = (
                newest is not None
                and self._conn.execute(
                    "SELECT 1 FROM salts WHERE id <= ? OR seen_at < ? LIMIT 1",
                    (int(newest) - MAX_SALTS, now - self._journal.dedupe_retention),
                ).fetchone()
            )
            if not old and not stale_salts:
                return 0
            with self._transaction():
                self._conn.executemany(
                    "DELETE FROM dedupe_log WHERE id = ?", [(row[0],) for row in old]
                )
                if stale_salts:
                    # Rowid order is arrival order: the stale ones are a prefix.
                    self._conn.execute(
                        "DELETE FROM salts WHERE id <= ? OR seen_at < ?",
                        (int(newest) - MAX_SALTS, now - self._journal.dedupe_retention),
                    )
            self._seen.difference_update(_url_key(row[1]) for row in old)
        return len(old)

    @property
    def dedupe_retention(self) -> float:
        """Seconds a push message URL is remembered (``journal.dedupe_retention``)."""
        return self._journal.dedupe_retention

    def dedupe_records(self) -> int:
        """How many push message URLs are remembered."""
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM dedupe_log").fetchone()[0])

    # -- dead letters ----------------------------------------------------------------------

    _DEAD_COLUMNS = (
        "id, reason, route, target, push_message_url, headers, raw_body, plaintext, received_at,"
        " dead_at, expires_at"
    )

    @staticmethod
    def _dead_from_row(r: Any) -> DeadLetter:
        headers = tuple((str(k), str(v)) for k, v in json.loads(str(r[5])))
        plaintext = r[7]
        return DeadLetter(
            id=int(r[0]),
            reason=str(r[1]),
            route=None if r[2] is None else str(r[2]),
            target=None if r[3] is None else str(r[3]),
            push_message_url=None if r[4] is None else str(r[4]),
            headers=headers,
            raw_body=bytes(r[6]),
            plaintext=None if plaintext is None else bytes(plaintext),
            received_at=float(r[8]),
            dead_at=float(r[9]),
            expires_at=None if r[10] is None else float(r[10]),
        )

    def dead_letters(self) -> list[DeadLetter]:
        """All dead letters, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                f"SELECT {self._DEAD_COLUMNS} FROM dead_letters ORDER BY id"
            ).fetchall()
        return [self._dead_from_row(r) for r in rows]

    def dead_letter(self, dead_id: int) -> DeadLetter | None:
        """One dead letter, or None."""
        with self._lock:
            row = self._conn.execute(
                f"SELECT {self._DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (dead_id,)
            ).fetchone()
        return None if row is None else self._dead_from_row(row)

    def replay_dead_letter(self, dead_id: int, routes: RouteTable) -> str:
        """Put a dead letter back into its route's journal; return the new message id.

        It goes to the target that rejected it when that target still exists, else to every
        target of the route; its deadline is :func:`gateway.policy.replay_deadline` and its
        upstream ack is not held (it was sent when it died). Raises :class:`StoreError` when it
        cannot be replayed.
        """
        counts = StoreCounts()
        with self._lock:
            now = self._clock()
            space = _BatchSpace(self._pages_bytes())
            with self._transaction():
                row = self._conn.execute(
                    f"SELECT {self._DEAD_COLUMNS} FROM dead_letters WHERE id = ?", (dead_id,)
                ).fetchone()
                if row is None:
                    raise StoreError(f"no dead letter {dead_id}")
                dead = self._dead_from_row(row)
                route = routes.get(dead.route or "")
                if dead.plaintext is None:
                    raise StoreError(
                        f"dead letter {dead_id} ({dead.reason}) has no plaintext to deliver"
                    )
                if route is None:
                    raise StoreError(
                        f"dead letter {dead_id}: route {dead.route!r} is not configured"
                    )
                room = self._make_room(route, len(dead.plaintext), counts, space)
                if isinstance(room, policy.NeverFits):
                    raise StoreError(
                        f"dead letter {dead_id} ({len(dead.plaintext)} bytes) is larger than "
                        f"route {route.name}'s queue or the journal can hold: not replayed"
                    )
                if isinstance(room, policy.Refuse):
                    what = "queue" if room.reason == "queue_full" else "journal"
                    raise StoreError(
                        f"route {route.name}: the {what} is full, not replayed (try again once "
                        "the gateway has delivered some)"
                    )
                message_id = self._insert_message(
                    route,
                    dead.push_message_url or f"dead-letter:{dead_id}",
                    dead.plaintext,
                    now,
                    policy.replay_deadline(route, now),
                    dead.target,
                    ack_after_delivery=False,
                )
                self._conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
                counts.journalled[route.name] = counts.journalled.get(route.name, 0) + 1
        self._publish(counts)
        return message_id

    def purge_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Delete the given dead letters (all when ``ids`` is None); return how many."""
        with self._lock, self._transaction():
            if ids is None:
                cursor = self._conn.execute("DELETE FROM dead_letters")
                return cursor.rowcount
            total = 0
            for dead_id in ids:
                total += self._conn.execute(
                    "DELETE FROM dead_letters WHERE id = ?", (dead_id,)
                ).rowcount
            return total
