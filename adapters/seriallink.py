"""The fieldgate serial link, host side, sans-IO (bytes in -> events out; messages in -> bytes).

The byte-level specification is ``firmware-bridge/PROTOCOL.md``; this module and the C library
in ``firmware-bridge/`` both check themselves against ``firmware-bridge/vectors/link.txt``.

Nothing here reads a clock, a port or a thread: the caller passes ``now`` (any monotonic float
seconds), writes :meth:`LinkEndpoint.data_to_send` to the port, and calls
:meth:`LinkEndpoint.timer_expired` once :meth:`LinkEndpoint.next_deadline` has passed.
"""

from __future__ import annotations

import binascii
import enum
import zlib
from dataclasses import dataclass, field

import msgpack

from fieldgate_common.logs import get_logger

log = get_logger("serial")

PROTOCOL_VERSION = 1
# COBS adds exactly one byte to a body of at most 254 bytes, so a frame is at most 256 bytes on
# the wire with its 0x00 delimiter: one 256-byte receive buffer on the microcontroller.
MAX_BODY = 254
MAX_WIRE = MAX_BODY + 2
HEADER_BYTES = 2  # hdr (version << 4 | type), seq
CRC_BYTES = 2  # CRC-16/CCITT-FALSE, big-endian; PROTOCOL.md argues the choice over CRC-32
MIN_BODY = HEADER_BYTES + CRC_BYTES
MAX_PAYLOAD = MAX_BODY - MIN_BODY  # 250
MID_BYTES = 4  # every DATA payload starts with the 32-bit message id
REASON_MAX = 64  # a REFUSE frame's optional UTF-8 reason is cut to this many bytes
PING_MISSES = 3  # link down after this many unanswered PINGs (ecosystem.md §3.3)


class FrameType(enum.IntEnum):
    """The low nibble of a frame's first byte."""

    DATA = 1  # a whole message, or the last fragment of one
    ACK = 2  # frame arrived intact; for the last fragment: the message was processed OK
    NAK = 3  # the receiver saw a damaged frame: retransmit now instead of waiting for the RTO
    HELLO = 4
    HELLO_ACK = 5
    PING = 6
    PONG = 7
    DATA_MORE = 8  # a fragment with more to follow
    REFUSE = 9  # the device processed the message and refused it: code(1) [reason]


class RefuseCode(enum.IntEnum):
    """Refusal codes below 0x80 are the protocol's; 0x80..0xFF belong to the application."""

    BAD_MESSAGE = 1  # the device could not parse the message (e.g. truncated msgpack)
    TOO_BIG = 2  # larger than the device's message buffer
    BUSY = 3  # transient: try again later (the only code the host retries)


@dataclass(frozen=True)
class Frame:
    """One decoded frame."""

    type: int
    seq: int
    payload: bytes = b""


@dataclass(frozen=True)
class FrameError:
    """A frame that failed a check and was dropped; ``reason`` names the check."""

    reason: str  # "cobs", "short", "crc", "version", "oversize"


# ----------------------------------------------------------------------------------------------
# Codec: COBS, CRC, frames


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection); check value 0x29B1."""
    return binascii.crc_hqx(data, 0xFFFF)


def cobs_encode(data: bytes) -> bytes:
    """Consistent Overhead Byte Stuffing: the result holds no 0x00 (delimiter not included)."""
    out = bytearray()
    i, n = 0, len(data)
    while True:
        j = data.find(0, i, i + 254)
        if j == -1:
            end = min(n, i + 254)
            out.append(end - i + 1)
            out += data[i:end]
            if end == n:
                return bytes(out)
            i = end  # a full 254-byte block (code 0xFF) carries no implied zero
        else:
            out.append(j - i + 1)
            out += data[i:j]
            i = j + 1


def cobs_decode(data: bytes) -> bytes:
    """Undo :func:`cobs_encode`; ``ValueError`` on a zero byte or a block running past the end."""
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        code = data[i]
        end = i + code
        if code == 0 or end > n:
            raise ValueError("bad COBS block")
        block = data[i + 1 : end]
        if 0 in block:
            raise ValueError("zero byte inside COBS data")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def encode_frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    """The wire bytes of one frame, delimiter included."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    body = bytes(((PROTOCOL_VERSION << 4) | ftype, seq & 0xFF)) + payload
    body += crc16(body).to_bytes(2, "big")
    return cobs_encode(body) + b"\x00"


