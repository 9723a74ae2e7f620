"""Fuzzing (hypothesis) of the parsers that take input from outside: only documented errors.

Budgets come from the profile (tests/conftest.py): ``ci`` in ``make test``, ``fuzz`` in
``make fuzz``. A crash found here becomes a named regression test at the end of this file.
"""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import h2.config
import h2.connection
import pytest
from hypothesis import given
from hypothesis import strategies as st

import adapters.seriallink as sl
from gateway.config import ConfigError, parse_config
from gateway.webpush import links as ua_links
from gateway.webpush import useragent as ua
from gateway.webpush.crypto import REASONS, DecryptError, SubscriptionKeys, ece_decrypt, encrypt
from pushservice import links as ps_links

KEYS = SubscriptionKeys.generate()
EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few random edits: flips, deletions, insertions, duplications."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 16))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return bytes(data)


# ---------------------------------------------------------------------------- decrypt path


def refused_only(body: bytes, max_body: int = 4096) -> None:
    try:
        plaintext = KEYS.decrypt(body, max_body=max_body)
    except DecryptError as exc:
        assert exc.reason in REASONS
    else:
        # Only a body really encrypted for these keys decrypts (AES-GCM authenticates).
        assert isinstance(plaintext, bytes)


@given(st.binary(max_size=600), st.sampled_from([100, 4096, 65536]))
def test_fuzz_decrypt_random_bodies(body: bytes, max_body: int) -> None:
    refused_only(body, max_body)


@given(st.data())
def test_fuzz_decrypt_mutated_bodies(data: st.DataObject) -> None:
    plaintext = data.draw(st.binary(max_size=300))
    body = encrypt(
        plaintext,
        p256dh=KEYS.p256dh,
        auth_secret=KEYS.auth_secret,
        padding=data.draw(st.integers(0, 32)),
    )
    mutant = data.draw(mutated(body))
    try:
        assert KEYS.decrypt(mutant) == plaintext  # a mutation may cancel out; never garbage
    except DecryptError as exc:
        assert exc.reason in REASONS


@given(st.binary(max_size=400), st.binary(min_size=0, max_size=40))
def test_fuzz_ece_decrypt_random_bodies_and_keys(body: bytes, ikm: bytes) -> None:
    with pytest.raises(DecryptError):
        ece_decrypt(body, ikm=ikm)


# ---------------------------------------------------------------------------- Link parsers

PARSERS = [
    pytest.param(lambda v: ua_links.parse_link_header(v), id="gateway"),
    pytest.param(lambda v: ua_links.parse_link_header(v, "https://push.example/a/b"), id="base"),
    pytest.param(ps_links.parse_link_header, id="pushservice"),
]
link_text = st.text(alphabet=st.sampled_from(list('<>;,="\\ \tabc/:?#%rel\x00é')), max_size=80)


@pytest.mark.parametrize("parse", PARSERS)
@given(value=st.one_of(link_text, st.text(max_size=80)))
def test_fuzz_link_parsers_only_raise_value_errors(parse: object, value: str) -> None:
    try:
        result = parse(value)  # type: ignore[operator]
    except ValueError:  # LinkParseError is one; urljoin raises ValueError for bad bases
        return
    assert isinstance(result, list)


token = st.text(
    alphabet=st.sampled_from(list("abcdefghijklmnopqrstuvwxyz0123456789-.")), min_size=1
)
quotable = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
target = st.text(
    alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs", "Cc", "Zs")),
    min_size=1,
    max_size=30,
)


@st.composite
def link_values(draw: st.DrawFn) -> list[tuple[str, dict[str, str]]]:
    links = []
    for _ in range(draw(st.integers(1, 4))):
        params = draw(st.dictionaries(token, quotable, max_size=4))
        links.append((draw(target), params))
    return links


def format_links(links: list[tuple[str, dict[str, str]]]) -> str:
    def quote(value: str) -> str:
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'

    return ", ".join(
        f"<{t}>" + "".join(f"; {k}={quote(v)}" for k, v in params.items()) for t, params in links
    )


@given(link_values())
def test_fuzz_link_parsers_round_trip(links: list[tuple[str, dict[str, str]]]) -> None:
    text = format_links(links)
    for parse in (ua_links.parse_link_header, ps_links.parse_link_header):
        parsed = parse(text)
        assert [(link.target, link.params) for link in parsed] == links


# ------------------------------------------------------------------------ serial decoder

FRAME_TYPES = list(sl.FrameType)


