"""Users, channels and stored messages of the autopush double (in memory, written through to
SQLite with ``--state``), and the endpoint tokens.

As in autopush-rs, a user record (uaid) is written at its first ``register`` — a uaid that was
only ever said hello with is unknown on the next connection — and stored messages live apart
from channels: unregistering a channel does not remove what was stored for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pushservice.autopush.settings import TOKEN_BYTES
from pushservice.vapid import b64url_decode, b64url_encode

# Endpoint tokens: AES-128-GCM over uaid || channel id (|| SHA-256 of the VAPID key), with a
# random 96-bit nonce; the token's API version is bound as associated data. autoendpoint uses
# Fernet over the same fields (autopush-common endpoint.rs): decrypting, not looking up, is
# what tells a forged token (404) from a dropped user or channel (410).
TOKEN_KEY_BYTES = 16
NONCE_BYTES = 12
UUID_BYTES = 16
KEY_HASH_BYTES = 32


@dataclass
class User:
    """One uaid: its channels and when it last said hello (wall clock)."""

    uaid: str
    connected_at: float
    channels: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class StoredMessage:
    """A message accepted for a uaid; ``version`` is its id (what the client acks)."""

    version: str
    uaid: str
    channel_id: str
    data: bytes
    headers: tuple[tuple[str, str], ...]  # encoding, encryption, crypto_key
    timestamp: float
    ttl: int
    topic: str | None
    seq: int

    def expired(self, now: float) -> bool:
        """autopush-common Notification::expired: at or past timestamp + ttl."""
        return now >= self.timestamp + self.ttl

    def notification(self) -> dict[str, object]:
        """The ``notification`` message (``data``/``headers`` only with a body, no ttl/topic)."""
        message: dict[str, object] = {
            "messageType": "notification",
            "channelID": self.channel_id,
            "version": self.version,
        }
        if self.data:
            message["data"] = b64url_encode(self.data)
            message["headers"] = dict(self.headers)
        return message


@dataclass(frozen=True)
class TokenInfo:
    """What an endpoint token says: whose channel, and the VAPID key's hash for v2."""

    uaid: str
    channel_id: str
    key_hash: bytes | None


def new_id() -> str:
    """A random URL-safe id (message versions)."""
    return secrets.token_urlsafe(TOKEN_BYTES)


class Tokens:
    """Mint and read endpoint tokens with the service's secret."""

    def __init__(self, secret: bytes) -> None:
        self._aead = AESGCM(secret)

    def mint(self, info: TokenInfo) -> tuple[str, str]:
        """(api version, token) for a channel."""
        version = "v1" if info.key_hash is None else "v2"
        plain = bytes.fromhex(info.uaid) + bytes.fromhex(info.channel_id.replace("-", ""))
        plain += info.key_hash or b""
        nonce = os.urandom(NONCE_BYTES)
        return version, b64url_encode(nonce + self._aead.encrypt(nonce, plain, version.encode()))

    def read(self, version: str, token: str) -> TokenInfo | None:
        """The token's content, or None when it is not one of ours for this API version."""
        try:
            raw = b64url_decode(token)
        except ValueError:
            return None
        if len(raw) <= NONCE_BYTES:
            return None
        try:
            plain = self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], version.encode())
        except InvalidTag:
            return None
        expected = 2 * UUID_BYTES + (KEY_HASH_BYTES if version == "v2" else 0)
        if len(plain) != expected:
            return None
        chid = plain[UUID_BYTES : 2 * UUID_BYTES].hex()
        channel_id = f"{chid[:8]}-{chid[8:12]}-{chid[12:16]}-{chid[16:20]}-{chid[20:]}"
        key_hash = plain[2 * UUID_BYTES :] if version == "v2" else None
        return TokenInfo(plain[:UUID_BYTES].hex(), channel_id, key_hash)


