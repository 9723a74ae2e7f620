"""The link-level transcript vectors (firmware-bridge/vectors/transcripts.txt), written readably.

Each transcript boots a fresh device and lists what the host writes and exactly what the device
must write back (PROTOCOL.md §9). The expected answers are written here by hand from the spec;
only the byte encoding of each frame is computed (by ``adapters.seriallink``, whose encoder the
``frame`` vectors pin to hand-computed bytes). ``tests/test_link_vectors.py`` checks that the
committed file is this module's output, and runs every transcript against the C library (via
the device simulator on a pty); ``firmware-bridge/tests/test_fb.c`` runs them in C, on the host
and on a simulated ATmega328P.

Regenerate with
``.venv/bin/python -m tests.link_transcripts > firmware-bridge/vectors/transcripts.txt``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import msgpack

from adapters import seriallink as sl

T = sl.FrameType
HOST_HELLO = msgpack.packb({"v": 1, "mp": sl.MAX_PAYLOAD})


def data(seq: int, mid: int, message: bytes, *, more: bool = False) -> bytes:
    """A DATA (or DATA_MORE) frame: the 4-byte message id, then the message or a fragment."""
    return sl.encode_frame(T.DATA_MORE if more else T.DATA, seq, mid.to_bytes(4, "big") + message)


def frame(ftype: int, seq: int, payload: bytes = b"") -> bytes:
    return sl.encode_frame(ftype, seq, payload)


def damaged(wire: bytes) -> bytes:
    """The frame with one bit of its last CRC byte flipped (still COBS-valid: no new zero)."""
    out = bytearray(wire)
    out[-2] ^= 0x01 if out[-2] != 0x01 else 0x02
    return bytes(out)


def refuse(seq: int, code: int) -> bytes:
    return frame(T.REFUSE, seq, bytes([code]))


@dataclass
class Transcript:
    """One device, booted with these settings, and the exchange that follows."""

    name: str
    about: str
    mp: int = 32
    mm: int = 64
    fw: str = "vec-1.0"
    dev: str = "dev-1"
    announce_fw: str | None = None  # the strings as the device must announce them (cut)
    announce_id: str | None = None
    steps: list[tuple[str, bytes, bytes]] = field(default_factory=list)

    def hello_map(self) -> bytes:
        fw = self.fw if self.announce_fw is None else self.announce_fw
        dev = self.dev if self.announce_id is None else self.announce_id
        mm = max(self.mm, self.mp - sl.MID_BYTES)
        return msgpack.packb({"v": 1, "mp": self.mp, "mm": mm, "fw": fw, "id": dev})

    def boot(self) -> bytes:
        """What the device writes when it boots: a flushing 0x00 and an unsolicited HELLO."""
        return b"\x00" + frame(T.HELLO, 0, self.hello_map())

    def hello_ack(self, seq: int = 0) -> bytes:
        return frame(T.HELLO_ACK, seq, self.hello_map())

    def step(self, note: str, host: bytes, device: bytes) -> Transcript:
        self.steps.append((note, host, device))
        return self

    def session(self, seq: int = 0) -> Transcript:
        """The host's HELLO (after a flushing 0x00) and the device's HELLO_ACK."""
        return self.step(
            "host HELLO opens a session",
            b"\x00" + frame(T.HELLO, seq, HOST_HELLO),
            self.hello_ack(seq),
        )

    def lines(self) -> list[str]:
        opts = f"mp={self.mp} mm={self.mm} fw={self.fw} id={self.dev}"
        out = [f"# {self.about}", f"transcript {self.name} {opts}"]
        out += ["# boot: 0x00, then an unsolicited HELLO", f"device {self.boot().hex()}"]
        for note, host, device in self.steps:
            out += [f"# {note}", f"host {host.hex() or '-'}", f"device {device.hex() or '-'}"]
        return out


def transcripts() -> list[Transcript]:
    """Every transcript, in file order."""
    out = []

    t = Transcript("no_session", "Before the host's HELLO the device processes nothing (§5).")
    t.step(
        "DATA before any HELLO: answered with the device's HELLO, not processed",
        data(0, 1, b"hi"),
        frame(T.HELLO, 0, t.hello_map()),
    )
    t.step("PING before any HELLO: HELLO again", frame(T.PING, 5), frame(T.HELLO, 0, t.hello_map()))
    t.step("a damaged frame before any HELLO: no NAK", damaged(data(0, 1, b"hi")), b"")
    t.step(
        "device-to-host frame types from the host are ignored",
        frame(T.ACK, 0) + frame(T.PONG, 1),
        b"",
    )
    t.session()
    t.step("now the same DATA is processed: ACK", data(0, 1, b"hi"), frame(T.ACK, 0))
    t.step("PING: PONG with the PING's seq", frame(T.PING, 6), frame(T.PONG, 6))
    out.append(t)

    t = Transcript("hello_map_not_read", "The device does not read the host's HELLO map (§5).")
    t.step("HELLO with an empty payload: HELLO_ACK", frame(T.HELLO, 0), t.hello_ack(0))
    t.step(
        "HELLO announcing v 2: HELLO_ACK all the same (the host checks the device's v)",
        frame(T.HELLO, 0, msgpack.packb({"v": 2, "mp": 9})),
        t.hello_ack(0),
    )
    t.step(
        "HELLO with a payload that is not msgpack, seq 7: HELLO_ACK with seq 7",
        frame(T.HELLO, 7, b"\xc1\xc1"),
        t.hello_ack(7),
    )
    out.append(t)

    t = Transcript("duplicates", "Seq dedupe, then message-id dedupe (§6).")
    t.session()
    t.step("DATA seq 0, mid 0x0a: processed, ACK", data(0, 0x0A, b"one"), frame(T.ACK, 0))
    t.step(
        "the same frame again (our ACK was lost): ACK again, not processed",
        data(0, 0x0A, b"one"),
        frame(T.ACK, 0),
    )
    t.step(
        "seq is checked first: seq 0 again with another mid repeats the last answer",
        data(0, 0x0B, b"refuse-me"),
        frame(T.ACK, 0),
    )
    t.step(
        "so mid 0x0b was not processed: with a new seq it is, and refused (0x81)",
        data(1, 0x0B, b"refuse-me"),
        refuse(1, 0x81),
    )
    t.step(
        "mid 0x0a with a new seq: remembered, ACK without processing",
        data(2, 0x0A, b"one"),
        frame(T.ACK, 2),
    )
    t.step(
        "mid 0x0b with a new seq: its refusal is remembered too",
        data(3, 0x0B, b"refuse-me"),
        refuse(3, 0x81),
    )
    t.step("BUSY (0x03) is not remembered ...", data(4, 0x0C, b"busy"), refuse(4, 0x03))
    t.step(
        "... so the retry is processed again (busy again)", data(5, 0x0C, b"busy"), refuse(5, 0x03)
    )
    t.session()
    t.step("after HELLO, seq 0 is new: mid 0x0d processed", data(0, 0x0D, b"two"), frame(T.ACK, 0))
    t.step(
        "message ids outlive the session: mid 0x0a, ACK without processing",
        data(1, 0x0A, b"one"),
        frame(T.ACK, 1),
    )
    out.append(t)

    t = Transcript(
        "fragments", "Reassembly of DATA_MORE ... DATA, 12 bytes a fragment (§7).", mp=16, mm=40
    )
    t.session()
    t.step(
        "fragment 1 of mid 0x20 ends in 'ref'",
        data(0, 0x20, b"aaaaaaaaaref", more=True),
        frame(T.ACK, 0),
    )
    t.step(
        "its retransmission is not appended twice",
        data(0, 0x20, b"aaaaaaaaaref", more=True),
        frame(T.ACK, 0),
    )
    t.step(
        "fragment 2 starts with 'use'", data(1, 0x20, b"use-bbbbbbbb", more=True), frame(T.ACK, 1)
    )
    t.step(
        "the last fragment: the application saw 'refuse' across the join: 0x81",
        data(2, 0x20, b"cccccc"),
        refuse(2, 0x81),
    )
    t.step(
        "mid 0x22: a fragment holding 'refuse' ...",
        data(3, 0x22, b"refuse......", more=True),
        frame(T.ACK, 3),
    )
    t.step(
        "... then a whole message with another mid: processed; the partial 0x22 is dropped",
        data(4, 0x23, b"ok"),
        frame(T.ACK, 4),
    )
    t.step(
        "so 0x22's last fragment alone is a new message, without 'refuse': ACK",
        data(5, 0x22, b"tail"),
        frame(T.ACK, 5),
    )
    envelope = msgpack.packb({"id": "m-9", "route": "door", "rcv": 5, "exp": None, "body": b"open"})
    frags = [envelope[i : i + 12] for i in range(0, len(envelope), 12)]
    for k, part in enumerate(frags):
        last = k == len(frags) - 1
        t.step(
            f"an envelope in {len(frags)} fragments, part {k + 1}",
            data(6 + k, 0x24, part, more=not last),
            frame(T.ACK, 6 + k),
        )
    seq = 6 + len(frags)
    t.step(
        "a truncated envelope in one frame: BAD_MESSAGE (0x01)",
        data(seq, 0x25, envelope[:11]),
        refuse(seq, 0x01),
    )
    out.append(t)

    t = Transcript("too_big", "A message larger than the reassembly buffer (§7).", mp=16, mm=40)
    t.session()
    for k in range(3):
        t.step(
            f"fragment {k + 1} of mid 0x30: {12 * (k + 1)} of 40 bytes",
            data(k, 0x30, bytes([0x41 + k]) * 12, more=True),
            frame(T.ACK, k),
        )
    t.step(
        "fragment 4 would make 48 bytes: REFUSE 0x02 for this frame",
        data(3, 0x30, b"D" * 12, more=True),
        refuse(3, 0x02),
    )
    t.step(
        "its retransmission: the same answer", data(3, 0x30, b"D" * 12, more=True), refuse(3, 0x02)
    )
    t.step("any later frame of mid 0x30 is refused at once", data(4, 0x30, b"E"), refuse(4, 0x02))
    t.session()
    t.step(
        "in a new session too, from its first fragment (the id is remembered)",
        data(0, 0x30, b"A" * 12, more=True),
        refuse(0, 0x02),
    )
    for k in range(3):
        t.step(
            f"mid 0x31, fragment {k + 1}",
            data(1 + k, 0x31, b"F" * 12, more=True),
            frame(T.ACK, 1 + k),
        )
    t.step("and its last 4 bytes: exactly 40 fit, ACK", data(4, 0x31, b"GGGG"), frame(T.ACK, 4))
    out.append(t)

    t = Transcript(
        "nak", "NAK for damaged frames in a session, and what stays silent (§2, §6).", mp=32, mm=64
    )
    t.session()
    t.step(
        "a CRC error before any DATA answer: NAK with seq 0xff",
        damaged(data(0, 0x40, b"x")),
        frame(T.NAK, 0xFF),
    )
    t.step(
        "a 3-byte body (too short): NAK 0xff",
        sl.cobs_encode(b"\x12\x05\xaa") + b"\x00",
        frame(T.NAK, 0xFF),
    )
    t.step(
        "COBS whose block runs past the end: NAK 0xff",
        bytes.fromhex("0511050000")[:-1],
        frame(T.NAK, 0xFF),
    )
    t.step("DATA seq 0: ACK", data(0, 0x40, b"x"), frame(T.ACK, 0))
    t.step(
        "a CRC error now: NAK with the last answered seq, 0",
        damaged(data(1, 0x41, b"y")),
        frame(T.NAK, 0),
    )
    t.step(
        "DATA with fewer than 4 payload bytes (no mid): REFUSE 0x01",
        frame(T.DATA, 1, b"\x00\x01"),
        refuse(1, 0x01),
    )
    t.step("... remembered by seq like any answer", frame(T.DATA, 1, b"\x00\x01"), refuse(1, 0x01))
    t.step("a NAK names that seq now", damaged(data(2, 0x41, b"y")), frame(T.NAK, 1))
    t.step("another protocol version: dropped silently", bytes.fromhex("0522052d2e00"), b"")
    t.step(
        "a run longer than this device's 37-byte receive buffer: dropped silently",
        b"\x01" * 40 + b"\x00",
        b"",
    )
    t.step(
        "a DATA payload above the announced mp (33 > 32): dropped the same way",
        data(2, 0x42, bytes(range(1, 30))),
        b"",
    )
    t.step("empty frames (line flushes): nothing", b"\x00\x00\x00", b"")
    t.session()
    t.step("after HELLO, NAK names 0xff again", damaged(data(0, 0x43, b"z")), frame(T.NAK, 0xFF))
    out.append(t)

    t = Transcript(
        "utf8_cut_boundary",
        "The 24-byte limit counts bytes and cuts between characters (§5).",
        fw="v1-" + "€" * 8,
        dev="Pumpe-Keller-Sued-Ost-Göta",
        announce_fw="v1-" + "€" * 7,
        announce_id="Pumpe-Keller-Sued-Ost-G",
    )
    t.step(
        "HELLO_ACK: 'ö' (bytes 23..24, from 0) is left out whole; 7 '€' are exactly 24 bytes",
        b"\x00" + frame(T.HELLO, 0, HOST_HELLO),
        t.hello_ack(0),
    )
    out.append(t)

    t = Transcript(
        "utf8_cut_back",
        "Cutting back over 2- and 3-byte continuations (§5).",
        fw="v2-x" + "€" * 7,
        dev="x" * 21 + "😀",
        announce_fw="v2-x" + "€" * 6,
        announce_id="x" * 21,
    )
    t.step(
        "HELLO_ACK: a '€' at bytes 22..24 and an emoji at 21..24 are left out",
        b"\x00" + frame(T.HELLO, 0, HOST_HELLO),
        t.hello_ack(0),
    )
    out.append(t)
    return out


def render() -> str:
    """The text of vectors/transcripts.txt."""
    head = [
        "# fieldgate serial link transcript vectors (PROTOCOL.md §9). Generated by",
        "# tests/link_transcripts.py (edit there, then regenerate): do not edit by hand.",
        "# transcript NAME OPTIONS  a new device: fb_link_init with mp/mm/fw/id, then fb_link_boot",
        "# host HEX                 bytes the host writes (fed in any split)",
        "# device HEX               exactly the bytes the device writes in answer; '-' for none",
        "# The application: a message starting like a msgpack map must be an envelope (else 0x01);",
        "# one containing 'refuse' is refused with 0x81, one containing 'busy' with BUSY (0x03).",
        "",
    ]
    body: list[str] = []
    for t in transcripts():
        body += [*t.lines(), ""]
    return "\n".join(head + body)


if __name__ == "__main__":
    sys.stdout.write(render())
