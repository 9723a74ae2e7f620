"""RFC 8291 / RFC 8188 conformance, every decrypt error, key material and subscription JSON.

Vectors: /work/shared/reference/webpush-protocol.md §2.3 (RFC 8291 Appendix A) and §2.4
(RFC 8188 §3.1 and §3.2). Bodies are compared byte for byte, never against the RFCs'
Content-Length (both are errata).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.webpush.b64 import B64DecodeError, b64url_decode, b64url_encode
from gateway.webpush.crypto import (
    DEFAULT_MAX_BODY,
    MAX_WEBPUSH_PLAINTEXT,
    REASONS,
    DecryptError,
    PushSubscriptionInfo,
    SubscriptionInfoError,
    SubscriptionKeys,
    content_keys,
    decrypt,
    ece_decrypt,
    ece_encrypt,
    encrypt,
    parse_header,
    webpush_ikm,
)

d = b64url_decode


def _private_key(b64: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(d(b64), "big"), ec.SECP256R1())


# --- RFC 8291 Appendix A ---------------------------------------------------------------------

A_PLAINTEXT = b"When I grow up, I want to be a watermelon"
A_AS_PRIVATE = _private_key("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")
A_AS_PUBLIC = d(
    "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
)
A_UA_PRIVATE = _private_key("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")
A_UA_PUBLIC = d(
    "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"
)
A_SALT = d("DGv6ra1nlYgDCS1FRnbzlw")
A_AUTH = d("BTBZMqHH6r4Tts7J_aSIgg")
A_ECDH = bytes.fromhex("932acbd63208387133837b0cd995911c3441eb66000998614a592727aef6912b")
A_IKM = d("S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg")
A_CEK = d("oIhVW04MRdy2XN9CiKLxTg")
A_NONCE = d("4h_95klXJ5E_qnoN")
A_BODY = d(
    "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS"
    "6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qu"
    "lcy4a-fN"
)
A_KEYS = SubscriptionKeys(A_UA_PRIVATE, A_AUTH)


def test_rfc8291_vector_key_schedule() -> None:
    assert A_KEYS.p256dh == A_UA_PUBLIC
    assert A_UA_PRIVATE.exchange(ec.ECDH(), A_AS_PRIVATE.public_key()) == A_ECDH
    assert webpush_ikm(A_ECDH, A_AUTH, A_UA_PUBLIC, A_AS_PUBLIC) == A_IKM
    assert content_keys(A_SALT, A_IKM) == (A_CEK, A_NONCE)


def test_rfc8291_vector_encrypt_is_byte_exact() -> None:
    body = encrypt(
        A_PLAINTEXT,
        p256dh=A_UA_PUBLIC,
        auth_secret=A_AUTH,
        salt=A_SALT,
        sender_private_key=A_AS_PRIVATE,
    )
    assert len(body) == 144  # the RFC's "Content-Length: 145" is an erratum
    assert body == A_BODY


def test_rfc8291_vector_header() -> None:
    header = parse_header(A_BODY)
    assert (header.salt, header.record_size, header.keyid, header.length) == (
        A_SALT,
        4096,
        A_AS_PUBLIC,
        86,
    )


def test_rfc8291_vector_decrypts_both_ways() -> None:
    assert decrypt(A_BODY, private_key=A_UA_PRIVATE, auth_secret=A_AUTH) == A_PLAINTEXT
    assert A_KEYS.decrypt(A_BODY) == A_PLAINTEXT


# --- RFC 8188 §3 -----------------------------------------------------------------------------

WALRUS = b"I am the walrus"
R1_IKM = d("yqdlZ-tYemfogSmv7Ws5PQ")
R1_BODY = d("I1BsxtFttlv3u_Oo94xnmwAAEAAA-NAVub2qFgBEuQKRapoZu-IxkIva3MEB1PD-ly8Thjg")
R2_IKM = d("BO3ZVPxUlnLORbVGMpbT1Q")
R2_BODY = d(
    "uNCkWiNYzKTnBN9ji3-qWAAAABkCYTHOG8chz_gnvgOqdGYovxyjuqRyJFjEDyoF1Fvkj6hQPdPHI51OEUKEpgz3SsLWIqS_uA"
)


def test_rfc8188_single_record_example() -> None:
    assert len(R1_BODY) == 53  # the RFC's "Content-Length: 54" is an erratum
    header = parse_header(R1_BODY)
    assert header.salt == d("I1BsxtFttlv3u_Oo94xnmw")
    assert (header.record_size, header.keyid, header.length) == (4096, b"", 21)
    assert content_keys(header.salt, R1_IKM) == (
        d("_wniytB-ofscZDh4tbSjHw"),
        d("Bcs8gkIRKLI8GeI8"),
    )
    assert ece_decrypt(R1_BODY, ikm=R1_IKM) == WALRUS
    reencoded = ece_encrypt([(WALRUS, 0)], ikm=R1_IKM, salt=header.salt, record_size=4096)
    assert reencoded == R1_BODY


def test_rfc8188_multi_record_example_and_intermediates() -> None:
    assert len(R2_BODY) == 73
    header = parse_header(R2_BODY)
    assert (header.record_size, header.keyid, header.length) == (25, b"a1", 23)
    cek, nonce = content_keys(header.salt, R2_IKM)
    assert (cek, nonce) == (d("u_eEOTjjVWUVrH82pQNwpw"), d("VqylG1rdt-mJrNgP"))
    assert ece_decrypt(R2_BODY, ikm=R2_IKM) == WALRUS
    # Byte-exact re-encoding: 7 octets + 0x01 + one 0x00 of padding, then 8 octets + 0x02.
    reencoded = ece_encrypt(
        [(b"I am th", 1), (b"e walrus", 0)],
        ikm=R2_IKM,
        salt=header.salt,
        record_size=25,
        keyid=b"a1",
    )
    assert reencoded == R2_BODY


def test_rfc8188_multi_record_second_nonce_is_seq_xor() -> None:
    """Swapping the records fails: each record is bound to its SEQ-XOR nonce."""
    records = R2_BODY[23:48], R2_BODY[48:]
    swapped = R2_BODY[:23] + records[1] + records[0]
    with pytest.raises(DecryptError) as info:
        ece_decrypt(swapped, ikm=R2_IKM)
    assert info.value.reason == "auth_tag_mismatch"


def test_rfc8188_multi_record_cut_at_record_boundary_is_bad_delimiter() -> None:
    with pytest.raises(DecryptError) as info:
        ece_decrypt(R2_BODY[:48], ikm=R2_IKM)
    assert info.value.reason == "bad_delimiter"
    assert "truncated" in str(info.value)


# --- Empty messages: both forms --------------------------------------------------------------


def test_empty_message_as_one_delimiter_record_decrypts_to_empty() -> None:
    """Firefox's form, and what our encrypt writes: one authenticated record of just 0x02."""
    body = encrypt(b"", p256dh=A_KEYS.p256dh, auth_secret=A_AUTH)
    assert len(body) == 86 + 1 + 16
    assert A_KEYS.decrypt(body) == b""