def key_hash(raw_key: bytes) -> bytes:
    """SHA-256 of the raw VAPID public key, as a v2 token carries it."""
    return hashlib.sha256(raw_key).digest()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS users (uaid TEXT PRIMARY KEY, connected_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS channels (
    uaid TEXT NOT NULL, channel_id TEXT NOT NULL, PRIMARY KEY (uaid, channel_id));
CREATE TABLE IF NOT EXISTS messages (
    version TEXT PRIMARY KEY, uaid TEXT NOT NULL, channel_id TEXT NOT NULL, data BLOB NOT NULL,
    headers TEXT NOT NULL, timestamp REAL NOT NULL, ttl INTEGER NOT NULL, topic TEXT,
    seq INTEGER NOT NULL);
"""


class Store:
    """SQLite write-through (``--state``): every change is committed at once, WAL mode."""

    def __init__(self, path: Path) -> None:
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)  # endpoints and uaids are secrets
        os.close(fd)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        self._db.close()

    def secret(self) -> bytes:
        """The token secret, created on first use."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'token_key'").fetchone()
        if row is not None:
            return bytes(row[0])
        secret = AESGCM.generate_key(bit_length=TOKEN_KEY_BYTES * 8)
        self._db.execute("INSERT INTO meta VALUES ('token_key', ?)", (secret,))
        return secret

    def users(self) -> Iterator[User]:
        """Every user with its channels."""
        users = {uaid: User(uaid, at) for uaid, at in self._db.execute("SELECT * FROM users")}
        for uaid, chid in self._db.execute("SELECT uaid, channel_id FROM channels"):
            if uaid in users:
                users[uaid].channels.add(chid)
        yield from users.values()

    def messages(self) -> Iterator[StoredMessage]:
        """Every stored message, oldest first."""
        rows = self._db.execute(
            "SELECT version, uaid, channel_id, data, headers, timestamp, ttl, topic, seq"
            " FROM messages ORDER BY seq"
        )
        for v, uaid, chid, data, headers, ts, ttl, topic, seq in rows:
            pairs = tuple(sorted(json.loads(headers).items()))
            yield StoredMessage(v, uaid, chid, bytes(data), pairs, ts, ttl, topic, seq)

    def put_user(self, user: User) -> None:
        """Insert or update a user row."""
        self._db.execute(
            "INSERT OR REPLACE INTO users VALUES (?, ?)", (user.uaid, user.connected_at)
        )

    def delete_user(self, uaid: str) -> None:
        """Remove a user, its channels and its messages."""
        self._db.execute("DELETE FROM users WHERE uaid = ?", (uaid,))
        self._db.execute("DELETE FROM channels WHERE uaid = ?", (uaid,))
        self._db.execute("DELETE FROM messages WHERE uaid = ?", (uaid,))

    def put_channel(self, uaid: str, channel_id: str) -> None:
        """Add a channel."""
        self._db.execute("INSERT OR IGNORE INTO channels VALUES (?, ?)", (uaid, channel_id))

    def delete_channel(self, uaid: str, channel_id: str) -> None:
        """Remove a channel."""
        self._db.execute(
            "DELETE FROM channels WHERE uaid = ? AND channel_id = ?", (uaid, channel_id)
        )

    def put_message(self, m: StoredMessage) -> None:
        """Insert a message."""
        headers = json.dumps(dict(m.headers))
        self._db.execute(
            "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (m.version, m.uaid, m.channel_id, m.data, headers, m.timestamp, m.ttl, m.topic, m.seq),
        )

    def delete_message(self, version: str) -> None:
        """Remove a message."""
        self._db.execute("DELETE FROM messages WHERE version = ?", (version,))


class AutopushState:
    """The service's data: one place for every change, so memory and SQLite stay in step."""

    def __init__(self, store: Store | None) -> None:
        self._store = store
        self.secret = store.secret() if store else AESGCM.generate_key(TOKEN_KEY_BYTES * 8)
        self.tokens = Tokens(self.secret)
        self.users: dict[str, User] = {}
        self.messages: dict[str, dict[str, StoredMessage]] = {}  # uaid -> version -> message
        self._topics: dict[tuple[str, str, str], str] = {}  # (uaid, chid, topic) -> version
        self._seq = 0
        if store is not None:
            for user in store.users():
                self.users[user.uaid] = user
            for m in store.messages():
                self._index(m)
                self._seq = max(self._seq, m.seq)

    def close(self) -> None:
        """Close the store."""
        if self._store is not None:
            self._store.close()

    def _index(self, m: StoredMessage) -> None:
        self.messages.setdefault(m.uaid, {})[m.version] = m
        if m.topic:
            self._topics[(m.uaid, m.channel_id, m.topic)] = m.version

    def next_seq(self) -> int:
        """Ordering of stored messages (the sort key timestamp of autopush)."""
        self._seq += 1
        return self._seq

    # -- users and channels ------------------------------------------------------------------
    def put_user(self, user: User) -> None:
        """Add (or update the hello time of) a user."""
        self.users[user.uaid] = user
        if self._store:
            self._store.put_user(user)

    def drop_user(self, uaid: str) -> int:
        """Forget a uaid, its channels and its messages; returns how many messages went."""
        self.users.pop(uaid, None)
        gone = self.messages.pop(uaid, {})
        for key in [k for k in self._topics if k[0] == uaid]:
            del self._topics[key]
        if self._store:
            self._store.delete_user(uaid)
        return len(gone)

    def add_channel(self, user: User, channel_id: str) -> None:
        """Register a channel."""
        user.channels.add(channel_id)
        if self._store:
            self._store.put_channel(user.uaid, channel_id)

    def remove_channel(self, user: User, channel_id: str) -> None:
        """Unregister a channel (its stored messages stay, as in autopush)."""
        user.channels.discard(channel_id)
        if self._store:
            self._store.delete_channel(user.uaid, channel_id)

    # -- messages ----------------------------------------------------------------------------
    def store(self, m: StoredMessage) -> StoredMessage | None:
        """Keep a message; one with the topic of a stored one replaces it (returned)."""
        replaced = None
        if m.topic:
            old = self._topics.get((m.uaid, m.channel_id, m.topic))
            if old is not None:
                replaced = self.delete(m.uaid, old)
        self._index(m)
        if self._store:
            self._store.put_message(m)
        return replaced

    def delete(self, uaid: str, version: str) -> StoredMessage | None:
        """Remove a stored message (acknowledged, expired, replaced)."""
        m = self.messages.get(uaid, {}).pop(version, None)
        if m is None:
            return None
        if m.topic and self._topics.get((uaid, m.channel_id, m.topic)) == version:
            del self._topics[(uaid, m.channel_id, m.topic)]
        if self._store:
            self._store.delete_message(version)
        return m

    def stored_for(self, uaid: str) -> list[StoredMessage]:
        """A uaid's stored messages, oldest first."""
        return list(self.messages.get(uaid, {}).values())

    def stored_count(self) -> int:
        """Messages stored for every uaid."""
        return sum(len(v) for v in self.messages.values())
