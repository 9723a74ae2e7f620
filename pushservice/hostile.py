"""Hostile push service behaviours, for proving that a user agent survives a malicious peer.

Each behaviour is switched on with ``faults.hostile(kind)`` (``faults.hostile(None)`` behaves
again) and acts on every HTTP/2 connection once that connection has a monitoring GET open:

* ``oversized_frame``: a DATA frame announcing the largest length the 24-bit field allows
  (16 MiB), its payload sent in full, on the monitor stream;
* ``oversized_headers``: a HEADERS frame followed by CONTINUATION frames, a header block of
  several MiB that never ends;
* ``hpack_bomb``: one header block that inserts a ~4 KiB entry in the HPACK dynamic table and
  then references it thousands of times (16 KiB on the wire, ~50 MB decoded);
* ``promise_flood``: thousands of PUSH_PROMISEs, never answered;
* ``unanswered_promises``: a few PUSH_PROMISEs for paths the service never answers;
* ``endless_body``: a pushed response whose body trickles in, a byte at a time, forever;
* ``slow_loris``: everything the service writes goes out one byte at a time, slowly;
* ``flip_set``: every monitoring GET is answered at once, alternately 404 and 200.

Raw frames are written between h2's own writes (under the session's send lock), so they land on
frame boundaries; the behaviours that break HPACK or stream state leave a connection that the
user agent must close, which is the point.
"""

from __future__ import annotations

import itertools
import struct
from typing import Literal, get_args

import h2.exceptions
import trio

from pushservice.http import Response
from pushservice.session_api import HostileSession

HostileKind = Literal[
    "oversized_frame",
    "oversized_headers",
    "hpack_bomb",
    "promise_flood",
    "unanswered_promises",
    "endless_body",
    "slow_loris",
    "flip_set",
]
HOSTILE_KINDS: tuple[str, ...] = get_args(HostileKind)

# HTTP/2 frame types and flags (RFC 9113 §6).
DATA, HEADERS, CONTINUATION = 0x0, 0x1, 0x9
END_STREAM, END_HEADERS = 0x1, 0x4
# The frame length field has 24 bits (RFC 9113 §4.1): the largest frame a peer can announce.
MAX_FRAME_LENGTH = (1 << 24) - 1
# Frames we write ourselves stay within the default SETTINGS_MAX_FRAME_SIZE (RFC 9113 §6.5.2).
SAFE_FRAME = 16384
# oversized_headers: CONTINUATION frames sent; h2 gives up after 64 (CONTINUATION_BACKLOG), a
# careless peer would buffer all of them (this many x 16 KiB).
HEADER_BLOCK_FRAMES = 256
# hpack_bomb: the entry fills most of the default 4096-octet dynamic table (RFC 7541 §4.1 adds
# 32 octets per entry); each reference to it is one octet (indexed field, index 62).
BOMB_VALUE_BYTES = 4000
BOMB_REFERENCES = 12000
# promise_flood: promises per connection; far above any sane SETTINGS_MAX_CONCURRENT_STREAMS.
FLOOD_PROMISES = 5000
# unanswered_promises: few enough to fit any client's concurrency limit.
UNANSWERED_PROMISES = 5
# endless_body / slow_loris: one byte per this many seconds.
TRICKLE_INTERVAL = 0.05
ENDLESS_BODY_LENGTH = 1000
# How often a connection under attack looks for an open monitor to act on.
POLL_INTERVAL = 0.02


