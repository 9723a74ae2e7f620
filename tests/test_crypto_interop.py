"""Interoperability with independent implementations: pywebpush and http-ece, both directions.

Payload sizes span the whole Web Push range, 0 to 3993 octets (4096-octet body, RFC 8291 §4).
"""

from __future__ import annotations

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pywebpush import NoData, WebPusher

from gateway.webpush.crypto import (
    MAX_WEBPUSH_PLAINTEXT,
    DecryptError,
    SubscriptionKeys,
    ece_decrypt,
    ece_encrypt,
    encrypt,
)

KEYS = SubscriptionKeys.generate()
ENDPOINT = "https://127.0.0.1:8443/push/interop"
SETTINGS = settings(max_examples=50, deadline=None)

webpush_payloads = st.binary(min_size=1, max_size=MAX_WEBPUSH_PLAINTEXT)


def _http_ece_encrypt(plaintext: bytes, rs: int = 4096) -> bytes:
    body: bytes = http_ece.encrypt(
        plaintext,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=KEYS.p256dh,
        auth_secret=KEYS.auth_secret,
        rs=rs,
        version="aes128gcm",
    )
    return body


@SETTINGS
@given(webpush_payloads)
@example(b"\x00")
@example(b"\x02")
@example(b"m" * MAX_WEBPUSH_PLAINTEXT)
def test_pywebpush_bodies_decrypt_with_ours(plaintext: bytes) -> None:
    # pywebpush parses our W3C JSON: the subscription hand-off format is checked too.
    subscription = KEYS.subscription_info(ENDPOINT).to_json()
    body = WebPusher(subscription).encode(plaintext, "aes128gcm")["body"]
    assert KEYS.decrypt(body) == plaintext


def test_pywebpush_sends_no_body_for_an_empty_message() -> None:
    """Why refusing http-ece's header-only empty form costs no interoperability."""
    with pytest.raises(NoData):
        WebPusher(KEYS.subscription_info(ENDPOINT).to_json()).encode(b"", "aes128gcm")


@SETTINGS
@given(webpush_payloads)
@example(b"\x01" * MAX_WEBPUSH_PLAINTEXT)
def test_http_ece_bodies_decrypt_with_ours(plaintext: bytes) -> None:
    body = _http_ece_encrypt(plaintext)
    assert len(body) == 86 + len(plaintext) + 1 + 16
    assert KEYS.decrypt(body) == plaintext


def test_http_ece_header_only_empty_message_is_refused() -> None:
    body = _http_ece_encrypt(b"")
    assert len(body) == 86
    with pytest.raises(DecryptError) as info:
        KEYS.decrypt(body)
    assert info.value.reason == "truncated_record"


@SETTINGS
@given(st.binary(min_size=0, max_size=600), st.integers(min_value=18, max_value=300))
def test_http_ece_multi_record_bodies_decrypt_with_ours(plaintext: bytes, rs: int) -> None:
    """http-ece splits at rs - 17 octets: many records, SEQ-XOR nonces, 0x01 delimiters."""
    body = _http_ece_encrypt(plaintext, rs=rs)
    if not plaintext:  # http-ece writes no record for b"" (see the test above)
        return
    assert KEYS.decrypt(body) == plaintext


@SETTINGS
@given(
    st.binary(min_size=0, max_size=MAX_WEBPUSH_PLAINTEXT),
    st.integers(min_value=0, max_value=MAX_WEBPUSH_PLAINTEXT),
)
@example(b"", 0)
@example(b"z" * MAX_WEBPUSH_PLAINTEXT, 0)
def test_our_bodies_decrypt_with_http_ece(plaintext: bytes, padding: int) -> None:
    padding = min(padding, MAX_WEBPUSH_PLAINTEXT - len(plaintext))
    body = encrypt(plaintext, p256dh=KEYS.p256dh, auth_secret=KEYS.auth_secret, padding=padding)
    assert len(body) <= 4096
    decrypted = http_ece.decrypt(
        body, private_key=KEYS.private_key, auth_secret=KEYS.auth_secret, version="aes128gcm"
    )
    assert decrypted == plaintext


@SETTINGS
@given(
    st.lists(st.tuples(st.binary(max_size=40), st.integers(0, 8)), min_size=1, max_size=6),
    st.binary(min_size=16, max_size=16),
    st.binary(min_size=16, max_size=16),
)
def test_generic_rfc8188_multi_record_both_ways_with_http_ece(
    chunks: list[tuple[bytes, int]], salt: bytes, ikm: bytes
) -> None:
    """Our generic encoder and decoder against http-ece's raw-key mode (no Web Push layer)."""
    rs = max(18, *(len(data) + 1 + pad + 16 for data, pad in chunks))
    # Non-final records must be exactly rs: pad each up to the common size.
    records = [(data, rs - 16 - len(data) - 1) for data, _ in chunks[:-1]]
    records.append(chunks[-1])
    body = ece_encrypt(records, ikm=ikm, salt=salt, record_size=rs, keyid=b"k1")
    plaintext = b"".join(data for data, _ in records)
    assert http_ece.decrypt(body, key=ikm, version="aes128gcm") == plaintext
    assert ece_decrypt(body, ikm=ikm) == plaintext
    if plaintext:
        theirs = http_ece.encrypt(plaintext, salt=salt, key=ikm, rs=rs, version="aes128gcm")
        assert ece_decrypt(theirs, ikm=ikm) == plaintext
