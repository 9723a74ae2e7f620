"""The record salts of recently journalled messages, per route: a replay is recognised by them.

An ``aes128gcm`` body starts with a 16-byte random salt (RFC 8188 §2.1) from which the content
key and nonce derive, so two messages for one subscription never share it, while the same
ciphertext POSTed again (a replay: a new push message with a new URL) carries the same one.

Memory is bounded: a 64-bit digest of (route, salt) for each of the last :data:`MAX_SALTS`
journalled messages, in a ring and a :class:`~gateway.digest_table.DigestTable` (~2.6 MB when
full, preallocated). The store keeps the
same digests on disk (append-only, so a restart remembers them) and prunes them past that count
or past ``journal.dedupe_retention``. A replay is therefore recognised while its original is among
the last 65,536 messages and younger than the dedupe retention.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Sequence

from gateway.digest_table import DigestTable

# ~18 hours of messages at one a second, ~15 hours at the 100,000 a day the dedupe index is
# sized for; 8 bytes of ring and 16-32 bytes of table per digest.
MAX_SALTS = 65_536


def salt_key(route: str, salt: bytes) -> int:
    """The digest of a route's record salt: a signed 64-bit integer, as SQLite stores one.

    Two different salts share it with probability ~n / 2^64 per message: about 4e-15 with
    :data:`MAX_SALTS` remembered.
    """
    digest = hashlib.blake2b(route.encode() + b"\x00" + salt, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class RecentSalts:
    """The last ``limit`` salt digests, oldest evicted first."""

    def __init__(self, oldest_first: Iterable[int] = (), limit: int = MAX_SALTS) -> None:
        self.limit = limit
        self._ring = array("q", bytes(8 * limit))  # the digests in arrival order, from _oldest
        self._oldest = 0
        self._count = 0
        self._keys = DigestTable()  # the same digests (values unused), for membership
        for key in oldest_first:
            self.add(key)

    def __contains__(self, key: int) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return self._count

    def add(self, key: int) -> None:
        """Remember ``key`` (it is new); forget the oldest beyond the limit."""
        if key in self._keys:
            return
        if self._count == self.limit:
            self._keys.pop(self._ring[self._oldest])
            self._oldest = (self._oldest + 1) % self.limit
            self._count -= 1
        self._ring[(self._oldest + self._count) % self.limit] = key
        self._count += 1
        self._keys[key] = 0

    def forget_newest(self, keys: Sequence[int]) -> None:
        """Undo :meth:`add` of ``keys`` (their transaction rolled back)."""
        for key in reversed(keys):
            newest = (self._oldest + self._count - 1) % self.limit
            if self._count and self._ring[newest] == key:
                self._count -= 1
                self._keys.pop(key)
