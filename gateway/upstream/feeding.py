"""Handing what a connection read to its sans-IO protocol without holding the event loop.

One read of :data:`READ_CHUNK` bytes from a push service with a backlog holds ~300 pushed
messages, and the protocol's events are handled in the same step (each message decrypted and
queued for the journal): ~25-40 ms of the trio thread here, several times that on a Raspberry
Pi, during which no other task runs. The router published a message or two per read and the broker's
answers waited (bench e2e, a drain of 3,000: almost no delivery for 0.6 s while ~2,200 were
taken in, the rest after them). Fed in slices with a checkpoint between them, the other tasks
get a turn every few milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

# Bytes asked of the socket per read: one syscall takes a backlog's worth at once.
READ_CHUNK = 64 * 1024
# Bytes handed to the protocol at a time: ~35 pushed messages of the usual size (a ~220-byte
# PUSH_PROMISE + HEADERS + DATA each), ~5 ms of work on the development machine; small enough
# that a delivery or an MQTT PUBACK waits no longer than that, big enough that the
# checkpoints cost nothing measurable (one per slice).
FEED_SLICE = 8 * 1024


async def feed_in_slices(data: bytes, feed: Callable[[bytes], None]) -> None:
    """Call ``feed`` with ``data`` in FEED_SLICE pieces, in order, letting the other tasks run
    between them (``feed`` is called once, with ``b""``, for an empty read: the end of the
    stream). Cancelled in between, the rest is not fed: the connection is ending, and what it
    held was not acknowledged, so the service delivers it again."""
    feed(data[:FEED_SLICE])
    for offset in range(FEED_SLICE, len(data), FEED_SLICE):
        await trio.lowlevel.checkpoint()
        feed(data[offset : offset + FEED_SLICE])


async def feed_until_closed(stream: trio.abc.ReceiveStream, feed: Callable[[bytes], None]) -> None:
    """Read ``stream`` until it ends, each read handed to ``feed`` by :func:`feed_in_slices`
    (the end as ``b""``)."""
    while True:
        data = bytes(await stream.receive_some(READ_CHUNK))
        await feed_in_slices(data, feed)
        if not data:
            return
