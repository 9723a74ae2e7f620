"""The record salts of recently journalled messages, per route: a replay is recognised by them.

An ``aes128gcm`` body starts with a 16-byte random salt (RFC 8188 §2.1) from which the content
key and nonce derive, so two messages for one subscription never share it, while the same
ciphertext POSTed again (a replay: a new push message with a new URL) carries the same one.

Memory is bounded: a 64-bit digest of (route, salt) for each of the last :data:`MAX_SALTS`
journalled messages, in a ring and a table of positions in it (1 MB, allocated at start). The
store keeps the same digests on disk, so a restart remembers them: in each message's journal row,
then, once the row is forgotten, in an append-only table that it prunes past that count or past
``journal.dedupe_retention``. A replay is therefore recognised while its
original is among the last 65,536 messages and younger than the dedupe retention.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

from gateway.digest_table import digest64

# ~18 hours of messages at one a second, ~15 hours at the 100,000 a day the dedupe index is
# sized for.
MAX_SALTS = 65_536


def salt_key(route: str, salt: bytes) -> int:
    """The digest of a route's record salt: a signed 64-bit integer, as SQLite stores one.

    Two different salts share it with probability ~n / 2^64 per message: about 4e-15 with
    :data:`MAX_SALTS` remembered.
    """
    return digest64(route.encode() + b"\x00" + salt)


class RecentSalts:
    """The last ``limit`` salt digests, oldest evicted first.

    A ring of the digests in arrival order, and for lookups an open-addressed table (linear
    probing, at most half full) of positions in that ring: 8 + 8 bytes a digest (4-byte slots),
    against ~80 in a Python set and a deque.
    """

    def __init__(self, oldest_first: Iterable[int] = (), limit: int = MAX_SALTS) -> None:
        self.limit = limit
        self._ring = array("q", bytes(8 * limit))
        self._oldest = 0  # ring position of the oldest digest
        self._count = 0
        capacity = 1 << (2 * limit - 1).bit_length()  # >= 2 * limit: at most half full
        self._slots = array("i", bytes(4 * capacity))  # 1 + a ring position; 0: empty
        self._mask = capacity - 1
        for key in oldest_first:
            self.add(key)

    def _slot(self, key: int) -> int:
        """The slot that points at ``key``, or the empty one where it would go. (Digests are
        uniform: their low bits are the hash.)"""
        slots, ring, mask = self._slots, self._ring, self._mask
        slot = key & mask
        while (position := slots[slot]) and ring[position - 1] != key:
            slot = (slot + 1) & mask
        return slot

    def __contains__(self, key: int) -> bool:
        return self._slots[self._slot(key)] != 0

    def __len__(self) -> int:
        return self._count

    def add(self, key: int) -> None:
        """Remember ``key`` (it is new); forget the oldest beyond the limit."""
        if key in self:
            return
        if self._count == self.limit:
            self._remove(self._ring[self._oldest])
            self._oldest = (self._oldest + 1) % self.limit
            self._count -= 1
        position = (self._oldest + self._count) % self.limit
        self._ring[position] = key
        self._slots[self._slot(key)] = position + 1
        self._count += 1

    def forget_newest(self, keys: Sequence[int]) -> None:
        """Undo :meth:`add` of ``keys`` (their transaction rolled back)."""
        for key in reversed(keys):
            newest = (self._oldest + self._count - 1) % self.limit
            if self._count and self._ring[newest] == key:
                self._remove(key)
                self._count -= 1

    def _remove(self, key: int) -> None:
        """Empty ``key``'s slot and shift back the entries after it that probed past it."""
        slots, ring, mask = self._slots, self._ring, self._mask
        hole = slot = self._slot(key)
        while position := slots[slot := (slot + 1) & mask]:
            # It may fill the hole only if the hole is on its probe path from its home.
            if (slot - (ring[position - 1] & mask)) & mask >= (slot - hole) & mask:
                slots[hole] = position
                hole = slot
        slots[hole] = 0
