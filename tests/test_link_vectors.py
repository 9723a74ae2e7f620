"""Every transcript and envelope vector, run by the Python side (PROTOCOL.md §9).

The host codec (``adapters.seriallink``) decodes every frame of the transcripts; the device-side
behaviour they pin is run against the real C library: the device simulator (fbsim) on a pty,
byte for byte. ``firmware-bridge/tests/test_fb.c`` runs the same files in C, on the host and on
a simulated ATmega328P.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import msgpack
import pytest

from adapters import seriallink as sl
from adapters.base import Message
from adapters.envelope import encode_envelope
from tests import link_transcripts
from tests.link_vectors import TRANSCRIPTS, envelope_fields, records, text, transcripts, unhex
from tests.serial_sim import exchange, start_simulator

TRANSCRIPT_BY_NAME = {t.name: t for t in transcripts()}
# How long the simulator may take to answer one step (it answers at once; this is a hang guard)
STEP_TIMEOUT = 5.0
SENTINEL_PING = 0xEE


def test_the_transcript_file_is_what_its_source_generates():
    assert TRANSCRIPTS.read_text(encoding="utf-8") == link_transcripts.render()


def test_there_are_transcripts_for_every_point_the_spec_pins():
    assert {
        "no_session",
        "hello_map_not_read",
        "duplicates",
        "fragments",
        "too_big",
        "nak",
        "utf8_cut_boundary",
        "utf8_cut_back",
    } <= set(TRANSCRIPT_BY_NAME)
    assert sum(len(t.steps) for t in TRANSCRIPT_BY_NAME.values()) >= 60


def decode_all(data: bytes) -> list[sl.Frame | sl.FrameError]:
    return sl.FrameDecoder().feed(data)


@pytest.mark.parametrize("name", sorted(TRANSCRIPT_BY_NAME))
def test_the_host_codec_reads_every_device_frame(name):
    """Everything a device writes is a valid frame that re-encodes to the same bytes."""
    t = TRANSCRIPT_BY_NAME[name]
    for out in [t.boot, *(device for _, device in t.steps)]:
        frames = decode_all(out)
        assert all(isinstance(f, sl.Frame) for f in frames), (name, frames)
        wire = b"".join(sl.encode_frame(f.type, f.seq, f.payload) for f in frames)  # type: ignore[union-attr]
        assert wire == out.lstrip(b"\x00"), name
        for f in frames:
            assert isinstance(f, sl.Frame)
            if f.type in (sl.FrameType.HELLO, sl.FrameType.HELLO_ACK):
                info = sl.parse_device_info(f.payload)
                assert info.damaged == () and info.max_payload == int(t.option("mp"))
                for announced, configured in [(info.firmware, "fw"), (info.device_id, "id")]:
                    raw = announced.encode()
                    assert len(raw) <= 24 and t.option(configured).encode().startswith(raw)


@pytest.mark.parametrize("name", sorted(TRANSCRIPT_BY_NAME))
def test_the_host_codec_reads_every_host_line(name):
    """Host lines hold valid frames, except the deliberately damaged ones, which it names."""
    for host, _ in TRANSCRIPT_BY_NAME[name].steps:
        for item in decode_all(host):
            assert isinstance(item, sl.Frame) or item.reason in {
                "cobs",
                "short",
                "crc",
                "version",
                "oversize",
            }


class Pty:
    """The host end of the simulator's pseudo-terminal."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    def read_exactly(self, n: int) -> bytes:
        out = b""
        deadline = time.monotonic() + STEP_TIMEOUT
        while len(out) < n:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            assert ready, f"device sent {out.hex() or 'nothing'}, expected {n} bytes"
            out += os.read(self.fd, n - len(out))
        return out

    def read_frame(self) -> bytes:
        """Bytes up to and including the next delimiter (skipping lone flushes)."""
        out = b""
        while True:
            byte = self.read_exactly(1)
            if byte == b"\x00" and out:
                return out + byte
            if byte != b"\x00":
                out += byte

    def close(self) -> None:
        os.close(self.fd)


