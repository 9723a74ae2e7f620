"""The sans-IO serial link codec and state machine, against firmware-bridge/vectors/link.txt."""

from __future__ import annotations

import logging

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters import seriallink as sl
from tests.link_vectors import records as vectors
from tests.link_vectors import unhex

DEVICE = {"v": 1, "mp": 32, "mm": 200, "fw": "t-1", "id": "dev-1"}
RTO = 0.1


def test_there_are_vectors_of_every_kind():
    for kind, least in [
        ("crc16", 3),
        ("cobs", 8),
        ("frame", 10),
        ("bad", 5),
        ("hello_ack", 4),
        ("envelope", 2),
        ("envelope_variant", 6),
        ("envelope_bad", 15),
    ]:
        assert len(vectors(kind)) >= least, kind


@pytest.mark.parametrize("data,crc", vectors("crc16"))
def test_crc16_vectors(data, crc):
    assert sl.crc16(unhex(data)) == int(crc, 16)


@pytest.mark.parametrize("raw,encoded", vectors("cobs"))
def test_cobs_vectors(raw, encoded):
    assert sl.cobs_encode(unhex(raw)) == bytes.fromhex(encoded)
    assert sl.cobs_decode(bytes.fromhex(encoded)) == unhex(raw)


@pytest.mark.parametrize("name,ftype,seq,payload,wire", vectors("frame"))
def test_frame_vectors(name, ftype, seq, payload, wire):
    assert sl.encode_frame(int(ftype), int(seq), unhex(payload)) == bytes.fromhex(wire), name
    assert sl.FrameDecoder().feed(bytes.fromhex(wire)) == [
        sl.Frame(int(ftype), int(seq), unhex(payload))
    ]


@pytest.mark.parametrize("name,reason,wire", vectors("bad"))
def test_bad_frames_are_dropped_with_their_reason(name, reason, wire):
    assert sl.FrameDecoder().feed(bytes.fromhex(wire)) == [sl.FrameError(reason)], name


@pytest.mark.parametrize("payload,v,mp,mm,fw,dev", vectors("hello_ack"))
def test_hello_ack_vectors(payload, v, mp, mm, fw, dev):
    """Including HELLOs whose strings end inside a UTF-8 character: replaced, not refused."""
    info = sl.parse_device_info(bytes.fromhex(payload))
    damaged = tuple(name for name, s in (("fw", fw), ("id", dev)) if "\ufffd" in s)
    assert info == sl.DeviceInfo(int(v), int(mp), int(mm), fw, dev, damaged)


# What firmware before 1.1 sent for the id "Pumpe-Keller-Sued-Ost-Göta": cut at 24 bytes, inside
# the "ö", so the map ends in a stray 0xC3.
CUT_INSIDE_A_CHARACTER = {**DEVICE, "id": "Pumpe-Keller-Sued-Ost-Göta".encode()[:24]}


def hello_ack_with_raw_id(seq: int = 0) -> bytes:
    fields = dict(CUT_INSIDE_A_CHARACTER)
    raw_id = fields.pop("id")
    assert isinstance(raw_id, bytes)
    body = msgpack.packb(fields)[1:]  # the pairs without their fixmap header
    packed = (
        bytes([0x80 | (len(fields) + 1)]) + body + b"\xa2id" + bytes([0xA0 | len(raw_id)]) + raw_id
    )
    return sl.encode_frame(sl.FrameType.HELLO_ACK, seq, packed)