def test_empty_message_as_header_only_is_refused() -> None:
    """http-ece's form carries no tag: anyone could forge it, and a cut body looks the same."""
    header_only = A_BODY[:86]
    with pytest.raises(DecryptError) as info:
        A_KEYS.decrypt(header_only)
    assert info.value.reason == "truncated_record"


# --- Every reason, from a targeted body ------------------------------------------------------


def _body(plaintext: bytes = b"hello", **kwargs: object) -> bytes:
    return encrypt(plaintext, p256dh=A_KEYS.p256dh, auth_secret=A_AUTH, **kwargs)  # type: ignore[arg-type]


def _with_rs(body: bytes, rs: int) -> bytes:
    return body[:16] + rs.to_bytes(4, "big") + body[20:]


def _reason(body: bytes, **kwargs: int) -> str:
    with pytest.raises(DecryptError) as info:
        A_KEYS.decrypt(body, **kwargs)
    assert info.value.reason in REASONS
    return info.value.reason


def test_body_too_large() -> None:
    assert _reason(b"\x00" * (DEFAULT_MAX_BODY + 1)) == "body_too_large"
    assert _reason(_body(b"x" * 100), max_body=150) == "body_too_large"


def test_truncated_header() -> None:
    assert _reason(b"") == "truncated_header"
    assert _reason(A_BODY[:20]) == "truncated_header"
    assert _reason(A_BODY[:85]) == "truncated_header"