def decode_body(encoded: bytes) -> Frame | FrameError:
    """Check and decode one frame's COBS bytes (between delimiters)."""
    if len(encoded) > MAX_WIRE - 1:
        return FrameError("oversize")
    try:
        body = cobs_decode(encoded)
    except ValueError:
        return FrameError("cobs")
    if len(body) < MIN_BODY:
        return FrameError("short")
    if crc16(body[:-2]) != int.from_bytes(body[-2:], "big"):
        return FrameError("crc")
    if body[0] >> 4 != PROTOCOL_VERSION:
        return FrameError("version")
    return Frame(body[0] & 0x0F, body[1], body[2:-2])


class FrameDecoder:
    """Splits a byte stream at 0x00 delimiters; never holds more than one frame's bytes."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._overflowed = False

    def feed(self, data: bytes) -> list[Frame | FrameError]:
        """Every complete frame (or the reason it was dropped) in arrival order."""
        out: list[Frame | FrameError] = []
        parts = data.split(b"\x00")
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            if not self._overflowed:
                self._buf += part
                if len(self._buf) > MAX_WIRE - 1:
                    self._buf.clear()
                    self._overflowed = True  # skip to the next delimiter: resynchronise
            if last:
                break
            if self._overflowed:
                out.append(FrameError("oversize"))
            elif self._buf:  # empty frames (back-to-back delimiters) are line flushes
                out.append(decode_body(bytes(self._buf)))
            self._buf.clear()
            self._overflowed = False
        return out


def message_id(text: str) -> int:
    """The 32-bit link message id of a journal id: CRC-32 of its UTF-8 bytes.

    The device only compares it against its last few processed ids, so a 1 in 2**32 collision
    chance among a handful of recent messages is the price of 4 bytes per frame.
    """
    return zlib.crc32(text.encode())


# ----------------------------------------------------------------------------------------------
# The link state machine


@dataclass(frozen=True)
class DeviceInfo:
    """What the device announced in HELLO / HELLO_ACK."""

    version: int
    max_payload: int  # largest frame payload it accepts (mid included)
    max_message: int  # largest reassembled message
    firmware: str = ""
    device_id: str = ""
    # Fields whose bytes were not valid UTF-8 ("fw", "id"); shown with U+FFFD. A device name is
    # no reason to lose the link (firmware before 1.1 cut names inside a character).
    damaged: tuple[str, ...] = ()

    def accepts(self, size: int) -> bool:
        """Whether a message of ``size`` bytes fits the device's reassembly buffer."""
        return size <= self.max_message


@dataclass(frozen=True)
class LinkUp:
    """HELLO exchange done; sequence numbers start over."""

    device: DeviceInfo


@dataclass(frozen=True)
class LinkDown:
    """The device stopped answering (or speaks another version); reopen the port."""

    reason: str


@dataclass(frozen=True)
class DeviceRebooted:
    """The device sent an unsolicited HELLO; the endpoint re-handshakes and resends."""


@dataclass(frozen=True)
class MessageAcknowledged:
    """The device processed the message (application ACK)."""

    mid: int


@dataclass(frozen=True)
class MessageRefused:
    """The device (or the host, for a size it cannot take) refused the message."""

    mid: int
    code: int
    reason: str = ""


@dataclass(frozen=True)
class MessageFailed:
    """No answer after ``max_tries``; the message's fate on the device is unknown."""

    mid: int
    reason: str


@dataclass(frozen=True)
class MessageExpired:
    """The message's deadline passed before the device acknowledged it, so none of its frames
    is (re)transmitted any more: a retransmission, a further fragment or a resend after a
    re-handshake would put it on the wire too late. Frames sent before the deadline may still
    have reached the device (an ACK lost, or still coming)."""

    mid: int
    sent_fragments: int  # how many of its fragments went out at least once


