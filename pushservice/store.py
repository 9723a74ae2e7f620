"""SQLite persistence of the push service's state (``--state FILE``): write-through."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from pushservice.model import (
    Message,
    ReceiptEvent,
    ReceiptSubscription,
    Subscription,
    SubscriptionSet,
    Urgency,
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sets (id TEXT PRIMARY KEY, joinable INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY, push_id TEXT UNIQUE NOT NULL, set_id TEXT NOT NULL,
    vapid_key BLOB, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY, sub_id TEXT NOT NULL, body BLOB NOT NULL, content_encoding TEXT,
    urgency INTEGER NOT NULL, topic TEXT, created REAL NOT NULL, expires REAL NOT NULL,
    receipt_id TEXT);
CREATE TABLE IF NOT EXISTS receipts (id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS receipt_events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, receipt_id TEXT NOT NULL, message_id TEXT NOT NULL,
    status INTEGER NOT NULL, pushed INTEGER NOT NULL DEFAULT 0);
"""


class SqliteStore:
    """Every mutation is committed at once (autocommit), so a kill loses nothing acknowledged."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # capability URLs are secrets
        os.close(fd)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    # -- loading -----------------------------------------------------------------------------
    def load_sets(self) -> list[SubscriptionSet]:
        """Every set (members filled in by the caller)."""
        rows = self._db.execute("SELECT id, joinable FROM sets")
        return [SubscriptionSet(id=r[0], joinable=bool(r[1])) for r in rows]

    def load_subscriptions(self) -> list[Subscription]:
        """Every subscription."""
        rows = self._db.execute("SELECT id, push_id, set_id, vapid_key, created FROM subscriptions")
        return [Subscription(r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def load_messages(self) -> list[Message]:
        """Every stored message (none has been pushed yet in this process)."""
        rows = self._db.execute(
            "SELECT id, sub_id, body, content_encoding, urgency, topic, created, expires,"
            " receipt_id FROM messages"
        )
        return [
            Message(r[0], r[1], r[2], r[3], Urgency(r[4]), r[5], r[6], r[7], r[8]) for r in rows
        ]

    def load_receipts(self) -> list[ReceiptSubscription]:
        """Every receipt subscription with its events in order."""
        receipts = {
            r[0]: ReceiptSubscription(r[0]) for r in self._db.execute("SELECT id FROM receipts")
        }
        for rid, mid, status, pushed in self._db.execute(
            "SELECT receipt_id, message_id, status, pushed FROM receipt_events ORDER BY seq"
        ):
            if rid in receipts:
                receipts[rid].events.append(ReceiptEvent(mid, status, bool(pushed)))
        return list(receipts.values())

    # -- write-through -----------------------------------------------------------------------
    def put_set(self, s: SubscriptionSet) -> None:
        """Insert or update a set."""
        self._db.execute("INSERT OR REPLACE INTO sets VALUES (?, ?)", (s.id, int(s.joinable)))

    def delete_set(self, set_id: str) -> None:
        """Remove a set row."""
        self._db.execute("DELETE FROM sets WHERE id = ?", (set_id,))

    def put_subscription(self, sub: Subscription) -> None:
        """Insert a subscription."""
        self._db.execute(
            "INSERT OR REPLACE INTO subscriptions VALUES (?, ?, ?, ?, ?)",
            (sub.id, sub.push_id, sub.set_id, sub.vapid_key, sub.created),
        )

    def delete_subscription(self, sub_id: str) -> None:
        """Remove a subscription and its messages."""
        self._db.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
        self._db.execute("DELETE FROM messages WHERE sub_id = ?", (sub_id,))

    def put_message(self, m: Message) -> None:
        """Insert a message."""
        self._db.execute(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                m.id,
                m.sub_id,
                m.body,
                m.content_encoding,
                int(m.urgency),
                m.topic,
                m.created,
                m.expires,
                m.receipt_id,
            ),
        )

    def delete_message(self, message_id: str) -> None:
        """Remove a message."""
        self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))

    def put_receipt(self, receipt_id: str) -> None:
        """Insert a receipt subscription."""
        self._db.execute("INSERT OR IGNORE INTO receipts VALUES (?)", (receipt_id,))

    def add_receipt_event(self, receipt_id: str, event: ReceiptEvent) -> None:
        """Append a receipt."""
        self._db.execute(
            "INSERT INTO receipt_events (receipt_id, message_id, status, pushed)"
            " VALUES (?, ?, ?, ?)",
            (receipt_id, event.message_id, event.status, int(event.pushed)),
        )

    def mark_receipt_pushed(self, receipt_id: str, message_id: str) -> None:
        """Record that a receipt reached a monitor."""
        self._db.execute(
            "UPDATE receipt_events SET pushed = 1 WHERE receipt_id = ? AND message_id = ?",
            (receipt_id, message_id),
        )