def test_a_hello_cut_inside_a_character_keeps_the_link_up_and_is_logged_once(caplog):
    caplog.set_level(logging.WARNING, logger="fieldgate.serial")
    ep = sl.LinkEndpoint(ack_timeout=RTO)
    ep.open(0.0)
    ep.data_to_send()
    (up,) = ep.receive_data(hello_ack_with_raw_id(), 0.0)
    assert isinstance(up, sl.LinkUp) and ep.state is sl.State.READY
    assert up.device.device_id == "Pumpe-Keller-Sued-Ost-G\ufffd"
    assert up.device.damaged == ("id",)
    # the device reboots and announces the same name: the link comes up again, no second line
    ep.receive_data(sl.encode_frame(sl.FrameType.HELLO, 0), 0.1)
    ep.data_to_send()
    (again,) = ep.receive_data(hello_ack_with_raw_id(), 0.1)
    assert isinstance(again, sl.LinkUp)
    warnings = [r.getMessage() for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert warnings == [
        "device HELLO: id not valid UTF-8 (device firmware cuts inside a character); "
        "shown as firmware 't-1', id 'Pumpe-Keller-Sued-Ost-G\ufffd'"
    ]
    assert ep.counters["rx_hello_bad_utf8"] == 2


@pytest.mark.parametrize("bad", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"v": 1})])
def test_bad_hello_payloads(bad):
    with pytest.raises(ValueError):
        sl.parse_device_info(bad)


def test_decoder_accepts_any_split_and_resyncs_after_garbage():
    wires = [bytes.fromhex(row[4]) for row in vectors("frame")]
    stream = b"\x55\x00\x13garbage" + b"\x00" + b"".join(wires)
    frames = []
    decoder = sl.FrameDecoder()
    for i in range(len(stream)):
        frames += decoder.feed(stream[i : i + 1])
    good = [f for f in frames if isinstance(f, sl.Frame)]
    assert len(good) == len(wires)
    assert all(isinstance(f, sl.FrameError) for f in frames[:2])


def test_oversized_run_is_skipped_up_to_the_next_delimiter():
    frame = sl.encode_frame(sl.FrameType.ACK, 1)
    out = sl.FrameDecoder().feed(b"\x01" * 1000 + b"\x00" + frame)
    assert out == [sl.FrameError("oversize"), sl.Frame(sl.FrameType.ACK, 1)]


@given(st.binary(max_size=700))
def test_cobs_round_trip(data):
    encoded = sl.cobs_encode(data)
    assert 0 not in encoded
    assert sl.cobs_decode(encoded) == data
    assert len(encoded) <= len(data) + 1 + len(data) // 254


@given(st.binary(max_size=300))
def test_decoder_never_raises_on_garbage(data):
    for item in sl.FrameDecoder().feed(data):
        assert isinstance(item, sl.Frame | sl.FrameError)


def test_encode_refuses_oversized_payload():
    with pytest.raises(ValueError):
        sl.encode_frame(sl.FrameType.DATA, 0, bytes(sl.MAX_PAYLOAD + 1))


# ---- the state machine, against a scripted device ------------------------------------------


def frames_of(data: bytes) -> list[sl.Frame]:
    out = sl.FrameDecoder().feed(data)
    assert all(isinstance(f, sl.Frame) for f in out)
    return out  # type: ignore[return-value]


def connected(**kw: float) -> sl.LinkEndpoint:
    ep = sl.LinkEndpoint(ack_timeout=RTO, max_tries=3, ping_interval=5.0, **kw)  # type: ignore[arg-type]
    ep.open(0.0)
    (hello,) = frames_of(ep.data_to_send())
    assert hello.type == sl.FrameType.HELLO
    assert msgpack.unpackb(hello.payload) == {"v": 1, "mp": sl.MAX_PAYLOAD}
    events = ep.receive_data(sl.encode_frame(sl.FrameType.HELLO_ACK, 0, msgpack.packb(DEVICE)), 0.0)
    assert events == [sl.LinkUp(sl.DeviceInfo(1, 32, 200, "t-1", "dev-1"))]
    return ep


def test_send_requires_a_ready_idle_link():
    ep = sl.LinkEndpoint(ack_timeout=RTO)
    with pytest.raises(sl.LinkError):
        ep.send_message(1, b"x", 0.0)
    ep = connected()
    ep.send_message(1, b"x", 0.0)
    with pytest.raises(sl.LinkError):
        ep.send_message(2, b"y", 0.0)
    with pytest.raises(sl.LinkError):
        connected().send_message(3, bytes(201), 0.0)


