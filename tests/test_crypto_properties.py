"""Property tests: every tampered or malformed body gives a DecryptError, never plaintext, never
another exception. (pytest.raises(DecryptError) lets any other exception fail the test.)
"""

from __future__ import annotations

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.webpush.crypto import (
    REASONS,
    DecryptError,
    SubscriptionKeys,
    encrypt,
)

KEYS = SubscriptionKeys.generate()
SETTINGS = settings(max_examples=100, deadline=None)
HEADER = 86  # salt 16 || rs 4 || idlen 1 || keyid 65

plaintexts = st.binary(min_size=0, max_size=400)


def _single(plaintext: bytes, padding: int = 0) -> bytes:
    return encrypt(plaintext, p256dh=KEYS.p256dh, auth_secret=KEYS.auth_secret, padding=padding)


def _multi(plaintext: bytes, rs: int) -> bytes:
    body: bytes = http_ece.encrypt(
        plaintext,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=KEYS.p256dh,
        auth_secret=KEYS.auth_secret,
        rs=rs,
        version="aes128gcm",
    )
    return body


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """A valid body: ours (one record, maybe padded) or http-ece's (maybe many records)."""
    plaintext = draw(plaintexts)
    if draw(st.booleans()):
        return _single(plaintext, draw(st.integers(0, 64)))
    return _multi(plaintext + b"!", draw(st.integers(18, 120)))


def _flip(body: bytes, index: int, bit: int) -> bytes:
    return body[:index] + bytes([body[index] ^ (1 << bit)]) + body[index + 1 :]


def _refused(body: bytes) -> str:
    with pytest.raises(DecryptError) as info:
        KEYS.decrypt(body)
    assert info.value.reason in REASONS
    return info.value.reason


@SETTINGS
@given(bodies(), st.data())
def test_any_bit_flip_in_salt_keyid_or_ciphertext_is_refused(
    body: bytes, data: st.DataObject
) -> None:
    region = data.draw(st.sampled_from(["salt", "keyid", "ciphertext"]))
    lo, hi = {"salt": (0, 16), "keyid": (21, HEADER), "ciphertext": (HEADER, len(body))}[region]
    index = data.draw(st.integers(lo, hi - 1))
    _refused(_flip(body, index, data.draw(st.integers(0, 7))))


@SETTINGS
@given(bodies(), st.integers(0, 7))
def test_any_bit_flip_in_idlen_is_refused(body: bytes, bit: int) -> None:
    assert _refused(_flip(body, 20, bit)) in {"bad_idlen", "truncated_header"}


@SETTINGS
@given(bodies(), st.data())
def test_truncation_at_any_offset_is_refused(body: bytes, data: st.DataObject) -> None:
    _refused(body[: data.draw(st.integers(0, len(body) - 1))])


@SETTINGS
@given(bodies(), st.binary(min_size=1, max_size=64))
def test_appended_garbage_is_refused(body: bytes, garbage: bytes) -> None:
    _refused(body + garbage)


@SETTINGS
@given(bodies(), st.integers(0, 17))
def test_record_size_below_18_is_refused(body: bytes, rs: int) -> None:
    assert _refused(body[:16] + rs.to_bytes(4, "big") + body[20:]) == "record_size_too_small"


@SETTINGS
@given(plaintexts, st.data())
def test_record_size_below_the_records_length_is_refused(
    plaintext: bytes, data: st.DataObject
) -> None:
    body = _single(plaintext)
    record_length = len(body) - HEADER
    rs = data.draw(st.integers(18, record_length - 1)) if record_length > 18 else 17
    _refused(body[:16] + rs.to_bytes(4, "big") + body[20:])


@SETTINGS
@given(plaintexts, st.integers(0, 2**32 - 1))
def test_any_record_size_either_refuses_or_gives_the_exact_plaintext(
    plaintext: bytes, rs: int
) -> None:
    """RFC 8291 lets a user agent ignore rs: a larger one may decrypt, but never to other bytes."""
    body = _single(plaintext)
    tampered = body[:16] + rs.to_bytes(4, "big") + body[20:]
    try:
        assert KEYS.decrypt(tampered) == plaintext
    except DecryptError as exc:
        assert exc.reason in REASONS
        assert rs < len(body) - HEADER


@SETTINGS
@given(st.binary(min_size=2, max_size=300), st.integers(18, 60), st.data())
def test_multi_record_reorder_or_drop_is_refused(
    plaintext: bytes, rs: int, data: st.DataObject
) -> None:
    body = _multi(plaintext, rs)
    records = [body[i : i + rs] for i in range(HEADER, len(body), rs)]
    if len(records) < 2:
        return
    i = data.draw(st.integers(0, len(records) - 1))
    dropped = records[:i] + records[i + 1 :]
    _refused(body[:HEADER] + b"".join(dropped))
    j = data.draw(st.integers(0, len(records) - 1).filter(lambda j: records[j] != records[i]))
    swapped = list(records)
    swapped[i], swapped[j] = swapped[j], swapped[i]
    _refused(body[:HEADER] + b"".join(swapped))


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_are_refused(body: bytes) -> None:
    _refused(body)


@SETTINGS
@given(st.binary(min_size=0, max_size=300))
def test_random_records_behind_a_valid_header_are_refused(records: bytes) -> None:
    header = _single(b"x")[:HEADER]
    _refused(header + records)


@SETTINGS
@given(bodies(), st.integers(1, 200))
def test_max_body_is_enforced_before_anything_else(body: bytes, short_by: int) -> None:
    with pytest.raises(DecryptError) as info:
        KEYS.decrypt(body, max_body=max(0, len(body) - short_by))
    assert info.value.reason == "body_too_large"


@SETTINGS
@given(bodies())
def test_untampered_bodies_decrypt(body: bytes) -> None:
    KEYS.decrypt(body)  # the generators above only produce valid bodies


@SETTINGS
@given(st.binary(min_size=2, max_size=300), st.integers(18, 60), st.data())
def test_multi_record_cut_at_a_record_boundary_is_refused(
    plaintext: bytes, rs: int, data: st.DataObject
) -> None:
    """Every record authenticates on its own, so only the 0x01 delimiter reveals the cut."""
    body = _multi(plaintext, rs)
    boundaries = list(range(HEADER + rs, len(body), rs))
    if not boundaries:
        return
    assert _refused(body[: data.draw(st.sampled_from(boundaries))]) == "bad_delimiter"
