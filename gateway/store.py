"""The durable store: subscriptions, the message journal, dedupe records, acks owed, dead letters.

One SQLite file in the state directory (WAL, 1 KiB pages, mode 0600). Every method is
synchronous and thread-safe (one connection behind a lock); async callers use
``trio.to_thread.run_sync``. The store carries out what :mod:`gateway.policy` decides; policy
about *when* to deliver or retry lives in the router.

Lifecycle of a message, one row of ``journal``: :meth:`Store.ingest` writes it with its route's
targets and the state of its acknowledgement (one transaction per batch: group commit, fsynced
— the one durable write a message costs); the router reads a target's queue with
:meth:`Store.pending_deliveries`, reports retries with :meth:`Store.schedule_retry` and finished
deliveries with :meth:`Store.resolve`; once no target is left its body goes and the row stays as
the dedupe record until the service confirmed the acknowledgement (:meth:`Store.mark_acked`) and
:func:`gateway.policy.dedupe_forget_at` passed (:meth:`Store.prune`). Everything after the
ingest is written without an fsync of its own (``synchronous=NORMAL`` for that commit): a power
loss can only make it happen again, and :meth:`Store.resolve` fsyncs before more than
:data:`gateway.policy.REPEAT_WINDOW` confirmed deliveries would be at stake.

The journal's files are watched (:mod:`gateway.journal_files`): deleted, replaced or truncated
under the running gateway, or failing ``PRAGMA quick_check``, the store refuses every further
ingest (so nothing more is acknowledged) and :meth:`Store.check_integrity` says why. A start that
finds no journal where one was created (``journal.created``, :mod:`gateway.statedir`) refuses to
make a new one unless ``reset`` is given.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from adapters.base import Message
from fieldgate_common.logs import get_logger
from gateway import policy, statedir
from gateway.config import JournalConfig, RouteConfig
from gateway.digest_table import DigestTable, digest64
from gateway.journal_files import JournalFiles, disk_size
from gateway.routes import RouteTable
from gateway.salt_memory import MAX_SALTS, RecentSalts, salt_key
from gateway.store_schema import migrate, version
from gateway.store_types import (
    CarriedAcks,
    CarriedResolutions,
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
    target_keys,
)

__all__ = [
    "CarriedAcks",
    "CarriedResolutions",
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
    "target_keys",
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
# A burst (a backlog drained) leaves the WAL holding pages that the commit crossing the
# autocheckpoint threshold copies back into the database: the next message's commit, megabytes
# onto an SD card on its critical path. After this many row changes since the last checkpoint,
# the journal writer checkpoints in the first quiet moment instead (Store.checkpoint); a trickle
# of messages (~3 row changes each) gets there once in ~700 messages (each checkpoint rewrites
# the pages touched since once more: a checkpoint per message would double the field's writes).
IDLE_CHECKPOINT_CHANGES = 2000
# The filesystem room the journal leaves free besides its WAL's budget and a checkpoint's growth:
# a full disk refuses new messages (left with the push service) before it stops the journal from
# recording deliveries, pruning and checkpointing -- which are what make room again. Enough for
# dead letters of rejected deliveries and the state directory's small files.
DISK_RESERVE = 256 * 1024
# A commit at a field rate writes the pages it dirtied, whole, to the WAL (and a checkpoint writes
# them again): the newest journal row's leaf, sometimes its parent. A message's row is a few
# hundred bytes, so 1 KiB pages write a quarter of SQLite's default 4 KiB for the same commit;
# a larger body spills into overflow pages of its own either way. Measured in bench e2e.
PAGE_SIZE = 1024
# SQLite's page cache, in KiB (its default is 2,000). A commit touches the newest leaf and its
# parents, a delivery re-reads the rows just committed, and the prune walks the whole table once
# (more than any cache this size holds): the hot pages fit in far less, and a miss is one
# ``pread`` from the kernel's page cache. Resident memory on a small board matters more.
PAGE_CACHE_KIB = 512
# A delivered message's row stays as its dedupe record, without its body. SQLite rebalances a
# b-tree page only when a row leaves it, so a body set to NULL in place leaves the small record
# alone in its page unless the next inserts fill that page: true of the journal's newest rows
# (at field rates a message is delivered before the next arrives), which are updated in place
# (one page written). An older row (a backlog drained) is deleted and inserted again, which
# rebalances: measured, 8,000 records of 470-byte messages took 8 MiB updated in place, 0.85 MiB
# so (the chaos run's 8 MiB state partition filled); deleting the newest rows too would write
# ~3 KB more per message at one message at a time (the balance rewrites siblings and parent).
# A body under a third of a page is set to NULL in place wherever it is: its page keeps more than
# a third of its bytes (SQLite's own underfull mark), and re-inserting every row of a backlog of
# small messages wrote 27% more (bench router, batches of 50: 2,740 B per message vs 2,150 B).
IN_PLACE_ROWS = 2
# Dedupe records a full journal forgets at a time before it drops or refuses messages: enough to
# free a few pages at once.
FORGET_FOR_ROOM_BATCH = 256
# Dedupe records a prune reads at a time. Prunes are 30 s apart when busy (gateway.router), so at a
# few hundred messages a second one forgets tens of thousands: read all at once, their rows'
# Python objects (a few MB) raised the allocator's high-water mark for good.
PRUNE_BATCH = 1_000
# PRAGMA quick_check reads every page (milliseconds for a journal of undelivered messages, seconds
# for a full 256 MiB one on an SD card, holding the store's lock): at most this often.
QUICK_CHECK_INTERVAL = 6 * 3600.0

log = get_logger("store")


@dataclass
class _Usage:
    messages: int = 0
    bytes: int = 0
    last_received_at: float | None = None


@dataclass
class _BatchSpace:
    """The database pages in use and the disk's room as a batch is carried out: measured (at
    its start, and again near a limit), less an estimate of what was journalled since."""

    measured: int
    disk_room: int | None  # see policy.JournalSpace
    added: int = 0

    @property
    def used(self) -> int:
        return self.measured + self.added

    @property
    def disk_left(self) -> int | None:
        return None if self.disk_room is None else self.disk_room - self.added

    def add(self, cost: int) -> None:
        self.added += cost

    def remeasured(self, other: _BatchSpace) -> None:
        self.measured, self.disk_room, self.added = other.measured, other.disk_room, 0


def wal_budget(max_bytes: int, disk_size: int | None = None) -> int:
    """The bytes of ``journal.max_bytes`` the WAL may take before it is checkpointed: a share
    of the limit, or of the filesystem when that is smaller (a WAL sized for 256 MiB would
    take half of a small partition)."""
    capacity = max_bytes if disk_size is None else min(max_bytes, disk_size)
    return max(WAL_BUDGET_MIN, min(WAL_BUDGET_MAX, capacity // WAL_SHARE))


def _delivered(resolutions: Sequence[Resolution]) -> int:
    """How many of ``resolutions`` are confirmed deliveries (what a power loss would repeat)."""
    return sum(1 for r in resolutions if r.end == "delivered")


def _stored_salts(conn: sqlite3.Connection) -> list[int]:
    """The newest MAX_SALTS salt digests on disk, oldest first: those of forgotten rows
    (``salts``, in the order they were forgotten), then those of the journal's rows (by id)."""
    in_rows = conn.execute(
        "SELECT salt FROM journal WHERE salt IS NOT NULL ORDER BY id DESC LIMIT ?", (MAX_SALTS,)
    ).fetchall()
    moved = conn.execute(
        "SELECT digest FROM salts ORDER BY id DESC LIMIT ?", (MAX_SALTS - len(in_rows),)
    ).fetchall()
    return [int(row[0]) for row in reversed(moved)] + [int(row[0]) for row in reversed(in_rows)]


