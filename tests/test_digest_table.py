"""The digest table against a dict doing the same operations (pure logic, no I/O)."""

from __future__ import annotations

import random
from collections import deque

import pytest

from gateway.digest_table import MAX_LOAD, MIN_CAPACITY, DigestTable
from gateway.salt_memory import RecentSalts

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def agrees(table: DigestTable, model: dict[int, int]) -> None:
    assert len(table) == len(model)
    assert dict(table.items()) == model
    assert table.capacity >= MIN_CAPACITY
    assert len(table) <= MAX_LOAD * table.capacity + 1  # key 0 sits beside the slots


@pytest.mark.parametrize("seed", range(4))
def test_random_operations_match_a_dict(seed: int) -> None:
    rng = random.Random(seed)
    # A small key space, many of them sharing low bits: collisions, long clusters, wrap-around.
    keys = [
        rng.randrange(64) * MIN_CAPACITY * rng.choice((1, -1)) + rng.randrange(8)
        for _ in range(300)
    ]
    keys += [0, INT64_MIN, INT64_MAX, -1, MIN_CAPACITY - 1]
    table, model = DigestTable(), dict[int, int]()
    for step in range(20_000):
        key, operation = rng.choice(keys), rng.random()
        if operation < 0.45:
            value = rng.randrange(INT64_MIN, INT64_MAX + 1)
            table[key] = value
            model[key] = value
        elif operation < 0.8:
            assert table.pop(key, -7) == model.pop(key, -7)
        elif operation < 0.9:
            assert (key in table) == (key in model)
            assert table.get(key) == model.get(key)
        else:
            if key in model:
                assert table[key] == model[key]
                del table[key]
                del model[key]
            else:
                with pytest.raises(KeyError):
                    del table[key]
                with pytest.raises(KeyError):
                    table[key]
        if step % 1_000 == 0:
            agrees(table, model)
    agrees(table, model)


def test_it_grows_and_shrinks_with_what_it_holds() -> None:
    rng = random.Random(7)
    digests = [rng.randrange(INT64_MIN, INT64_MAX + 1) for _ in range(50_000)]
    table = DigestTable((digest, n) for n, digest in enumerate(digests))
    model = {digest: n for n, digest in enumerate(digests)}
    agrees(table, model)
    grown = table.capacity
    assert grown <= len(table) / MAX_LOAD * 2
    for digest in digests[:49_900]:
        assert table.pop(digest) == model.pop(digest)
    agrees(table, model)
    assert table.capacity < grown // 16  # memory followed the entries back down
    assert all(table[digest] == n for digest, n in model.items())


def test_what_does_not_fit_in_64_bits_is_refused_and_changes_nothing() -> None:
    table = DigestTable([(5, 1)])
    with pytest.raises(OverflowError):
        table[2**63] = 1
    with pytest.raises(OverflowError):
        table[6] = 2**63
    assert dict(table.items()) == {5: 1}
    assert "5" not in table and 2**64 not in table


def test_recent_salts_keep_the_newest_and_undo_a_rolled_back_add() -> None:
    recent = RecentSalts(range(10), limit=4)
    assert [key in recent for key in range(10)] == [False] * 6 + [True] * 4
    recent.add(7)  # already there: the order does not change
    recent.add(10)
    assert 6 not in recent and 7 in recent and len(recent) == 4
    recent.add(11)
    recent.forget_newest([10, 11])
    assert 10 not in recent and 11 not in recent and len(recent) == 2
    recent.add(12)
    recent.add(13)
    recent.add(14)
    assert [key in recent for key in (8, 9, 12, 13, 14)] == [False, True, True, True, True]


@pytest.mark.parametrize("seed", range(4))
def test_recent_salts_match_a_queue_and_a_set(seed: int) -> None:
    rng = random.Random(seed)
    limit = rng.choice((1, 3, 17, 64))
    # Few distinct low bits: long probe runs that wrap around the table's end.
    keys = [rng.randrange(-(2**20), 2**20) * 256 + rng.randrange(4) for _ in range(3 * limit)]
    recent, order, present = RecentSalts(limit=limit), deque[int](), set[int]()
    for _ in range(5_000):
        if rng.random() < 0.8:
            key = rng.choice(keys)
            recent.add(key)
            if key not in present:
                present.add(key)
                order.append(key)
                if len(order) > limit:
                    present.discard(order.popleft())
        else:
            newest = list(order)[-rng.randrange(1, 3) :]
            recent.forget_newest(newest)
            for key in reversed(newest):
                order.pop()
                present.discard(key)
        assert len(recent) == len(order)
        assert [key for key in keys if key in recent] == [key for key in keys if key in present]
