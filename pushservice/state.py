"""The push service's state and its operations: sans-IO, the caller passes ``now``."""

from __future__ import annotations

from collections.abc import Iterator

from pushservice.model import (
    Message,
    ReceiptEvent,
    ReceiptSubscription,
    Subscription,
    SubscriptionSet,
    Urgency,
    new_token,
)
from pushservice.store import SqliteStore

# RFC 8030 §6.2 / §6.3 receipt statuses.
RECEIPT_ACKED = 204
RECEIPT_GONE = 410


class InvalidSet(Exception):
    """A subscribe request named a set that does not exist or may not be joined (400)."""


class PushState:
    """Subscriptions, sets, messages and receipts, in memory with optional SQLite write-through."""

    def __init__(self, store: SqliteStore | None = None) -> None:
        self._store = store
        self.sets: dict[str, SubscriptionSet] = {}
        self.subscriptions: dict[str, Subscription] = {}
        self.by_push_id: dict[str, Subscription] = {}
        self.messages: dict[str, Message] = {}
        self.messages_by_sub: dict[str, dict[str, Message]] = {}
        self.receipts: dict[str, ReceiptSubscription] = {}
        self.acked = 0
        if store is not None:
            self._load(store)

    def _load(self, store: SqliteStore) -> None:
        for s in store.load_sets():
            self.sets[s.id] = s
        for sub in store.load_subscriptions():
            self._index_subscription(sub)
        for m in store.load_messages():
            if m.sub_id in self.subscriptions:
                self.messages[m.id] = m
                self.messages_by_sub[m.sub_id][m.id] = m
        for r in store.load_receipts():
            self.receipts[r.id] = r

    def _index_subscription(self, sub: Subscription) -> None:
        self.subscriptions[sub.id] = sub
        self.by_push_id[sub.push_id] = sub
        self.messages_by_sub.setdefault(sub.id, {})
        self.sets.setdefault(sub.set_id, SubscriptionSet(sub.set_id)).members.add(sub.id)

    # -- subscriptions -----------------------------------------------------------------------
    def subscribe(self, set_id: str | None, vapid_key: bytes | None, now: float) -> Subscription:
        """Create a subscription, in ``set_id`` if given (InvalidSet if unknown or not joinable)."""
        if set_id is not None:
            existing = self.sets.get(set_id)
            if existing is None or not existing.joinable:
                raise InvalidSet(set_id)
        else:
            new_set = SubscriptionSet(new_token())
            self.sets[new_set.id] = new_set
            if self._store:
                self._store.put_set(new_set)
            set_id = new_set.id
        sub = Subscription(new_token(), new_token(), set_id, vapid_key, now)
        self._index_subscription(sub)
        if self._store:
            self._store.put_subscription(sub)
        return sub

    def delete_subscription(self, sub_id: str) -> list[Message]:
        """Remove a subscription, its messages and its set membership; returns its messages."""
        sub = self.subscriptions.pop(sub_id, None)
        if sub is None:
            return []
        self.by_push_id.pop(sub.push_id, None)
        dropped = list(self.messages_by_sub.pop(sub_id, {}).values())
        for m in dropped:
            self.messages.pop(m.id, None)
        s = self.sets.get(sub.set_id)
        if s is not None:
            s.members.discard(sub_id)
        if self._store:
            self._store.delete_subscription(sub_id)
        return dropped

    def delete_set(self, set_id: str) -> list[Message]:
        """Remove a set and every member (RFC 8030 §7.3.1); returns the dropped messages."""
        s = self.sets.pop(set_id, None)
        if s is None:
            return []
        dropped: list[Message] = []
        for sub_id in list(s.members):
            dropped.extend(self.delete_subscription(sub_id))
        if self._store:
            self._store.delete_set(set_id)
        return dropped

    def make_sets_unjoinable(self) -> None:
        """Every existing set now refuses new members (fault injection)."""
        for s in self.sets.values():
            s.joinable = False
            if self._store:
                self._store.put_set(s)

    # -- messages ----------------------------------------------------------------------------
    def store_message(
        self,
        sub: Subscription,
        *,
        body: bytes,
        content_encoding: str | None,
        urgency: Urgency,
        topic: str | None,
        ttl: int,
        receipt_id: str | None,
        now: float,
    ) -> tuple[Message, list[Message]]:
        """Store a message; a topic replaces undelivered same-topic messages (returned)."""
        replaced: list[Message] = []
        if topic is not None:
            for old in list(self.messages_by_sub.get(sub.id, {}).values()):
                if old.topic == topic:
                    self._remove_message(old)
                    replaced.append(old)
        m = Message(
            id=new_token(),
            sub_id=sub.id,
            body=body,
            content_encoding=content_encoding,
            urgency=urgency,
            topic=topic,
            created=now,
            expires=now + ttl,
            receipt_id=receipt_id,
        )
        self.messages[m.id] = m
        self.messages_by_sub.setdefault(sub.id, {})[m.id] = m
        if self._store:
            self._store.put_message(m)
        return m, replaced

    def _remove_message(self, m: Message) -> None:
        self.messages.pop(m.id, None)
        self.messages_by_sub.get(m.sub_id, {}).pop(m.id, None)
        if self._store:
            self._store.delete_message(m.id)

    def ack(self, message_id: str) -> Message | None:
        """Acknowledge (DELETE) a message; None if unknown. Records a 204 receipt."""
        m = self.messages.get(message_id)
        if m is None:
            return None
        self._remove_message(m)
        self.acked += 1
        self._add_receipt(m, RECEIPT_ACKED)
        return m

    def give_up(self, m: Message) -> None:
        """Drop an undelivered message (expired, TTL 0 unseen); records a 410 receipt."""
        if self.messages.get(m.id) is m:
            self._remove_message(m)
            self._add_receipt(m, RECEIPT_GONE)

    def messages_for(self, sub_ids: list[str], min_urgency: Urgency | None) -> Iterator[Message]:
        """Stored messages of these subscriptions passing the urgency filter, oldest first."""
        found = [
            m
            for sid in sub_ids
            for m in self.messages_by_sub.get(sid, {}).values()
            if min_urgency is None or m.urgency >= min_urgency
        ]
        found.sort(key=lambda m: m.created)
        return iter(found)

    def expired(self, now: float) -> list[Message]:
        """Messages whose TTL has elapsed (TTL-0 messages once pushed are handled by the caller)."""
        return [m for m in self.messages.values() if m.expires <= now]

    def pending_count(self, sub_id: str | None = None) -> int:
        """Unacknowledged messages, of one subscription or all."""
        if sub_id is None:
            return len(self.messages)
        return len(self.messages_by_sub.get(sub_id, {}))

    # -- receipts ----------------------------------------------------------------------------
    def new_receipt_subscription(self) -> ReceiptSubscription:
        """Create a receipt subscription (RFC 8030 §5.1)."""
        r = ReceiptSubscription(new_token())
        self.receipts[r.id] = r
        if self._store:
            self._store.put_receipt(r.id)
        return r

    def _add_receipt(self, m: Message, status: int) -> None:
        if m.receipt_id is None:
            return
        r = self.receipts.get(m.receipt_id)
        if r is None:
            return
        event = ReceiptEvent(m.id, status)
        r.events.append(event)
        if self._store:
            self._store.add_receipt_event(r.id, event)

    def mark_receipt_pushed(self, receipt_id: str, event: ReceiptEvent) -> None:
        """Remember that a receipt reached the application server's monitor."""
        event.pushed = True
        if self._store:
            self._store.mark_receipt_pushed(receipt_id, event.message_id)