def frame(
    kind: int, flags: int, stream_id: int, payload: bytes, length: int | None = None
) -> bytes:
    """One raw HTTP/2 frame; ``length`` may lie about the payload's size."""
    size = len(payload) if length is None else length
    return (
        struct.pack(">I", size)[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + (payload)
    )


def _literal_never_indexed(name: bytes, value_length: int) -> bytes:
    """HPACK literal field, never indexed, new name (RFC 7541 §6.2.3); value of ``x`` octets."""
    return b"\x10" + _hpack_int(len(name), 7) + name + _hpack_int(value_length, 7)


def _hpack_int(value: int, prefix_bits: int) -> bytes:
    """HPACK integer (RFC 7541 §5.1) with a zero first-octet prefix (no Huffman)."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([value])
    out = bytearray([limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def hpack_bomb_block() -> bytes:
    """A header block: ``:status 200``, a big dynamic-table entry, then many references to it."""
    name = b"x-bomb"
    insert = b"\x40" + _hpack_int(len(name), 7) + name + _hpack_int(BOMB_VALUE_BYTES, 7)
    insert += b"a" * BOMB_VALUE_BYTES
    return b"\x88" + insert + b"\xbe" * BOMB_REFERENCES  # 0x88 = :status 200, 0xbe = index 62


class Hostility:
    """The current hostile behaviour; owned by :class:`~pushservice.faults.Faults`."""

    def __init__(self) -> None:
        self.kind: HostileKind | None = None
        self._changed = trio.Event()
        self._flip = itertools.count()

    def set(self, kind: str | None) -> None:
        if kind is not None and kind not in HOSTILE_KINDS:
            raise ValueError(f"hostile kind must be one of {HOSTILE_KINDS}")
        self.kind = kind  # type: ignore[assignment]
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    # -- hooks the session calls ---------------------------------------------------------------
    async def send(self, session: HostileSession, data: bytes) -> None:
        """Write ``data`` to the session's stream (a byte at a time under slow_loris)."""
        view = memoryview(data)
        while view:
            if self.kind != "slow_loris":
                await session.stream.send_all(view)
                return
            await session.stream.send_all(view[:1])
            view = view[1:]
            await trio.sleep(TRICKLE_INTERVAL)

    def answer_monitor(self, session: HostileSession, stream_id: int) -> bool:
        """Under flip_set, answer a monitoring GET at once (404, 200, 404, ...); True if done."""
        if self.kind != "flip_set":
            return False
        session.respond(stream_id, Response(404 if next(self._flip) % 2 == 0 else 200))
        return True

    async def act(self, session: HostileSession) -> None:
        """Run beside a session: attack each connection once per behaviour switched on."""
        done: set[str] = set()
        while not session.closed:
            kind = self.kind
            monitor = session.monitor_stream()
            if kind is None or kind in done or kind == "slow_loris":
                await self.changed()
                continue
            if monitor is None:
                await trio.sleep(POLL_INTERVAL)
                continue
            done.add(kind)
            try:
                await _ATTACKS[kind](self, session, monitor)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return  # the user agent hung up: what a hostile peer should get


async def _raw(session: HostileSession, data: bytes) -> None:
    # Flush what h2 queued first, so our bytes start on a frame boundary after it.
    await session.send_raw(session.conn.data_to_send() + data)


async def _oversized_frame(hostility: Hostility, session: HostileSession, stream_id: int) -> None:
    header = frame(DATA, 0, stream_id, b"", length=MAX_FRAME_LENGTH)
    await _raw(session, header)
    chunk = bytes(SAFE_FRAME * 4)
    for _ in range(MAX_FRAME_LENGTH // len(chunk)):
        await session.send_raw(chunk)
    await session.send_raw(bytes(MAX_FRAME_LENGTH % len(chunk)))


async def _oversized_headers(hostility: Hostility, session: HostileSession, stream_id: int) -> None:
    total = HEADER_BLOCK_FRAMES * SAFE_FRAME
    first = b"\x88" + _literal_never_indexed(b"x-junk", total)
    await _raw(session, frame(HEADERS, 0, stream_id, first))
    filler = b"j" * SAFE_FRAME
    for _ in range(HEADER_BLOCK_FRAMES):
        await session.send_raw(frame(CONTINUATION, 0, stream_id, filler))


async def _hpack_bomb(hostility: Hostility, session: HostileSession, stream_id: int) -> None:
    block = hpack_bomb_block()
    assert len(block) <= SAFE_FRAME
    await _raw(session, frame(HEADERS, END_HEADERS | END_STREAM, stream_id, block))


def _promise(session: HostileSession, parent: int, path: str) -> int | None:
    """Send a PUSH_PROMISE through h2 (queued, not written); the promised id or None."""
    promised = session.conn.get_next_available_stream_id()
    headers = [(":method", "GET"), (":path", path), (":authority", "hostile"), (":scheme", "http")]
    try:
        session.conn.push_stream(parent, promised, headers)
    except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
        return None
    return promised


async def _promise_flood(hostility: Hostility, session: HostileSession, stream_id: int) -> None:
    for n in range(FLOOD_PROMISES):
        if _promise(session, stream_id, f"/m/flood-{n}") is None:
            return
        if n % 100 == 99:
            await session.send_raw(session.conn.data_to_send())
    await session.send_raw(session.conn.data_to_send())


async def _unanswered_promises(
    hostility: Hostility, session: HostileSession, stream_id: int
) -> None:
    for n in range(UNANSWERED_PROMISES):
        _promise(session, stream_id, f"/m/never-{n}")
    await session.send_raw(session.conn.data_to_send())


async def _endless_body(hostility: Hostility, session: HostileSession, stream_id: int) -> None:
    promised = _promise(session, stream_id, "/m/endless")
    if promised is None:
        return
    session.conn.send_headers(
        promised,
        [(":status", "200"), ("content-length", str(ENDLESS_BODY_LENGTH))],
    )
    await session.send_raw(session.conn.data_to_send())
    # Never more than the announced length, never the end: only the UA's patience ends this.
    for _ in range(ENDLESS_BODY_LENGTH - 1):
        if hostility.kind != "endless_body":
            return
        try:
            session.conn.send_data(promised, b"x")
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return  # reset by the user agent
        await session.send_raw(session.conn.data_to_send())
        await trio.sleep(TRICKLE_INTERVAL)


async def _flip_set(hostility: Hostility, session: HostileSession, stream_id: int) -> None:
    # The monitor already held open flips too; new ones are answered by answer_monitor.
    session.end_monitor(stream_id, 404)


_ATTACKS = {
    "flip_set": _flip_set,
    "oversized_frame": _oversized_frame,
    "oversized_headers": _oversized_headers,
    "hpack_bomb": _hpack_bomb,
    "promise_flood": _promise_flood,
    "unanswered_promises": _unanswered_promises,
    "endless_body": _endless_body,
}
