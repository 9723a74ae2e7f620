"""A map from 64-bit digests to 64-bit integers in two flat arrays: ~30-50 bytes an entry.

The dedupe index holds one entry per recent message — tens of thousands at a few hundred
messages a second. A Python ``dict[int, int]`` spends ~140 bytes on each (two
int objects, an entry, its share of the over-allocated table); this table spends 16 bytes a
slot with at most :data:`MAX_LOAD` of them used (30-60% once grown), so resident memory follows
the backlog at a third to a fifth of the cost.

Open addressing with linear probing over ``array('q')`` keys and values; deletion shifts the
rest of a cluster back (no tombstones, so a long-running table never degrades). The keys are
digests (blake2b output), so their low bits are already uniform and serve as the hash. Key 0
marks an empty slot and is kept beside the arrays.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator

# Probes stay short while at most 60% of the slots are used (linear probing's expected probes
# for a miss are ~(1 + 1/(1-a)^2)/2: 3.6 at 0.6); below 1/8 the table halves.
MAX_LOAD = 0.6
MIN_LOAD = 0.125
MIN_CAPACITY = 1024  # 16 KiB: never worth shrinking below

_EMPTY = 0
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def digest64(data: bytes) -> int:
    """blake2b of ``data`` as a signed 64-bit integer (what the table and SQLite hold)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def _slots(capacity: int) -> array[int]:
    return array("q", bytes(8 * capacity))


class DigestTable:
    """``digest -> value`` for signed 64-bit digests and values, with a dict's basic API."""

    __slots__ = ("_keys", "_mask", "_used", "_values", "_zero")

    def __init__(self, items: Iterable[tuple[int, int]] = ()) -> None:
        self._keys = _slots(MIN_CAPACITY)
        self._values = _slots(MIN_CAPACITY)
        self._mask = MIN_CAPACITY - 1
        self._used = 0  # occupied slots (key 0 not among them)
        self._zero: int | None = None  # the value of key 0, which cannot sit in a slot
        self.update(items)

    def __len__(self) -> int:
        return self._used + (self._zero is not None)

    @property
    def capacity(self) -> int:
        """Slots allocated (memory is 16 bytes each)."""
        return self._mask + 1

    def _slot(self, key: int) -> int:
        """Where ``key`` is, or the empty slot where it would go."""
        keys, mask = self._keys, self._mask
        slot = key & mask
        while True:
            found = keys[slot]
            if found in (key, _EMPTY):
                return slot
            slot = (slot + 1) & mask

    def get(self, key: int, default: int | None = None) -> int | None:
        """The value of ``key``, or ``default``."""
        if key == _EMPTY:
            return default if self._zero is None else self._zero
        slot = self._slot(key)
        return self._values[slot] if self._keys[slot] == key else default

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int):
            return False
        if key == _EMPTY:
            return self._zero is not None
        return self._keys[self._slot(key)] == key

    def __getitem__(self, key: int) -> int:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: int, value: int) -> None:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise OverflowError(f"value {value} does not fit in 64 bits")
        if key == _EMPTY:
            self._zero = value
            return
        slot = self._slot(key)
        if self._keys[slot] == key:
            self._values[slot] = value
            return
        self._keys[slot] = key  # raises OverflowError for a key beyond 64 bits
        self._values[slot] = value
        self._used += 1
        if self._used > MAX_LOAD * (self._mask + 1):
            self._resize((self._mask + 1) * 2)

    def update(self, items: Iterable[tuple[int, int]]) -> None:
        """Set each ``(key, value)`` pair."""
        for key, value in items:
            self[key] = value

    def pop(self, key: int, default: int | None = None) -> int | None:
        """Remove ``key``; its value, or ``default`` when it was not there."""
        if key == _EMPTY:
            value, self._zero = self._zero, None
            return default if value is None else value
        slot = self._slot(key)
        if self._keys[slot] != key:
            return default
        value = self._values[slot]
        self._delete_at(slot)
        if self._used < MIN_LOAD * (self._mask + 1) and self._mask + 1 > MIN_CAPACITY:
            self._resize((self._mask + 1) // 2)
        return value

    def __delitem__(self, key: int) -> None:
        if key not in self:
            raise KeyError(key)
        self.pop(key)

    def _delete_at(self, hole: int) -> None:
        """Empty ``hole`` and shift back the entries after it that probed past it."""
        keys, values, mask = self._keys, self._values, self._mask
        slot = hole
        while True:
            slot = (slot + 1) & mask
            key = keys[slot]
            if key == _EMPTY:
                break
            # The entry at ``slot`` may move into the hole only if the hole lies on its probe
            # path, i.e. its home is no further along than the hole (cyclically).
            if (slot - (key & mask)) & mask >= (slot - hole) & mask:
                keys[hole], values[hole] = key, values[slot]
                hole = slot
        keys[hole] = values[hole] = _EMPTY
        self._used -= 1

    def _resize(self, capacity: int) -> None:
        old = zip(self._keys, self._values, strict=True)
        keys, values, mask = _slots(capacity), _slots(capacity), capacity - 1
        for key, value in old:
            if key != _EMPTY:
                slot = key & mask
                while keys[slot] != _EMPTY:
                    slot = (slot + 1) & mask
                keys[slot], values[slot] = key, value
        self._keys, self._values, self._mask = keys, values, mask

    def items(self) -> Iterator[tuple[int, int]]:
        """Every ``(key, value)``, in no particular order."""
        if self._zero is not None:
            yield _EMPTY, self._zero
        for key, value in zip(self._keys, self._values, strict=True):
            if key != _EMPTY:
                yield key, value
