"""From a pushed message to a journal commit, then to an acknowledgement: the one ingest path
that every upstream protocol feeds.

:meth:`JournalWriter.take` identifies and decrypts a message (:class:`~gateway.ingest.Ingestor`)
and asks the policy what to do with it (:func:`gateway.policy.admit`); :meth:`JournalWriter.run`
commits everything that arrived while the previous transaction ran in one transaction (group
commit: the fsync cost per message shrinks with the load), together with the acknowledgements
that finished meanwhile and the deliveries the router finished (``carry``: the one transaction a
message costs in the field records the previous one's delivery too), and only then owes the
acknowledgements the policy allows.
"""

from __future__ import annotations

import math
import random
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial

import trio

from adapters.base import Message
from fieldgate_common.backoff import Backoff
from fieldgate_common.logs import get_logger
from gateway import policy
from gateway.ingest import Ingestor
from gateway.routes import CurrentRoutes
from gateway.store import (
    COMMIT_RETRY_BASE,
    COMMIT_RETRY_CAP,
    CarriedAcks,
    CarriedResolutions,
    IngestResult,
    Store,
    StoreError,
)
from gateway.upstream.acks import Acknowledgements
from gateway.upstream.contract import Ack, Pushed
from gateway.upstream.instruments import UpstreamInstruments

log = get_logger("journal")

# Messages received but not yet committed, at most: beyond this they are left unacknowledged
# with the push service (which redelivers them), so a failing disk cannot exhaust memory.
MAX_UNCOMMITTED = 5000
# Keys committed by this process that are remembered in memory, so that a redelivery skips
# decryption (an ECDH, the costliest step): a few MB at most, and redeliveries come soon.
RECENT_MESSAGES = 10_000
# Finished acknowledgements are recorded with the next commit of messages or of the router's
# finished deliveries (carry_acks); when neither comes, alone after this long (not fsynced):
# as long as the router waits with a delivery, so that a message alone costs one record.
# Nothing needs them durable sooner: one lost in a crash is an acknowledgement sent again after
# the restart, which the service answers 404.
ACK_RECORD_DELAY = policy.RECORD_DEFER
# Quiet this long after a commit that left a checkpoint due (Store.checkpoint_due, a burst), the
# journal is checkpointed: off the next message's critical path.
IDLE_CHECKPOINT_AFTER = 1.0

# Called with (event, message key, journal message id) as a message moves: "received",
# "journalled", "duplicate", "dead_lettered", "refused", "expired", "acknowledged". For the demo
# and for tests; None costs nothing on the hot path.
Observer = Callable[[str, str, str | None], None]


def _or_never(deadline: float | None) -> float:
    return math.inf if deadline is None else deadline