def test_record_size_too_small() -> None:
    assert _reason(_with_rs(_body(), 17)) == "record_size_too_small"
    assert _reason(_with_rs(_body(), 0)) == "record_size_too_small"


def test_bad_idlen() -> None:
    body = _body()
    short_keyid = body[:20] + bytes([33]) + body[21:]  # header claims a compressed point
    assert _reason(short_keyid) == "bad_idlen"


def test_bad_keyid_off_curve_and_not_uncompressed() -> None:
    body = _body()
    off_curve = body[:21] + b"\x04" + b"\x01" * 64 + body[86:]
    assert _reason(off_curve) == "bad_keyid"
    compressed_prefix = body[:21] + b"\x02" + body[22:]
    assert _reason(compressed_prefix) == "bad_keyid"


def test_truncated_record() -> None:
    body = _body()
    assert _reason(body[: 86 + 16]) == "truncated_record"  # a tag and no delimiter room


def test_auth_tag_mismatch_wrong_auth_secret() -> None:
    other = SubscriptionKeys(A_UA_PRIVATE, b"\x00" * 16)
    with pytest.raises(DecryptError) as info:
        other.decrypt(A_BODY)
    assert info.value.reason == "auth_tag_mismatch"


def test_auth_tag_mismatch_other_receiver() -> None:
    with pytest.raises(DecryptError) as info:
        SubscriptionKeys.generate().decrypt(A_BODY)
    assert info.value.reason == "auth_tag_mismatch"


def test_record_too_long_when_rs_is_below_the_single_record() -> None:
    body = _body(b"x" * 100)  # one 117-octet record
    assert _reason(_with_rs(body, 100)) == "record_too_long"


def test_larger_rs_still_decrypts() -> None:
    """RFC 8291 §4: a user agent MAY ignore rs; a larger value changes nothing for one record."""
    assert A_KEYS.decrypt(_with_rs(A_BODY, 2**32 - 1)) == A_PLAINTEXT