def _url_key(url: str) -> int:
    """A push message URL's 64-bit digest (the in-memory dedupe index holds these)."""
    return digest64(url.encode())


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
        *,
        wal_budget_bytes: int,
    ) -> None:
        self._conn = conn
        self.path = path
        self._journal = journal
        self._wal_budget = wal_budget_bytes  # wal_budget(), at open
        self._clock = clock
        self._lock = threading.Lock()
        # Counts and queue usage have their own lock, held only for dict updates, so the trio
        # thread can read them without waiting for a commit's fsync.
        self._stats_lock = threading.Lock()
        self._counts = StoreCounts()
        self._usage: dict[str, _Usage] = {}
        # Messages whose every delivery finished, not recorded yet (id -> route, body size):
        # queue_usage leaves them out, as it will once they are (note_finished). Those a
        # transaction took out are put back if it rolls back.
        self._finished: dict[int, tuple[str, int]] = {}
        self._finished_taken: list[tuple[int, tuple[str, int]]] = []
        self.transactions = 0  # committed write transactions (group commit is observable)
        self._changes = 0  # rows changed by this connection, after the last commit
        self._changes_at_checkpoint = 0
        self._load_usage()
        # Subscriptions are few and read often (the status page, every ingest): served from
        # memory under the stats lock, so a reader never waits for a commit's fsync.
        self._subscriptions = self._load_subscriptions()
        self._upstream_state: dict[str, str] = dict(
            conn.execute("SELECT key, value FROM upstream_state").fetchall()
        )
        # The dedupe index: the 64-bit digest of each remembered key -> its journal row. The
        # journal holds what is undelivered and, for DEDUPE_GRACE after each confirmed
        # acknowledgement, what was delivered: memory follows the backlog and the rate, not
        # the rate times a TTL. Two keys share a digest with probability ~n^2 / 2^65. Flat
        # arrays (gateway.digest_table): ~30-50 bytes an entry, where a dict spends ~140.
        self._index = DigestTable(
            (_url_key(row[1]), int(row[0]))
            for row in conn.execute("SELECT id, key FROM journal WHERE key != ''")
        )
        # Digests a transaction added, and (digest, row) pairs it removed, flat: undone by a
        # rollback (a prune may remove tens of thousands).
        self._remembered = array("q")
        self._forgotten = array("q")
        self._next_id = int(conn.execute("SELECT coalesce(max(id), 0) FROM journal").fetchone()[0])
        # Per route, an id below which the route queues nothing (a row's body never comes back
        # and new rows get larger ids): where drop-oldest starts looking, instead of walking
        # past every dedupe record from the start of the journal for each message it drops;
        # past a message it dropped (under the stats lock), so that a note that the message
        # finished, coming after, is known to be late (note_finished).
        self._queued_from: dict[str, int] = {}
        # Confirmed deliveries written since the last commit that was made durable (see
        # resolve): a power loss may repeat at most these.
        self._unsynced = 0
        self._salts = RecentSalts(_stored_salts(conn))
        self._salted: list[int] = []
        self._files = JournalFiles(path)
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._problem: JournalProblem | None = None
        # Set when a message was refused for want of disk space, cleared when one fits again.
        self._disk_full = False
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
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            marker = None
            if version(conn) == 0:
                marker = statedir.journal_marker(directory)
                if marker is not None and not reset:
                    raise _lost_journal(db, marker, "is empty")
                if not create:
                    raise JournalMissing(f"the journal {db} is empty (the gateway has not run)")
                # Before the first write: a new journal gets small pages (an existing one keeps
                # its own).
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"journal {db}: the filesystem does not support WAL ({mode})")
            # FULL: the WAL is fsynced at every commit. An acknowledged message must be on disk:
            # after the DELETE the push service forgets it, so NORMAL (which may lose the last
            # commits on power loss) would lose messages the sender was told were received.
            conn.execute("PRAGMA synchronous = FULL")
            budget = wal_budget(journal.max_bytes, disk_size(directory))
            half = budget // 2
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
        store = cls(conn, db, journal, clock, wal_budget_bytes=budget)
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
    def _transaction(self, *, durable: bool = True, delivered: int = 0) -> Iterator[None]:
        """One write transaction. ``durable``: fsynced at its commit (with everything written
        before it); otherwise written to the WAL only, and made durable by the next durable
        commit (what a power loss in between may cost is the caller's to bound: ``delivered``
        confirmed deliveries it records join those a power loss may repeat, see
        _sync_needed)."""
        if not durable:
            # Set outside the transaction (SQLite ignores it inside one); no I/O of its own.
            self._conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with self._write():
                yield
        finally:
            if not durable:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("PRAGMA synchronous = FULL")
        self._unsynced = 0 if durable else self._unsynced + delivered

    @contextmanager
    def _write(self) -> Iterator[None]:
        self._conn.execute("BEGIN IMMEDIATE")
        self._finished_taken = []
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
            with self._stats_lock:
                self._finished.update(self._finished_taken)
            raise
        self.transactions += 1
        self._changes = self._conn.total_changes
        self._bound_wal()
        self._files.note_size()

    def _load_usage(self) -> None:
        rows = self._conn.execute(
            "SELECT route, count(*), coalesce(sum(length(body)), 0), max(received_at) "
            "FROM journal WHERE body IS NOT NULL GROUP BY route"
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

    def _page_counts(self) -> tuple[int, int]:
        """Pages in the database and free among them. Inside a write transaction these count
        its pages too. Two PRAGMAs: a few microseconds."""
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return pages, free

    def _pages_bytes(self) -> int:
        pages, free = self._page_counts()
        return (pages - free) * self._page_size

    def _pages_limit(self) -> int:
        """What the database pages may take of ``journal.max_bytes``: the rest is the WAL's."""
        return self._journal.max_bytes - self._wal_budget

    def _measure_space(self) -> _BatchSpace:
        """The pages in use, and what the disk can still give (see policy.JournalSpace)."""
        pages, free = self._page_counts()
        in_use = (pages - free) * self._page_size
        disk_free = self._files.disk_free()
        if disk_free is None:
            return _BatchSpace(in_use, None)
        # Free pages are room inside the file. A checkpoint writes the pages the WAL added into
        # the database file, growing it; the WAL itself may grow to its budget before it is
        # restarted.
        growth = max(0, pages * self._page_size - self._files.db_bytes())
        wal_room = max(0, self._wal_budget - self._files.wal_bytes())
        room = disk_free + free * self._page_size - DISK_RESERVE - growth - wal_room
        return _BatchSpace(in_use, room)

    def _bound_wal(self) -> None:
        """After a commit: a WAL past its budget is checkpointed and restarted, so the next
        commit writes it from the start and truncates it to half the budget (not to nothing:
        the blocks it keeps are what a commit on a full disk can still use).

        Never raises: the commit is done, and a failed checkpoint (a reader holding the WAL, a
        full disk) is tried again after a later commit.
        """
        with contextlib.suppress(sqlite3.Error, OSError):
            if self._files.wal_bytes() > self._wal_budget:
                self._conn.execute("PRAGMA wal_checkpoint(RESTART)")

    @property
    def checkpoint_due(self) -> bool:
        """Enough changed since the last checkpoint that a quiet moment should take one (see
        IDLE_CHECKPOINT_CHANGES)."""
        return self._changes - self._changes_at_checkpoint >= IDLE_CHECKPOINT_CHANGES

    def checkpoint(self) -> None:
        """Copy the WAL's pages back into the database now (PASSIVE: a reader is not waited
        for), in a quiet moment after a burst. Never raises: SQLite's own checkpoint at a
        later commit is still there."""
        with self._lock, contextlib.suppress(sqlite3.Error, OSError):
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._changes_at_checkpoint = self._changes

    def _publish(self, counts: StoreCounts) -> None:
        with self._stats_lock:
            self._counts.merge(counts)

    # -- integrity -------------------------------------------------------------------------

    @property
    def disk_full(self) -> bool:
        """The last message journalled or refused found the disk full (it was refused, left
        with the push service)."""
        return self._disk_full

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
        self,
        batch: Sequence[policy.Admission],
        *,
        acked: Sequence[str] = (),
        resolved: Sequence[Resolution] = (),
    ) -> list[IngestResult]:
        """Carry out a batch of admissions in ONE transaction (group commit, the one durable
        write per message: fsynced before anything is acknowledged); say which may be
        acknowledged now.

        ``acked`` are keys whose acknowledgement the service confirmed since the last call:
        recorded in the same transaction (as :meth:`mark_acked` would); ``resolved`` are
        finished deliveries, recorded first (as :meth:`resolve` would; the acknowledgements
        they release are in :meth:`take_counts`). Both ride on the commit the batch needs
        anyway: no transaction, no WAL pages of their own. Without a batch (the records alone,
        when no message came to take them along) the commit is not fsynced, as theirs would
        not be (:meth:`_sync_needed`). Raises :class:`StoreError` (nothing journalled,
        nothing to acknowledge) once the journal's files have a problem (see
        :meth:`check_integrity`).
        """
        counts = StoreCounts()
        delivered = _delivered(resolved)
        with self._lock:
            problem = self._check_integrity_locked(deep=False)
            if problem is not None:
                raise StoreError(str(problem))
            now = self._clock()
            space = self._measure_space()
            durable = bool(batch) or self._sync_needed(delivered)
            with (
                self._undone_by_rollback(),
                self._transaction(durable=durable, delivered=delivered),
            ):
                self._confirm_acks(acked, now)
                self._resolve_locked(resolved, now, counts)
                results = [self._ingest_one(admission, now, counts, space) for admission in batch]
        self._publish(counts)
        return results

    @contextmanager
    def _undone_by_rollback(self) -> Iterator[None]:
        """What a write transaction changed in memory (the dedupe index, the salts, the next
        id) is put back when it rolls back."""
        self._remembered, self._forgotten, self._salted = array("q"), array("q"), []
        next_id, queued_from = self._next_id, dict(self._queued_from)
        try:
            yield
        except BaseException:
            for key in self._remembered:
                self._index.pop(key, None)
            self._index.update(zip(self._forgotten[::2], self._forgotten[1::2], strict=True))
            self._salts.forget_newest(self._salted)
            self._next_id, self._queued_from = next_id, queued_from
            raise

    def _record(
        self,
        incoming: Incoming,
        *,
        route: str | None = None,
        body: bytes | None = None,
        expires_at: float | None = None,
        targets: Sequence[str] = (),
        held: bool = False,
        salt: int | None = None,
    ) -> int:
        """One journal row: the dedupe record of ``incoming`` (and, with a body, the message
        for ``targets`` and its record ``salt``'s digest), its acknowledgement owed (or held
        until every target confirmed)."""
        self._next_id += 1
        row_id = self._next_id
        self._conn.execute(
            "INSERT INTO journal (id, key, route, body, received_at, expires_at, targets, ack,"
            " salt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                row_id,
                incoming.push_message_url,
                route,
                body,
                incoming.received_at,
                expires_at,
                " ".join(targets),
                "held" if held else "owed",
                salt,
            ),
        )
        key = _url_key(incoming.push_message_url)
        self._index[key] = row_id
        self._remembered.append(key)
        return row_id

    def _remember_salt(self, key: int) -> None:
        """In memory; on disk it is the journal row's (see _forget)."""
        self._salts.add(key)
        self._salted.append(key)

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
        self._dead_letter(incoming, reason, route, now)
        self._record(incoming, route=route)
        counts.dead_letters[reason] = counts.dead_letters.get(reason, 0) + 1
        return IngestResult(incoming.push_message_url, "dead_lettered", None, ack_now=True)

    def _ingest_one(
        self,
        admission: policy.Admission,
        now: float,
        counts: StoreCounts,
        space: _BatchSpace,
    ) -> IngestResult:
        incoming, disposition = admission.incoming, admission.disposition
        url = incoming.push_message_url
        known = self._index.get(_url_key(url))
        if known is not None:
            counts.duplicates += 1
            row = self._conn.execute("SELECT ack FROM journal WHERE id = ?", (known,)).fetchone()
            if row and row[0] == "held":
                return IngestResult(url, "duplicate", None, ack_now=False)
            if row and row[0] is None:
                # The service did not see our acknowledgement after all: owe it again (and
                # remember the message until that one is confirmed).
                self._conn.execute(
                    "UPDATE journal SET ack = 'owed', forget_at = NULL WHERE id = ?", (known,)
                )
            return IngestResult(url, "duplicate", None, ack_now=True)
        if isinstance(disposition, policy.Redelivered):
            # The agent believed it committed, but nothing here remembers it (refused by a full
            # queue, say): not ours, so not acknowledged; the service delivers it again.
            return IngestResult(url, "refused", None, ack_now=False)

        if isinstance(disposition, policy.DeadLetter):
            return self._poison(incoming, disposition.reason, disposition.route, now, counts)

        if isinstance(disposition, policy.Expired):
            self._record(incoming, route=disposition.route)
            counts.expired[disposition.route] = counts.expired.get(disposition.route, 0) + 1
            return IngestResult(url, "expired", None, ack_now=True)

        route = disposition.route
        assert incoming.plaintext is not None  # the policy journals only what was decrypted
        salt = policy.record_salt(incoming.raw_body)
        salt_digest = None if salt is None else salt_key(route.name, salt)
        if salt_digest is not None and salt_digest in self._salts:
            # The same ciphertext again under a new push message URL: a replay. A duplicate,
            # not poison: acknowledged, remembered, counted, never delivered.
            self._record(incoming, route=route.name)
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
            if room.reason == "disk_full":
                self._disk_full = True
            return IngestResult(url, "refused", None, ack_now=False)

        targets = target_keys(route)
        if not targets:  # a route that delivers nowhere: only the dedupe record is kept
            self._record(incoming, route=route.name)
            return IngestResult(url, "journalled", "", ack_now=True)
        held = disposition.ack_after_delivery
        message_id = self._record(
            incoming,
            route=route.name,
            body=incoming.plaintext,
            expires_at=disposition.deadline,
            targets=targets,
            held=held,
            salt=salt_digest,
        )
        self._count_in(route.name, size, incoming.received_at)
        space.add(policy.disk_cost(size))
        self._disk_full = False
        if salt_digest is not None:
            self._remember_salt(salt_digest)
        counts.journalled[route.name] = counts.journalled.get(route.name, 0) + 1
        return IngestResult(url, "journalled", str(message_id), ack_now=not held)

    def _count_in(self, route: str, size: int, received_at: float) -> None:
        with self._stats_lock:
            usage = self._usage_of(route)
            usage.messages += 1
            usage.bytes += size
            usage.last_received_at = received_at

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
                policy.JournalSpace(space.used, limit, space.disk_left),
            )
            if isinstance(decision, policy.Admit | policy.NeverFits):
                return decision
            if space.added:
                # Full by the estimate: measure what the pages really take before deciding.
                space.remeasured(self._measure_space())
                continue
            if decision.reason == "journal_full" and self._forget_for_room():
                space.remeasured(self._measure_space())
                continue
            if isinstance(decision, policy.Refuse):
                return decision
            row = self._conn.execute(
                "SELECT id, ack, length(body) FROM journal WHERE id >= ? AND route = ?"
                " AND body IS NOT NULL ORDER BY id LIMIT 1",
                (self._queued_from.get(route.name, 0), route.name),
            ).fetchone()
            if row is None:
                return policy.Refuse(decision.reason)
            self._queued_from[route.name] = int(row[0])
            if (
                decision.reason == "journal_full"
                and row[1] is not None
                and row[2] < self._page_size
            ):
                # Its acknowledgement is not confirmed, so its row stays (the dedupe record) and
                # a body this small frees no page: dropping it would make no room.
                return policy.Refuse(decision.reason)
            self._remove_message(int(row[0]), counts, dropped=True)
            # Removing rows frees whole pages only now and then: measure again.
            space.remeasured(self._measure_space())
            key = (route.name, decision.reason)
            counts.dropped[key] = counts.dropped.get(key, 0) + 1

    def _forget_for_room(self) -> bool:
        """A full journal first forgets the oldest dedupe records whose acknowledgement the
        service confirmed, grace period or not (it has forgotten those messages: only a
        redelivery already on its way could still come); True if there were any."""
        rows = self._conn.execute(
            "SELECT id, key FROM journal WHERE body IS NULL AND ack IS NULL AND id < ?"
            " ORDER BY id LIMIT ?",
            (self._next_id, FORGET_FOR_ROOM_BATCH),
        ).fetchall()
        self._forget(rows)
        return bool(rows)

    def _forget(self, rows: Sequence[tuple[int, str]]) -> None:
        """Delete these journal rows (id, key) and their dedupe index entries; their salts
        stay, in ``salts`` (pruned by count and age)."""
        ids = [(r[0],) for r in rows]
        self._conn.executemany(
            "INSERT INTO salts (digest, seen_at) SELECT salt, received_at FROM journal"
            " WHERE id = ? AND salt IS NOT NULL",
            ids,
        )
        self._conn.executemany("DELETE FROM journal WHERE id = ?", ids)
        for row_id, key in rows:
            digest = _url_key(key)
            if self._index.get(digest) == row_id:
                del self._index[digest]
                self._forgotten.extend((digest, row_id))

    def _remove_message(
        self, message_id: int, counts: StoreCounts, *, dropped: bool = False
    ) -> None:
        """Drop a message's body and what is left of its deliveries (its row stays, the dedupe
        record); release a held acknowledgement. A message ``dropped`` for room whose
        acknowledgement is confirmed goes whole (a redelivery of it would be journalled again,
        and delivered: it was never delivered)."""
        row = self._conn.execute(
            "SELECT route, key, length(body), ack, received_at, expires_at, forget_at, salt"
            " FROM journal WHERE id = ? AND body IS NOT NULL",
            (message_id,),
        ).fetchone()
        if row is None:
            return
        route, key, size, ack, received_at, expires_at, forget_at, salt = row
        if dropped and ack is None and message_id != self._next_id:  # the newest keeps the ids
            self._forget([(message_id, key)])
        elif self._next_id - message_id < IN_PLACE_ROWS or size * 3 < self._page_size:
            self._conn.execute(
                "UPDATE journal SET body = NULL, targets = '', ack = CASE ack WHEN 'held' THEN"
                " 'owed' ELSE ack END WHERE id = ?",
                (message_id,),
            )
        else:
            # An older one is deleted and written again without its body (same id: order and
            # index unchanged), so that SQLite rebalances its page (see IN_PLACE_ROWS).
            self._conn.execute("DELETE FROM journal WHERE id = ?", (message_id,))
            self._conn.execute(
                "INSERT INTO journal (id, key, route, body, received_at, expires_at, targets, ack,"
                " forget_at, salt) VALUES (?, ?, ?, NULL, ?, ?, '', ?, ?, ?)",
                (
                    message_id,
                    key,
                    route,
                    received_at,
                    expires_at,
                    "owed" if ack == "held" else ack,
                    forget_at,
                    salt,
                ),
            )
        self._conn.execute("DELETE FROM retries WHERE message_id = ?", (message_id,))
        with self._stats_lock:
            usage = self._usage_of(route)
            usage.messages -= 1
            usage.bytes -= int(size)
            self._take_finished(message_id)
            if dropped:  # the route's oldest: nothing at or below it is queued now
                self._queued_from[route] = message_id + 1
        if ack == "held":
            counts.released_acks.append(key)

    # -- acknowledgements ------------------------------------------------------------------

    def mark_acked(self, push_message_urls: Sequence[str]) -> None:
        """The service confirmed these acknowledgements (404/410 included): owed no more."""
        if not push_message_urls:
            return
        with self._lock, self._transaction(durable=False):
            self._confirm_acks(push_message_urls, self._clock())

    def _confirm_acks(self, keys: Sequence[str], now: float) -> None:
        # Not worth an fsync of its own: one lost in a power loss is an acknowledgement sent
        # again after the restart, which the service answers 404.
        forget_at = policy.dedupe_forget_at(now)
        found = (self._index.get(k) for k in map(_url_key, keys))
        rows = [(forget_at, row_id) for row_id in found if row_id is not None]
        if rows:
            self._conn.executemany(
                "UPDATE journal SET ack = NULL, forget_at = ? WHERE id = ? AND ack = 'owed'", rows
            )

    def pending_acks(self) -> list[str]:
        """Acknowledgements owed but not confirmed (after a restart they are sent again)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT key FROM journal WHERE ack = 'owed' ORDER BY id"
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
                "SELECT j.id, j.route, j.body, j.received_at, j.expires_at, j.key,"
                " coalesce(r.attempts, 0), coalesce(r.next_attempt_at, 0), j.targets"
                " FROM journal j"
                " LEFT JOIN retries r ON r.message_id = j.id AND r.target = ?1"
                " WHERE j.id > ?2 AND j.route = ?3 AND j.body IS NOT NULL"
                " AND instr(' ' || j.targets || ' ', ' ' || ?1 || ' ') > 0"
                " ORDER BY j.id LIMIT ?4",
                (target, after, route, limit),
            ).fetchall()
        return [
            PendingDelivery(
                Message(str(r[0]), r[1], bytes(r[2]), r[3], r[4]),
                r[5],
                int(r[6]),
                float(r[7]),
                tuple(str(r[8]).split()),
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
        """Keep a failed attempt so the retry schedule survives a restart (not fsynced of its
        own: lost in a power loss, the retry simply comes sooner)."""
        with self._lock, self._transaction(durable=False):
            self._conn.execute(
                "INSERT OR REPLACE INTO retries VALUES (?, ?, ?, ?, ?)",
                (int(message_id), target, attempts, next_attempt_at, error),
            )

    def resolve(self, resolutions: Sequence[Resolution], *, acked: Sequence[str] = ()) -> list[str]:
        """Finish deliveries in one transaction; a message with none left keeps only its
        dedupe record. ``acked``: confirmed acknowledgements recorded in the same transaction
        (as :meth:`mark_acked` would).

        Rejected deliveries become dead letters. Returns the keys of ``delivered``-policy
        messages whose every target is now done: their acknowledgement is owed.

        Not fsynced (the next ingest's commit is, and takes these with it), unless
        :data:`gateway.policy.REPEAT_WINDOW` confirmed deliveries would otherwise wait: a power
        loss then repeats no more deliveries than a device recognises by their message ids.
        Most resolutions do not come here at all: :meth:`ingest` takes them with its commit.
        """
        counts = StoreCounts()
        delivered = _delivered(resolutions)
        with self._lock:
            now = self._clock()
            with self._transaction(durable=self._sync_needed(delivered), delivered=delivered):
                self._confirm_acks(acked, now)
                self._resolve_locked(resolutions, now, counts)
        released = counts.released_acks
        counts.released_acks = []
        self._publish(counts)
        return released

    def _sync_needed(self, delivered: int) -> bool:
        """Whether a commit that journals nothing but records ``delivered`` more confirmed
        deliveries must be fsynced: when a power loss could otherwise repeat more than
        :data:`gateway.policy.REPEAT_WINDOW` of them. What else such a commit records (a
        confirmed acknowledgement, a retry, a prune) only makes something happen again."""
        return self._unsynced + delivered >= policy.REPEAT_WINDOW

    def _resolve_locked(
        self, resolutions: Sequence[Resolution], now: float, counts: StoreCounts
    ) -> None:
        left: dict[int, tuple[set[str], bool]] = {}  # id -> targets left, expired
        for r in resolutions:
            mid = int(r.message_id)
            if mid not in left:
                row = self._conn.execute(
                    "SELECT targets FROM journal WHERE id = ? AND body IS NOT NULL", (mid,)
                ).fetchone()
                if row is None:
                    with self._stats_lock:
                        self._take_finished(mid)  # gone already (dropped for room)
                    continue
                left[mid] = (set(str(row[0]).split()), False)
            targets, expired = left[mid]
            if r.target not in targets:
                continue
            if r.end == "rejected":
                self._dead_letter_delivery(mid, r, now, counts)
            targets.discard(r.target)
            left[mid] = (targets, expired or r.end == "expired")
            self._conn.execute(
                "DELETE FROM retries WHERE message_id = ? AND target = ?", (mid, r.target)
            )
        for mid, (targets, expired) in left.items():
            if targets:
                self._conn.execute(
                    "UPDATE journal SET targets = ? WHERE id = ?", (" ".join(sorted(targets)), mid)
                )
                continue
            if expired:
                route = self._conn.execute(
                    "SELECT route FROM journal WHERE id = ?", (mid,)
                ).fetchone()
                if route:
                    counts.expired[route[0]] = counts.expired.get(route[0], 0) + 1
            self._remove_message(mid, counts)

    def _dead_letter_delivery(
        self, message_id: int, r: Resolution, now: float, counts: StoreCounts
    ) -> None:
        row = self._conn.execute(
            "SELECT key, body, received_at, expires_at FROM journal WHERE id = ?", (message_id,)
        ).fetchone()
        if row is None:
            return
        reason = r.reason or "rejected"
        self._conn.execute(
            "INSERT INTO dead_letters (reason, route, target, push_message_url, headers, raw_body,"
            " plaintext, received_at, dead_at, expires_at) VALUES (?, ?, ?, ?, '[]', x'', ?, ?,"
            " ?, ?)",
            (reason, r.route, r.target, row[0] or None, row[1], row[2], now, row[3]),
        )
        counts.dead_letters[reason] = counts.dead_letters.get(reason, 0) + 1

    # -- statistics and housekeeping -------------------------------------------------------

    def take_counts(self) -> StoreCounts:
        """What happened since the last call (never blocks on a commit)."""
        with self._stats_lock:
            counts, self._counts = self._counts, StoreCounts()
        return counts

    def queue_usage(self) -> dict[str, QueueUsage]:
        """Messages and bytes per route that still wait for a delivery (never blocks on a
        commit): what the journal holds less what finished but is not recorded yet."""
        with self._stats_lock:
            usage = {
                route: QueueUsage(u.messages, u.bytes, u.last_received_at)
                for route, u in self._usage.items()
            }
            for route, size in self._finished.values():
                q = usage.get(route)
                if q is not None:
                    usage[route] = replace(q, messages=q.messages - 1, bytes=q.bytes - size)
        return usage

    def note_finished(self, message_id: str, route: str, size: int) -> None:
        """Every delivery of a journalled message finished (call from any thread), its
        record still to come (the router defers it: policy.RECORD_DEFER): from now on
        :meth:`queue_usage` no longer counts it as waiting. ``size``: its body's length."""
        mid = int(message_id)
        with self._stats_lock:
            if mid >= self._queued_from.get(route, 0):  # else dropped for room already
                self._finished[mid] = (route, size)

    def clear_finished(self) -> None:
        """A router starts (a reload's new one): what an earlier one noted finished but did
        not record is delivered again, so it counts as waiting again."""
        with self._stats_lock:
            self._finished.clear()

    def _take_finished(self, message_id: int) -> None:
        """The message leaves the journal's queue (under the stats lock): its note goes
        with it, put back if the transaction rolls back."""
        noted = self._finished.pop(message_id, None)
        if noted is not None:
            self._finished_taken.append((message_id, noted))

    def prune(self) -> int:
        """Housekeeping: forget dedupe records (:func:`gateway.policy.dedupe_forget_at` after
        their acknowledgement was confirmed; one never confirmed after
        ``journal.dedupe_retention``) and record salts past the retention or the newest
        :data:`~gateway.salt_memory.MAX_SALTS`; check the journal (``quick_check`` at most every
        :data:`QUICK_CHECK_INTERVAL`). Returns how many dedupe records went."""
        with self._lock:
            now = self._clock()
            self._check_integrity_locked(deep=now >= self._next_quick_check)
            retention = self._journal.dedupe_retention
            newest = self._conn.execute("SELECT max(id) FROM salts").fetchone()[0]
            stale_salts = (
                newest is not None
                and self._conn.execute(
                    "SELECT 1 FROM salts WHERE id <= ? OR seen_at < ? LIMIT 1",
                    (int(newest) - MAX_SALTS, now - retention),
                ).fetchone()
            )
            rows = self._prunable(retention, now, 0, PRUNE_BATCH)
            if not rows and not stale_salts:
                return 0
            forgotten = 0
            # Not fsynced: a record that comes back after a power loss is forgotten again.
            with self._undone_by_rollback(), self._transaction(durable=False):
                while rows:
                    self._forget(rows)
                    forgotten += len(rows)
                    rows = self._prunable(retention, now, rows[-1][0], PRUNE_BATCH)
                if stale_salts:
                    # Rowid order is arrival order: the stale ones are a prefix.
                    self._conn.execute(
                        "DELETE FROM salts WHERE id <= ? OR seen_at < ?",
                        (int(newest) - MAX_SALTS, now - retention),
                    )
        return forgotten

    def _prunable(
        self, retention: float, now: float, after: int, limit: int
    ) -> list[tuple[int, str]]:
        """The first ``limit`` dedupe records past ``after`` (an id) that may be forgotten."""
        # The newest row stays whatever it says: it carries the id high-water mark.
        rows: list[tuple[int, str]] = self._conn.execute(
            "SELECT id, key FROM journal WHERE id > ?3 AND body IS NULL AND ack IS NOT 'held'"
            " AND (CASE WHEN ack IS NULL THEN coalesce(forget_at, received_at + ?1)"
            " ELSE received_at + ?1 END) < ?2"
            " AND id < (SELECT max(id) FROM journal) ORDER BY id LIMIT ?4",
            (retention, now, after, limit),
        ).fetchall()
        return rows

    def next_forget_at(self) -> float | None:
        """When the earliest dedupe record whose acknowledgement the service confirmed may be
        forgotten (None: no such record; the others wait for a delivery or a confirmation)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT min(forget_at) FROM journal WHERE body IS NULL AND ack IS NULL"
                " AND id < (SELECT max(id) FROM journal)"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    @property
    def dedupe_retention(self) -> float:
        """Seconds at most a push message URL is remembered (``journal.dedupe_retention``)."""
        return self._journal.dedupe_retention

    def dedupe_records(self) -> int:
        """How many push message URLs are remembered (from memory: never waits for a commit)."""
        return len(self._index)

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
            space = self._measure_space()
            with self._undone_by_rollback(), self._transaction():
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
                targets = target_keys(route)
                if dead.target in targets:
                    targets = (dead.target,)
                self._conn.execute("DELETE FROM dead_letters WHERE id = ?", (dead_id,))
                if not targets:
                    return ""  # a route that delivers nowhere: nothing to keep
                # No key of its own (the dedupe record of its push message URL may still be
                # there) and no acknowledgement (it was sent when it died): forgotten as soon as
                # it is delivered.
                self._next_id += 1
                message_id = self._next_id
                self._conn.execute(
                    "INSERT INTO journal (id, key, route, body, received_at, expires_at, targets,"
                    " ack, forget_at) VALUES (?, '', ?, ?, ?, ?, ?, NULL, ?)",
                    (
                        message_id,
                        route.name,
                        dead.plaintext,
                        now,
                        policy.replay_deadline(route, now),
                        " ".join(targets),
                        now,
                    ),
                )
                self._count_in(route.name, len(dead.plaintext), now)
                counts.journalled[route.name] = counts.journalled.get(route.name, 0) + 1
        self._publish(counts)
        return str(message_id)

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