class JournalWriter:
    """Group-commits what arrives; owes the acknowledgements the policy allows."""

    def __init__(
        self,
        store: Store,
        routes: CurrentRoutes,
        ingestor: Ingestor,
        acks: Acknowledgements,
        instruments: UpstreamInstruments,
        *,
        on_journalled: Callable[[Sequence[Message]], None],
        on_counted: Callable[[], None],
        carry: Callable[[], CarriedResolutions | None] = lambda: None,
        observer: Observer | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._carry = carry
        self._routes = routes
        self._ingestor = ingestor
        self._acks = acks
        self._m = instruments
        self._on_journalled = on_journalled
        self._on_counted = on_counted
        self.observer = observer
        self._rng = rng or random.Random()
        self._batch: list[policy.Admission] = []
        self._wanted = trio.Event()
        self._ack_record_due: float | None = None  # trio time
        self._checkpoint_due: float | None = None  # trio time
        self._recent: OrderedDict[str, None] = OrderedDict()
        self.problem: str | None = None  # why commits fail now (None: they work)
        self.last_message_at: float | None = None

    @property
    def waiting(self) -> int:
        """Messages taken and not yet committed."""
        return len(self._batch)

    def take(self, message: Pushed) -> None:
        """One message from a connection: identify, decrypt, decide, queue for the commit."""
        now = time.time()
        self.last_message_at = now
        if message.key in self._recent:
            # A redelivery of a message already committed: its dedupe record answers it.
            incoming = Ingestor.redelivery(message.key, now)
        else:
            incoming = self._ingestor.prepare(message, received_at=now)
        admission = policy.admit(incoming, self._routes.table, now)
        disposition = admission.disposition
        if isinstance(disposition, policy.DeadLetter):
            self._m.dead.inc(reason=disposition.reason)
            log.warning(
                "dead letter (%s): %d-byte message for %s%s",
                disposition.reason,
                len(message.body),
                disposition.route or "no known subscription",
                f" ({message.detail})" if message.detail else "",
            )
        elif not isinstance(disposition, policy.Redelivered):
            self._m.received.inc(route=incoming.route or "")
        if self.observer is not None:
            self.observer("received", message.key, None)
        if len(self._batch) >= MAX_UNCOMMITTED:
            # The journal cannot keep up (or the disk is failing): leave the message with the
            # push service, which redelivers what we did not acknowledge.
            self._m.deferred.inc()
            return
        self._batch.append(admission)
        self._wanted.set()

    def acks_finished(self) -> None:
        """Acknowledgements finished: record them with the next commit (see ACK_RECORD_DELAY)."""
        if self._ack_record_due is None:
            self._ack_record_due = trio.current_time() + ACK_RECORD_DELAY
            self._wanted.set()  # the committer re-arms its wait with this deadline

    def carry_acks(self) -> CarriedAcks | None:
        """The confirmed acknowledgements not yet recorded, for another part's commit to take
        along (the router's record of deliveries); None when there are none. Given back, and
        recorded with the next commit, if that commit fails."""
        acked = self._acks.take_finished()
        if not acked:
            return None
        return CarriedAcks(tuple(acked), partial(self._acks_carried, acked))

    def _acks_carried(self, acked: list[str], recorded: bool) -> None:
        if not recorded:
            self._give_back_acks(acked)

    def _give_back_acks(self, acked: list[str]) -> None:
        """A commit that took these confirmed acknowledgements failed: the next one takes
        them (or, ACK_RECORD_DELAY on, one for them alone)."""
        if acked:
            self._acks.restore_finished(acked)
            self.acks_finished()

    def committed_elsewhere(self) -> None:
        """Another part committed (the router's records, a prune): what that made due is
        checkpointed in the next quiet moment too (see IDLE_CHECKPOINT_AFTER)."""
        if self._arm_checkpoint():
            self._wanted.set()  # the committer re-arms its wait with this deadline

    def _arm_checkpoint(self) -> bool:
        """After a commit: when a checkpoint is due, take it once nothing was committed for
        IDLE_CHECKPOINT_AFTER (each commit pushes it back). True when it was not armed yet."""
        if not self._store.checkpoint_due:
            return False
        armed = self._checkpoint_due is None
        self._checkpoint_due = trio.current_time() + IDLE_CHECKPOINT_AFTER
        return armed

    async def run(self) -> None:
        """Commit until cancelled (a failed commit is retried with backoff; nothing is lost);
        on the way out, record the acknowledgements that finished since the last commit."""
        try:
            await self._commit_until_cancelled()
        finally:
            # Shielded, as the router records its finished deliveries: without this a clean stop
            # (SIGTERM, a restart) would send up to ACK_RECORD_DELAY's worth of acknowledgements
            # again at the next start — after a drain, thousands, ahead of the new messages'.
            with trio.CancelScope(shield=True):
                await self._record_finished_acks()

    async def _record_finished_acks(self) -> None:
        acked = self._acks.take_finished()
        if not acked:
            return
        try:
            await trio.to_thread.run_sync(self._store.mark_acked, acked)
        except (sqlite3.Error, OSError, StoreError) as exc:
            # Nothing is lost: they are sent again after the restart, answered 404.
            log.warning("%d confirmed acknowledgements not recorded: %s", len(acked), exc)

    async def _commit_until_cancelled(self) -> None:
        backoff = Backoff(COMMIT_RETRY_BASE, COMMIT_RETRY_CAP, rng=self._rng)
        while True:
            due = self._ack_record_due
            with trio.move_on_at(min(_or_never(due), _or_never(self._checkpoint_due))):
                await self._wanted.wait()
            self._wanted = trio.Event()
            batch, self._batch = self._batch, []
            checkpoint = self._checkpoint_due  # read after the wait: a commit may push it back
            if not batch and checkpoint is not None and trio.current_time() >= checkpoint:
                self._checkpoint_due = None
                await trio.to_thread.run_sync(self._store.checkpoint)
                continue  # what came meanwhile is in self._batch, and wanted
            if not batch and (due is None or trio.current_time() < due):
                continue
            self._ack_record_due = None
            acked = self._acks.take_finished()
            if not batch and not acked:
                continue
            carried = self._carry()
            resolved = carried.resolutions if carried is not None else ()
            try:
                # One transaction for the acks and deliveries recorded and the batch journalled:
                # one fsync when there is a batch, none for the records alone (Store.ingest).
                results = await trio.to_thread.run_sync(
                    partial(self._store.ingest, batch, acked=acked, resolved=resolved)
                )
            except (sqlite3.Error, OSError, StoreError) as exc:
                # Disk full, a locked or failing card: nothing was acknowledged, so nothing is
                # lost; keep the batch and try again. The service redelivers meanwhile.
                if carried is not None:
                    carried.done(False)
                self._batch[:0] = batch
                self._give_back_acks(acked)
                self._m.commit_failed.inc()
                delay = backoff.next_delay()
                self.problem = f"journal commits fail: {exc}"
                log.error("journal commit failed (%s); retrying in %.1f s", exc, delay)
                await trio.sleep(delay)
                self._wanted.set()
                continue
            if self.problem is not None:
                log.info("journal commits work again")
                self.problem = None
            backoff.reset()
            self._arm_checkpoint()
            if carried is not None:
                carried.done(True)
            if batch:
                self._committed(batch, results)
            elif carried is not None:
                self._on_counted()  # what the deliveries released and counted

    def _committed(self, batch: list[policy.Admission], results: list[IngestResult]) -> None:
        self._m.batch.observe(len(batch))
        for result in results:
            if result.status != "refused":  # a refused one comes back and is decided again
                self._recent[result.push_message_url] = None
        while len(self._recent) > RECENT_MESSAGES:
            self._recent.popitem(last=False)
        if self.observer is not None:
            for result in results:
                self.observer(result.status, result.push_message_url, result.message_id)
        self._acks.owe(
            Ack(result.push_message_url, policy.ack_code(admission.disposition))
            for admission, result in zip(batch, results, strict=True)
            if result.ack_now
        )
        messages = [
            Message(
                result.message_id,
                disposition.route.name,
                admission.incoming.plaintext or b"",
                admission.incoming.received_at,
                disposition.deadline,
            )
            for admission, result in zip(batch, results, strict=True)
            if result.status == "journalled"
            and result.message_id
            and isinstance(disposition := admission.disposition, policy.Journal)
        ]
        if messages:
            self._on_journalled(messages)
        else:
            self._on_counted()  # duplicates, dead letters, drops: only the counters moved