@st.composite
def frame_streams(draw: st.DrawFn) -> tuple[bytes, list[sl.Frame]]:
    frames = [
        sl.Frame(
            int(draw(st.sampled_from(FRAME_TYPES))),
            draw(st.integers(0, 255)),
            draw(st.binary(max_size=sl.MAX_PAYLOAD)),
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    wire = b"".join(sl.encode_frame(f.type, f.seq, f.payload) for f in frames)
    return wire, frames


def feed_in_chunks(
    decoder: sl.FrameDecoder, data: bytes, cuts: list[int]
) -> list[sl.Frame | sl.FrameError]:
    out: list[sl.Frame | sl.FrameError] = []
    start = 0
    for cut in [*sorted(c % (len(data) + 1) for c in cuts), len(data)]:
        out += decoder.feed(data[start:cut])
        assert len(decoder._buf) <= sl.MAX_WIRE - 1  # never more than one frame held
        start = max(start, cut)
    return out


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_fuzz_serial_decoder_random_streams(data: bytes, cuts: list[int]) -> None:
    for item in feed_in_chunks(sl.FrameDecoder(), data, cuts):
        assert isinstance(item, sl.Frame | sl.FrameError)
        if isinstance(item, sl.FrameError):
            assert item.reason in ("cobs", "short", "crc", "version", "oversize")


@given(frame_streams(), st.data())
def test_fuzz_serial_decoder_mutated_streams_resynchronise(
    stream: tuple[bytes, list[sl.Frame]], data: st.DataObject
) -> None:
    wire, _ = stream
    mutant = data.draw(mutated(wire)) if wire else b""
    decoder = sl.FrameDecoder()
    cuts = data.draw(st.lists(st.integers(0, 2000), max_size=4))
    for item in feed_in_chunks(decoder, mutant, cuts):
        assert isinstance(item, sl.Frame | sl.FrameError)
    # After any damage, a delimiter and a good frame decode as that frame.
    good = sl.Frame(int(sl.FrameType.PING), 7, b"")
    assert decoder.feed(b"\x00" + sl.encode_frame(good.type, good.seq))[-1] == good


@given(frame_streams(), st.lists(st.integers(0, 2000), max_size=8))
def test_fuzz_serial_decoder_intact_streams_decode_exactly(
    stream: tuple[bytes, list[sl.Frame]], cuts: list[int]
) -> None:
    wire, frames = stream
    assert feed_in_chunks(sl.FrameDecoder(), wire, cuts) == frames


LINK_EVENTS = (
    sl.LinkUp,
    sl.LinkDown,
    sl.DeviceRebooted,
    sl.MessageAcknowledged,
    sl.MessageRefused,
    sl.MessageFailed,
)


@given(st.lists(st.one_of(st.binary(max_size=300), frame_streams().map(lambda s: s[0]))))
def test_fuzz_serial_link_endpoint_only_documented_events(chunks: list[bytes]) -> None:
    link = sl.LinkEndpoint(ack_timeout=0.5)
    link.open(0.0)
    now = 0.0
    for chunk in chunks:
        now += 0.1
        for event in link.receive_data(chunk, now) + link.timer_expired(now):
            assert isinstance(event, LINK_EVENTS)
        link.data_to_send()


# ------------------------------------------------------------------------------ config


@given(st.data())
def test_fuzz_config_mutations_of_the_example(data: st.DataObject) -> None:
    text = EXAMPLE.read_bytes()
    mutant = data.draw(mutated(text)).decode("utf-8", "replace")
    with contextlib.suppress(ConfigError):
        parse_config(mutant, EXAMPLE, environ={})


# ------------------------------------------------------------------- sans-IO user agent

ORIGIN = "http://push.test"


def server_preface() -> bytes:
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    server.initiate_connection()
    return server.data_to_send()


def started_protocol() -> ua.UserAgentProtocol:
    proto = ua.UserAgentProtocol(ORIGIN, max_body=4096)
    proto.initiate()
    proto.data_to_send()
    proto.monitor(f"{ORIGIN}/set/a")  # a stream for frames to land on
    proto.data_to_send()
    proto.receive_data(server_preface())
    return proto


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream_id)
        + payload
    )


frames = st.builds(
    raw_frame,
    st.integers(0, 12),
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 4, 2**31 - 1]),
    st.binary(max_size=64),
)


def violations_only(proto: ua.UserAgentProtocol, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            events = proto.receive_data(chunk)
            assert all(isinstance(e, ua.Event) for e in events)
            proto.data_to_send()
    except ua.ProtocolViolation:
        pass


@given(st.lists(st.binary(min_size=1, max_size=200), max_size=5))
def test_fuzz_user_agent_random_bytes_after_the_preface(chunks: list[bytes]) -> None:
    violations_only(started_protocol(), chunks)


@given(st.lists(frames, min_size=1, max_size=12))
def test_fuzz_user_agent_random_frames_after_the_preface(chunks: list[bytes]) -> None:
    violations_only(started_protocol(), chunks)


# ------------------------------------------------------------------------ regressions
# (none found yet: a crash found above gets a named test here with its minimal example)