Event = (
    LinkUp
    | LinkDown
    | DeviceRebooted
    | MessageAcknowledged
    | MessageRefused
    | MessageFailed
    | MessageExpired
)


class LinkError(RuntimeError):
    """A call the endpoint's state does not allow (not ready, message already in flight)."""


class State(enum.Enum):
    CLOSED = "closed"
    HANDSHAKE = "handshake"
    READY = "ready"
    DOWN = "down"


@dataclass
class _Outstanding:
    kind: FrameType  # HELLO, DATA/DATA_MORE or PING
    seq: int
    wire: bytes
    deadline: float
    tries: int = 1


@dataclass
class _Message:
    mid: int
    payload: bytes
    deadline: float | None = None  # in the caller's ``now`` clock; None: never expires
    fragments: list[bytes] = field(default_factory=list)
    index: int = 0
    sent: int = 0  # fragments transmitted at least once

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


def _device_text(value: object) -> tuple[str, bool]:
    """A HELLO string as text, and whether invalid UTF-8 had to be replaced (with U+FFFD)."""
    if not isinstance(value, str):
        return str(value), False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the bytes surrogateescape could not decode
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), True
    return value, False


def parse_device_info(payload: bytes) -> DeviceInfo:
    """Decode a device's HELLO / HELLO_ACK map; ``ValueError`` when it is not one.

    Invalid UTF-8 in the firmware or id string is replaced, not refused, and named in
    :attr:`DeviceInfo.damaged` (PROTOCOL.md §5).
    """
    try:
        info = msgpack.unpackb(payload, raw=False, unicode_errors="surrogateescape")
    except Exception as exc:
        raise ValueError("HELLO payload is not msgpack") from exc
    if not isinstance(info, dict):
        raise ValueError("HELLO payload is not a map")
    version = info.get("v")
    mp = info.get("mp")
    if not isinstance(version, int) or not isinstance(mp, int):
        raise ValueError("HELLO lacks v or mp")
    mp = max(MID_BYTES + 1, min(mp, MAX_PAYLOAD))
    mm = info.get("mm")
    mm = mm if isinstance(mm, int) and mm >= 0 else mp - MID_BYTES
    raw_fw = info.get("fw", "")
    fw, fw_bad = _device_text(raw_fw) if isinstance(raw_fw, str) else ("", False)
    dev, dev_bad = _device_text(info.get("id", ""))
    damaged = tuple(name for name, bad in (("fw", fw_bad), ("id", dev_bad)) if bad)
    return DeviceInfo(version, mp, mm, fw, dev, damaged)


