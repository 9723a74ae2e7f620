"""What a connection reads reaches its protocol in slices, with the other tasks run in between."""

from __future__ import annotations

import pytest
import trio

from gateway.upstream.feeding import FEED_SLICE, feed_in_slices


@pytest.mark.parametrize(
    "size", [0, 1, FEED_SLICE - 1, FEED_SLICE, FEED_SLICE + 1, 8 * FEED_SLICE, 8 * FEED_SLICE - 3]
)
async def test_every_byte_is_fed_once_in_order_in_slices_with_other_tasks_between(
    size: int,
) -> None:
    data = bytes(i % 251 for i in range(size))
    log: list[object] = []

    async def other_task() -> None:
        while True:  # runs whenever the feeding lets it: marks where it did
            log.append("other")
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(other_task)
        await trio.lowlevel.checkpoint()  # the other task has started
        log.clear()
        await feed_in_slices(data, log.append)
        nursery.cancel_scope.cancel()
    at = [i for i, entry in enumerate(log) if isinstance(entry, bytes)]
    pieces = [log[i] for i in at]
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= FEED_SLICE for p in pieces) or pieces == [b""]
    assert len(pieces) == max(1, -(-size // FEED_SLICE))
    # trio runs every runnable task once per scheduling round, in an order it shuffles: the
    # slices fed in rounds 2 .. K-1 of K leave the other task's steps of those rounds between
    # the first slice and the last (fed at once, it would get none).
    steps_during = log[at[0] : at[-1]].count("other")
    assert steps_during >= len(at) - 2


async def test_cancelled_between_slices_the_rest_is_not_fed() -> None:
    data = b"x" * (3 * FEED_SLICE)
    fed: list[bytes] = []
    with trio.CancelScope() as scope:

        def feed(piece: bytes) -> None:
            fed.append(piece)
            scope.cancel()  # the connection ends while the first slice is handled

        await feed_in_slices(data, feed)
    assert fed == [data[:FEED_SLICE]]