@pytest.mark.parametrize("name", sorted(TRANSCRIPT_BY_NAME))
def test_transcript_on_the_c_library(name, tmp_path: Path):
    t = TRANSCRIPT_BY_NAME[name]
    sim = start_simulator(
        tmp_path / "record",
        [
            "--max-payload", t.option("mp"),
            "--max-message", t.option("mm"),
            "--firmware", t.option("fw"),
            "--id", t.option("id"),
            "--refuse-containing", "refuse",
            "--busy-containing", "busy",
        ],
    )  # fmt: skip
    pty = Pty(sim.pty)
    try:
        assert pty.read_exactly(len(t.boot)).hex() == t.boot.hex(), "boot"
        for k, (host, device) in enumerate(t.steps):
            pty.write(host)
            assert pty.read_exactly(len(device)).hex() == device.hex(), f"step {k + 1}"
        # Nothing more may be on its way: the next thing the device says answers the sentinel.
        pty.write(sl.encode_frame(sl.FrameType.PING, SENTINEL_PING))
        (answer,) = decode_all(pty.read_frame())
        assert isinstance(answer, sl.Frame)
        assert answer.type == sl.FrameType.HELLO or answer == sl.Frame(
            sl.FrameType.PONG, SENTINEL_PING
        )
    finally:
        pty.close()
        sim.kill()


# ---- envelopes -------------------------------------------------------------------------------


def envelope_vectors() -> list[tuple[str, bytes, dict[str, object]]]:
    """(name, msgpack, expected fields) of every positive envelope vector."""
    out = []
    for kind, named in [("envelope", False), ("envelope_variant", True)]:
        for row in records(kind):
            name, fields = (row[0], row[1:]) if named else (f"{kind} {row[1]}", row)
            packed, id_, route, rcv, exp, body = fields
            expected = {
                "id": text(id_),
                "route": text(route),
                "rcv": int(rcv),
                "exp": None if exp == "-" else int(exp),
                "body": unhex(body),
            }
            out.append((name, unhex(packed), expected))
    return out


BAD_ENVELOPES = [(row[0], unhex(row[1])) for row in records("envelope_bad")]


def test_there_are_envelope_vectors_of_every_kind():
    assert len(records("envelope")) >= 3 and len(records("envelope_variant")) >= 6
    names = {name for name, _ in BAD_ENVELOPES}
    assert {
        "str32_id_claims_65537",
        "bin32_body_claims_65540",
        "ext32_unknown_claims_65539",
    } <= names


@pytest.mark.parametrize("name,packed,expected", envelope_vectors())
def test_envelope_vectors_read_independently(name, packed, expected):
    fields = envelope_fields(packed)
    assert fields is not None, name
    assert {k: fields[k] for k in expected} == expected


@pytest.mark.parametrize("name,packed", BAD_ENVELOPES)
def test_bad_envelopes_are_invalid_read_independently(name, packed):
    assert envelope_fields(packed) is None, name


@pytest.mark.parametrize("row", records("envelope"))
def test_the_gateway_encodes_the_envelope_vectors(row):
    packed, id_, route, rcv, exp, body = row
    message = Message(id_, route, unhex(body), float(rcv), None if exp == "-" else float(exp))
    assert encode_envelope(message) == unhex(packed)


def test_envelope_vectors_on_the_c_library(tmp_path: Path):
    """Through the host codec to fbsim, which parses every message as an envelope."""
    sim = start_simulator(tmp_path / "record", ["--payload", "envelope"])
    pty = Pty(sim.pty)
    try:
        ep = sl.LinkEndpoint(ack_timeout=1.0)
        ep.open(time.monotonic())
        exchange(ep, pty.write, pty.fd, sl.LinkUp)
        cases = [(n, p, True) for n, p, _ in envelope_vectors()]
        cases += [(n, p, False) for n, p in BAD_ENVELOPES]
        for mid, (name, packed, good) in enumerate(cases, start=1):
            ep.send_message(mid, packed, time.monotonic())
            want = sl.MessageAcknowledged(mid) if good else sl.MessageRefused(mid, 0x01)
            assert exchange(ep, pty.write, pty.fd, type(want)) == [want], name
    finally:
        pty.close()
        sim.kill()


def test_envelope_vectors_survive_a_msgpack_round_trip():
    """The variants are valid msgpack for a mainstream decoder too (not only for ours)."""
    for name, packed, expected in envelope_vectors():
        assert msgpack.unpackb(packed, strict_map_key=False)["body"] == expected["body"], name