def test_ack_delivers_and_stale_acks_are_ignored():
    ep = connected()
    ep.send_message(0xA1B2C3D4, b"hello", 0.0)
    (data,) = frames_of(ep.data_to_send())
    assert data == sl.Frame(sl.FrameType.DATA, 0, bytes.fromhex("a1b2c3d4") + b"hello")
    assert ep.receive_data(sl.encode_frame(sl.FrameType.ACK, 7), 0.01) == []
    assert ep.receive_data(sl.encode_frame(sl.FrameType.ACK, 0), 0.01) == [
        sl.MessageAcknowledged(0xA1B2C3D4)
    ]
    assert not ep.busy


def test_retransmit_on_timeout_then_fail_and_go_down():
    ep = connected()
    ep.send_message(5, b"x", 1.0)
    first = ep.data_to_send()
    assert ep.next_deadline() == pytest.approx(1.0 + RTO)
    assert ep.timer_expired(1.05) == [] and ep.data_to_send() == b""  # not yet
    assert ep.timer_expired(1.11) == [] and ep.data_to_send() == first
    assert ep.timer_expired(1.22) == [] and ep.data_to_send() == first
    assert ep.timer_expired(1.33) == [
        sl.MessageFailed(5, "no ACK after 3 tries"),
        sl.LinkDown("no ACK after 3 tries"),
    ]
    assert ep.state is sl.State.DOWN


def test_nak_resends_immediately():
    ep = connected()
    ep.send_message(5, b"x", 0.0)
    first = ep.data_to_send()
    ep.receive_data(sl.encode_frame(sl.FrameType.NAK, 0), 0.01)
    assert ep.data_to_send() == first


def test_fragmentation_follows_the_device_frame_size():
    ep = connected()
    body = bytes(range(70))  # device mp 32 -> 28 bytes per fragment: 28 + 28 + 14
    ep.send_message(9, body, 0.0)
    got = b""
    for seq in range(3):
        (frame,) = frames_of(ep.data_to_send())
        last = seq == 2
        assert frame.type == (sl.FrameType.DATA if last else sl.FrameType.DATA_MORE)
        assert frame.seq == seq and frame.payload[:4] == (9).to_bytes(4, "big")
        got += frame.payload[4:]
        events = ep.receive_data(sl.encode_frame(sl.FrameType.ACK, seq), 0.0)
    assert got == body and events == [sl.MessageAcknowledged(9)]


def test_refusal_carries_code_and_reason():
    ep = connected()
    ep.send_message(3, b"x", 0.0)
    ep.data_to_send()
    events = ep.receive_data(sl.encode_frame(sl.FrameType.REFUSE, 0, b"\x81no such relay"), 0.0)
    assert events == [sl.MessageRefused(3, 0x81, "no such relay")]


def test_device_reboot_rehandshakes_and_resends_from_the_start():
    ep = connected()
    ep.send_message(4, bytes(40), 0.0)
    ep.data_to_send()
    ep.receive_data(sl.encode_frame(sl.FrameType.ACK, 0), 0.0)  # first fragment taken
    ep.data_to_send()
    events = ep.receive_data(sl.encode_frame(sl.FrameType.HELLO, 0, msgpack.packb(DEVICE)), 0.0)
    assert events == [sl.DeviceRebooted()]
    assert [f.type for f in frames_of(ep.data_to_send())] == [sl.FrameType.HELLO]
    ack = sl.encode_frame(sl.FrameType.HELLO_ACK, 0, msgpack.packb(DEVICE))
    assert isinstance(ep.receive_data(ack, 0.0)[0], sl.LinkUp)
    (again,) = frames_of(ep.data_to_send())
    assert (again.type, again.seq) == (sl.FrameType.DATA_MORE, 0)  # fragment 0, new session