class LinkEndpoint:
    """The host end of one serial link: stop-and-wait DATA, HELLO, PING, retransmission."""

    def __init__(
        self,
        *,
        ack_timeout: float,
        max_tries: int = 5,
        ping_interval: float = 10.0,
        max_payload: int = MAX_PAYLOAD,
    ) -> None:
        self.ack_timeout = ack_timeout
        self.max_tries = max_tries
        self.ping_interval = ping_interval
        self.max_payload = max_payload  # what the host accepts from the device
        self.state = State.CLOSED
        self.device: DeviceInfo | None = None
        self.counters: dict[str, int] = {}
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._seq = 0
        self._ping_seq = 0
        self._outstanding: _Outstanding | None = None
        self._message: _Message | None = None
        self._last_activity = 0.0
        self._damaged_reported: DeviceInfo | None = None  # log a damaged HELLO once, not per HELLO

    # -- calls from the I/O shell ---------------------------------------------------------------

    def open(self, now: float) -> None:
        """Start the session: a flushing 0x00 then HELLO (also after a reopen)."""
        self._out += b"\x00"
        self._start_handshake(now)

    def data_to_send(self) -> bytes:
        """Bytes to write to the port, in order; empties the outbox."""
        data = bytes(self._out)
        self._out.clear()
        return data

    @property
    def busy(self) -> bool:
        """A message is in flight (or waiting for the link to come back)."""
        return self._message is not None

    def send_message(
        self, mid: int, payload: bytes, now: float, *, deadline: float | None = None
    ) -> list[Event]:
        """Queue one message for the device; its outcome arrives as an event.

        ``deadline`` (in the same clock as ``now``) is the last moment any frame of it may go
        on the wire: no transmission, retransmission or further fragment after it, a
        :class:`MessageExpired` instead (returned at once when it has already passed).
        """
        if self.state is not State.READY or self.device is None:
            raise LinkError(f"link is {self.state.value}")
        if self._message is not None:
            raise LinkError("a message is already in flight (stop-and-wait)")
        if not self.device.accepts(len(payload)):
            raise LinkError(
                f"message of {len(payload)} bytes exceeds the device's {self.device.max_message}"
            )
        self._message = _Message(mid & 0xFFFFFFFF, payload, deadline)
        events: list[Event] = []
        self._send_fragment(0, now, events)
        return events

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """Feed bytes read from the port; returns what they caused."""
        events: list[Event] = []
        for item in self._decoder.feed(data):
            if isinstance(item, FrameError):
                self._count(f"rx_bad_{item.reason}")
                continue
            self._count("rx_frames")
            self._last_activity = now
            self._on_frame(item, now, events)
        return events

    def next_deadline(self) -> float | None:
        """When :meth:`timer_expired` must be called next (``None``: nothing pending)."""
        if self._outstanding is not None:
            return self._outstanding.deadline
        if self.state is State.READY:
            return self._last_activity + self.ping_interval
        return None

    def timer_expired(self, now: float) -> list[Event]:
        """Retransmit, ping, or give up, as the deadline dictates."""
        events: list[Event] = []
        out = self._outstanding
        if out is not None:
            if now < out.deadline:
                return events
            limit = PING_MISSES if out.kind is FrameType.PING else self.max_tries
            if out.tries < limit:
                if self._message_expired(out, now, events):
                    return events
                out.tries += 1
                out.deadline = now + self.ack_timeout
                self._out += out.wire
                self._count("tx_retransmits")
                return events
            self._outstanding = None
            if out.kind is FrameType.HELLO:
                self._go_down("device does not answer HELLO", events)
            elif out.kind is FrameType.PING:
                self._go_down(f"{PING_MISSES} PINGs unanswered", events)
            else:
                self._go_down(f"no ACK after {self.max_tries} tries", events)
            return events
        if self.state is State.READY and now >= self._last_activity + self.ping_interval:
            self._ping_seq = (self._ping_seq + 1) & 0xFF
            wire = encode_frame(FrameType.PING, self._ping_seq)
            self._outstanding = _Outstanding(
                FrameType.PING, self._ping_seq, wire, now + self.ack_timeout
            )
            self._out += wire
        return events

    # -- internals ----------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _start_handshake(self, now: float) -> None:
        self.state = State.HANDSHAKE
        hello = msgpack.packb({"v": PROTOCOL_VERSION, "mp": self.max_payload})
        wire = encode_frame(FrameType.HELLO, 0, hello)
        self._outstanding = _Outstanding(FrameType.HELLO, 0, wire, now + self.ack_timeout)
        self._out += wire

    def _go_down(self, reason: str, events: list[Event]) -> None:
        self.state = State.DOWN
        self._outstanding = None
        if self._message is not None:
            events.append(MessageFailed(self._message.mid, reason))
            self._message = None
        events.append(LinkDown(reason))

    def _message_expired(self, out: _Outstanding, now: float, events: list[Event]) -> bool:
        """Before a DATA frame goes out again: abandon its message when past its deadline."""
        msg = self._message
        if out.kind not in (FrameType.DATA, FrameType.DATA_MORE) or msg is None:
            return False
        if not msg.expired(now):
            return False
        self._abandon(msg, events)
        return True

    def _abandon(self, msg: _Message, events: list[Event]) -> None:
        self._message = None
        if self._outstanding is not None and self._outstanding.kind in (
            FrameType.DATA,
            FrameType.DATA_MORE,
        ):
            self._outstanding = None
        self._count("tx_expired")
        events.append(MessageExpired(msg.mid, msg.sent))

    def _send_fragment(self, index: int, now: float, events: list[Event]) -> None:
        msg = self._message
        assert msg is not None and self.device is not None
        if msg.expired(now):
            self._abandon(msg, events)
            return
        if not msg.fragments:
            size = self.device.max_payload - MID_BYTES
            body = msg.payload
            msg.fragments = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        msg.index = index
        last = index == len(msg.fragments) - 1
        ftype = FrameType.DATA if last else FrameType.DATA_MORE
        seq = self._seq
        self._seq = (self._seq + 1) & 0xFF
        wire = encode_frame(ftype, seq, msg.mid.to_bytes(4, "big") + msg.fragments[index])
        self._outstanding = _Outstanding(ftype, seq, wire, now + self.ack_timeout)
        self._out += wire
        msg.sent = max(msg.sent, index + 1)

    def _on_frame(self, frame: Frame, now: float, events: list[Event]) -> None:
        ftype = frame.type
        out = self._outstanding
        if ftype == FrameType.HELLO:
            # The device booted: both sequence spaces restart; resend what was in flight.
            self._count("device_reboots")
            events.append(DeviceRebooted())
            self._start_handshake(now)
        elif ftype == FrameType.HELLO_ACK:
            if self.state is not State.HANDSHAKE:
                return  # a late duplicate
            try:
                info = parse_device_info(frame.payload)
            except ValueError as exc:
                self._count("rx_bad_hello")
                self._go_down(f"bad HELLO_ACK: {exc}", events)
                return
            if info.version != PROTOCOL_VERSION:
                self._go_down(f"device speaks protocol version {info.version}", events)
                return
            if info.damaged:
                self._count("rx_hello_bad_utf8")
                if info != self._damaged_reported:
                    self._damaged_reported = info
                    log.warning(
                        "device HELLO: %s not valid UTF-8 (device firmware cuts inside a "
                        "character); shown as firmware %r, id %r",
                        " and ".join(info.damaged),
                        info.firmware,
                        info.device_id,
                    )
            self.device = info
            self.state = State.READY
            self._seq = 0
            self._outstanding = None
            events.append(LinkUp(info))
            msg = self._message
            if msg is not None:
                if not info.accepts(len(msg.payload)):
                    self._message = None
                    events.append(
                        MessageRefused(msg.mid, RefuseCode.TOO_BIG, "larger than device buffer")
                    )
                else:
                    msg.fragments = []  # the device may announce another frame size
                    self._send_fragment(0, now, events)
        elif out is None:
            return
        elif ftype == FrameType.NAK:
            # The device saw a damaged frame: resend now rather than at the RTO. It counts as a
            # try, so a line that damages everything still ends in LinkDown.
            if out.kind is not FrameType.PING and out.tries < self.max_tries:
                if self._message_expired(out, now, events):
                    return
                out.tries += 1
                out.deadline = now + self.ack_timeout
                self._count("tx_retransmits")
                self._out += out.wire
        elif self.state is not State.READY:
            return
        elif ftype == FrameType.PONG:
            if out.kind is FrameType.PING and frame.seq == out.seq:
                self._outstanding = None
        elif out.kind not in (FrameType.DATA, FrameType.DATA_MORE) or frame.seq != out.seq:
            return  # a stale answer to an earlier try
        elif ftype == FrameType.ACK:
            msg = self._message
            assert msg is not None
            self._outstanding = None
            if msg.index + 1 < len(msg.fragments):
                self._send_fragment(msg.index + 1, now, events)
            else:
                self._message = None
                events.append(MessageAcknowledged(msg.mid))
        elif ftype == FrameType.REFUSE:
            msg = self._message
            assert msg is not None
            self._outstanding = None
            self._message = None
            code = frame.payload[0] if frame.payload else 0
            reason = frame.payload[1 : 1 + REASON_MAX].decode("utf-8", "replace")
            events.append(MessageRefused(msg.mid, code, reason))