def _ece_body(plaintext: bytes) -> bytes:
    """A body whose record holds exactly ``plaintext`` (delimiters included), for padding cases."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = b"\x07" * 16
    cek, nonce = content_keys(salt, R1_IKM)
    return salt + (4096).to_bytes(4, "big") + b"\x00" + AESGCM(cek).encrypt(nonce, plaintext, None)


def test_bad_padding_when_record_is_all_zero() -> None:
    with pytest.raises(DecryptError) as info:
        ece_decrypt(_ece_body(b"\x00" * 10), ikm=R1_IKM)
    assert info.value.reason == "bad_padding"
    with pytest.raises(DecryptError) as info:
        ece_decrypt(_ece_body(b""), ikm=R1_IKM)  # a bare tag: no room for a delimiter
    assert info.value.reason == "truncated_record"


@pytest.mark.parametrize("delimiter", [b"\x01", b"\x03", b"\xff"])
def test_bad_delimiter_on_last_record(delimiter: bytes) -> None:
    with pytest.raises(DecryptError) as info:
        ece_decrypt(_ece_body(b"data" + delimiter + b"\x00\x00"), ikm=R1_IKM)
    assert info.value.reason == "bad_delimiter"


def test_bad_delimiter_on_non_final_record() -> None:
    # Two records whose first carries 0x02: build it by hand with the RFC 8188 §3.2 key.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    salt = R2_BODY[:16]
    cek, nonce = content_keys(salt, R2_IKM)
    aead = AESGCM(cek)
    second_nonce = (int.from_bytes(nonce, "big") ^ 1).to_bytes(12, "big")
    body = (
        R2_BODY[:23]
        + aead.encrypt(nonce, b"I am th\x02\x00", None)
        + aead.encrypt(second_nonce, b"e walrus\x02", None)
    )
    with pytest.raises(DecryptError) as info:
        ece_decrypt(body, ikm=R2_IKM)
    assert info.value.reason == "bad_delimiter"


def test_padding_is_stripped() -> None:
    body = _body(b"padded", padding=200)
    assert len(body) == 86 + 6 + 1 + 200 + 16
    assert A_KEYS.decrypt(body) == b"padded"


def test_error_text_never_holds_plaintext_or_keys() -> None:
    body = _body(b"SECRET-PAYLOAD")
    for tampered in (body[:-1], body + b"\x00", _with_rs(body, 20)):
        with pytest.raises(DecryptError) as info:
            A_KEYS.decrypt(tampered)
        text = str(info.value)
        assert "SECRET" not in text
        assert b64url_encode(A_AUTH) not in text


# --- encrypt's own checks --------------------------------------------------------------------


def test_encrypt_largest_webpush_message_fills_4096() -> None:
    body = _body(b"z" * MAX_WEBPUSH_PLAINTEXT)
    assert len(body) == 4096
    assert A_KEYS.decrypt(body) == b"z" * MAX_WEBPUSH_PLAINTEXT


@pytest.mark.parametrize(
    "kwargs",
    [
        {"record_size": 17},
        {"record_size": 2**32},
        {"padding": -1},
        {"record_size": 100, "padding": 80},
        {"salt": b"short"},
        {"auth_secret": b"\x00" * 15},
        {"p256dh": b"\x04" + b"\x01" * 64},
        {"p256dh": A_UA_PUBLIC[:33]},
    ],
)
def test_encrypt_rejects_impossible_parameters(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {"p256dh": A_UA_PUBLIC, "auth_secret": A_AUTH, **kwargs}
    with pytest.raises(ValueError):
        encrypt(b"x" * 10, **args)  # type: ignore[arg-type]


def test_encrypt_uses_fresh_salt_and_sender_key() -> None:
    one, two = _body(b"same"), _body(b"same")
    assert one[:16] != two[:16]
    assert one[21:86] != two[21:86]


def test_ece_encrypt_rejects_short_non_final_record() -> None:
    with pytest.raises(ValueError):
        ece_encrypt([(b"a", 0), (b"b", 0)], ikm=R2_IKM, salt=b"\x00" * 16, record_size=25)


# --- SubscriptionKeys ------------------------------------------------------------------------


def test_generate_gives_distinct_p256_keys() -> None:
    one, two = SubscriptionKeys.generate(), SubscriptionKeys.generate()
    assert len(one.p256dh) == 65 and one.p256dh[0] == 4
    assert len(one.auth_secret) == 16
    assert one.p256dh != two.p256dh and one.auth_secret != two.auth_secret


def test_private_bytes_round_trip(tmp_path: Path) -> None:
    keys = SubscriptionKeys.generate()
    path = tmp_path / "route.key"
    path.write_bytes(keys.private_bytes())
    path.chmod(0o600)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = SubscriptionKeys.from_private_bytes(path.read_bytes(), keys.auth_secret)
    assert loaded.p256dh == keys.p256dh
    assert loaded.decrypt(encrypt(b"hi", p256dh=keys.p256dh, auth_secret=keys.auth_secret)) == b"hi"


def test_from_private_bytes_rejects_garbage_and_other_curves() -> None:
    from cryptography.hazmat.primitives import serialization

    with pytest.raises(ValueError):
        SubscriptionKeys.from_private_bytes(b"not der", b"\x00" * 16)
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError):
        SubscriptionKeys.from_private_bytes(p384, b"\x00" * 16)


def test_subscription_keys_rejects_bad_auth_length() -> None:
    with pytest.raises(ValueError):
        SubscriptionKeys(A_UA_PRIVATE, b"\x00" * 8)


def test_repr_hides_key_material() -> None:
    text = repr(A_KEYS)
    assert "redacted" in text
    for secret in (A_AUTH, A_KEYS.private_bytes()):
        assert b64url_encode(secret) not in text
        assert secret.hex() not in text
    assert b64url_encode(A_AUTH)[:6] not in text


# --- PushSubscriptionInfo --------------------------------------------------------------------


def test_subscription_json_round_trip() -> None:
    info = A_KEYS.subscription_info("https://push.example.net/push/abc", 1700000000000)
    doc = info.to_json()
    assert doc == {
        "endpoint": "https://push.example.net/push/abc",
        "expirationTime": 1700000000000,
        "keys": {"p256dh": b64url_encode(A_UA_PUBLIC), "auth": "BTBZMqHH6r4Tts7J_aSIgg"},
    }
    assert "=" not in json.dumps(doc)
    assert PushSubscriptionInfo.from_json(json.dumps(doc)) == info
    assert PushSubscriptionInfo.from_json(json.dumps(doc).encode()) == info
    assert PushSubscriptionInfo.from_json(doc) == info


def test_subscription_json_accepts_padding_null_and_float_expiry() -> None:
    doc: dict[str, object] = {
        "endpoint": "http://127.0.0.1:8443/push/x",
        "expirationTime": None,
        "keys": {"p256dh": b64url_encode(A_UA_PUBLIC) + "=", "auth": "BTBZMqHH6r4Tts7J_aSIgg=="},
    }
    info = PushSubscriptionInfo.from_json(doc)
    assert (info.p256dh, info.auth, info.expiration_time) == (A_UA_PUBLIC, A_AUTH, None)
    doc["expirationTime"] = 1.7e12
    assert PushSubscriptionInfo.from_json(doc).expiration_time == 1_700_000_000_000


GOOD_KEYS = {"p256dh": b64url_encode(A_UA_PUBLIC), "auth": "BTBZMqHH6r4Tts7J_aSIgg"}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[]", "JSON object"),
        ({"keys": GOOD_KEYS}, "endpoint"),
        ({"endpoint": "ftp://x", "keys": GOOD_KEYS}, "http(s)"),
        ({"endpoint": "https://x"}, "keys"),
        ({"endpoint": "https://x", "keys": {"auth": GOOD_KEYS["auth"]}}, "keys.p256dh"),
        ({"endpoint": "https://x", "keys": {**GOOD_KEYS, "auth": "a+b/"}}, "keys.auth"),
        ({"endpoint": "https://x", "keys": {**GOOD_KEYS, "auth": "AAAA"}}, "16 octets"),
        ({"endpoint": "https://x", "keys": {**GOOD_KEYS, "p256dh": "AAAA"}}, "P-256"),
        ({"endpoint": "https://x", "keys": GOOD_KEYS, "expirationTime": "soon"}, "expirationTime"),
        ({"endpoint": "https://x", "keys": GOOD_KEYS, "expirationTime": True}, "expirationTime"),
    ],
)
def test_subscription_json_errors_are_clear(
    data: str | bytes | dict[str, object], message: str
) -> None:
    with pytest.raises(
        SubscriptionInfoError, match=message.replace("(", r"\(").replace(")", r"\)")
    ):
        PushSubscriptionInfo.from_json(data)


# --- base64url -------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"\x00", b"\xfb\xff", b"abc", bytes(range(256))])
def test_b64url_round_trip_without_padding(raw: bytes) -> None:
    text = b64url_encode(raw)
    assert "=" not in text and "+" not in text and "/" not in text
    assert b64url_decode(text) == raw


@pytest.mark.parametrize("text", ["a", "AB=C", "A===", "ab cd", "ab+/", "AB\n", "é", "ABC=="])
def test_b64url_decode_rejects_garbage(text: str) -> None:
    with pytest.raises(B64DecodeError):
        b64url_decode(text)
    assert issubclass(B64DecodeError, ValueError)