def test_version_mismatch_is_link_down():
    ep = sl.LinkEndpoint(ack_timeout=RTO)
    ep.open(0.0)
    other = msgpack.packb({**DEVICE, "v": 2})
    events = ep.receive_data(sl.encode_frame(sl.FrameType.HELLO_ACK, 0, other), 0.0)
    assert events == [sl.LinkDown("device speaks protocol version 2")]


def test_idle_ping_and_down_after_missed_pongs():
    ep = connected()
    assert ep.next_deadline() == pytest.approx(5.0)
    ep.timer_expired(5.0)
    (ping,) = frames_of(ep.data_to_send())
    assert ping.type == sl.FrameType.PING
    ep.receive_data(sl.encode_frame(sl.FrameType.PONG, ping.seq), 5.01)
    assert ep.next_deadline() == pytest.approx(10.01)
    ep.timer_expired(10.01)
    ep.timer_expired(10.2)
    ep.timer_expired(10.3)
    assert ep.timer_expired(10.4) == [sl.LinkDown("3 PINGs unanswered")]


def test_message_id_is_crc32_of_the_journal_id():
    assert sl.message_id("123456789") == 0xCBF43926


# ---- a message's deadline: no frame of it goes out after it ----------------------------------


def test_no_retransmission_after_the_deadline():
    ep = connected()
    assert ep.send_message(5, b"x", 1.0, deadline=1.15) == []
    first = ep.data_to_send()
    assert ep.timer_expired(1.11) == [] and ep.data_to_send() == first  # before it: resent
    assert ep.timer_expired(1.22) == [sl.MessageExpired(5, 1)]
    assert ep.data_to_send() == b"" and not ep.busy
    assert ep.state is sl.State.READY  # the link is fine; only the message is over
    ep.send_message(6, b"y", 1.3)  # the next message goes out as usual
    assert frames_of(ep.data_to_send())[0].payload[:4] == (6).to_bytes(4, "big")


def test_no_further_fragment_after_the_deadline():
    ep = connected()
    ep.send_message(9, bytes(70), 0.0, deadline=0.5)  # three fragments
    ep.data_to_send()
    ep.receive_data(sl.encode_frame(sl.FrameType.ACK, 0), 0.2)
    (second,) = frames_of(ep.data_to_send())
    assert second.type == sl.FrameType.DATA_MORE
    assert ep.receive_data(sl.encode_frame(sl.FrameType.ACK, 1), 0.5) == [sl.MessageExpired(9, 2)]
    assert ep.data_to_send() == b""  # the last fragment (the one the device acts on) never goes


def test_no_resend_after_a_device_reboot_past_the_deadline():
    ep = connected()
    ep.send_message(4, b"x", 0.0, deadline=1.0)
    ep.data_to_send()
    ep.receive_data(sl.encode_frame(sl.FrameType.HELLO, 0, msgpack.packb(DEVICE)), 0.5)
    ep.data_to_send()
    ack = sl.encode_frame(sl.FrameType.HELLO_ACK, 0, msgpack.packb(DEVICE))
    events = ep.receive_data(ack, 1.2)
    assert isinstance(events[0], sl.LinkUp) and events[1:] == [sl.MessageExpired(4, 1)]
    assert ep.data_to_send() == b""


def test_no_nak_resend_after_the_deadline_and_none_sent_when_already_past():
    ep = connected()
    ep.send_message(5, b"x", 0.0, deadline=0.05)
    ep.data_to_send()
    assert ep.receive_data(sl.encode_frame(sl.FrameType.NAK, 0), 0.06) == [sl.MessageExpired(5, 1)]
    assert ep.data_to_send() == b""
    assert ep.send_message(6, b"y", 1.0, deadline=1.0) == [sl.MessageExpired(6, 0)]
    assert ep.data_to_send() == b"" and not ep.busy
