"""Web Push message encryption: RFC 8291 on top of RFC 8188 ``aes128gcm`` (sans-IO).

Layers, bottom up:

- RFC 8188 content coding: :func:`parse_header`, :func:`content_keys` (salt + IKM -> CEK and
  NONCE), :func:`decrypt_records` (any number of records, SEQ-XOR nonces, 0x01/0x02 padding
  delimiters), :func:`ece_decrypt` / :func:`ece_encrypt` with a raw IKM.
- RFC 8291 Web Push profile: :func:`webpush_ikm` (ECDH secret + auth secret -> IKM),
  :func:`decrypt` (idlen 65, keyid an uncompressed P-256 point), :func:`encrypt` (one record,
  fresh salt and sender key).
- Key material: :class:`SubscriptionKeys` (one route's key pair and auth secret) and
  :class:`PushSubscriptionInfo` (the W3C ``PushSubscription`` JSON handed to application servers).

Every failure to decrypt is a :class:`DecryptError` whose ``reason`` is one of :data:`REASONS`;
no other exception and no partial plaintext leaves :func:`decrypt`.

The two empty forms (decided here, tested in ``tests/test_crypto.py``):

- **One record holding only the delimiter** (what Firefox and our :func:`encrypt` send): an
  authenticated empty message; decrypts to ``b""``.
- **A header with no record at all** (what ``http_ece.encrypt(b"")`` produces): rejected as
  ``truncated_record``. It carries no authentication tag, so anyone who knows the push resource
  could forge it, and it is exactly what a real message cut off after its header looks like.
  No sender in the wild emits it: pywebpush and the npm ``web-push`` send an empty message as a
  push with no body at all (RFC 8030 allows that; it is not an ``aes128gcm`` body and is never
  passed to :func:`decrypt`).

Legacy ``aesgcm`` (draft-04, keys in ``Crypto-Key``/``Encryption`` headers) is not supported:
RFC 8291 says application servers MUST NOT use other encodings, and no current library sends it
by default.

The key schedule uses ``hmac.digest`` (one-shot OpenSSL HMAC) for the HKDF steps: every
derived value is at most one SHA-256 block, so HKDF-Expand is a single HMAC, and the one-shot
call needs no HKDF or HMAC object per step (measured: about equal to the bare-`cryptography`
floor; the ECDH is ~55 µs of ~100 µs, perf-limits.md §1).
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.webpush.b64 import B64DecodeError, b64url_decode, b64url_encode

__all__ = [
    "AUTH_SECRET_LENGTH",
    "DEFAULT_MAX_BODY",
    "MAX_WEBPUSH_PLAINTEXT",
    "REASONS",
    "Aes128gcmHeader",
    "B64DecodeError",
    "DecryptError",
    "PushSubscriptionInfo",
    "SubscriptionInfoError",
    "SubscriptionKeys",
    "b64url_decode",
    "b64url_encode",
    "content_keys",
    "decrypt",
    "decrypt_records",
    "ece_decrypt",
    "ece_encrypt",
    "encrypt",
    "parse_header",
    "webpush_ikm",
]

# --- Limits and constants ------------------------------------------------------------------

SALT_LENGTH = 16  # RFC 8188 §2: "salt: The salt parameter comprises the first 16 octets"
RS_LENGTH = 4  # RFC 8188 §2: rs is an unsigned 32-bit integer
FIXED_HEADER_LENGTH = SALT_LENGTH + RS_LENGTH + 1  # salt || rs || idlen (the keyid follows)
TAG_LENGTH = 16  # AEAD_AES_128_GCM tag (RFC 8188 §2.1)
KEY_LENGTH = 16  # AEAD_AES_128_GCM key (RFC 8188 §2.2)
NONCE_LENGTH = 12  # AEAD_AES_128_GCM nonce (RFC 8188 §2.3)
MIN_RECORD_SIZE = TAG_LENGTH + 2  # RFC 8188 §2: "Values smaller than 18 are invalid."
MAX_RECORD_SIZE = 2**32 - 1  # rs is 32 bits
P256_POINT_LENGTH = 65  # uncompressed X9.62 point 0x04 || X || Y (RFC 8291 §4 keyid)
AUTH_SECRET_LENGTH = 16  # RFC 8291 §3.2: "a hard to guess sequence of 16 octets"
WEBPUSH_HEADER_LENGTH = FIXED_HEADER_LENGTH + P256_POINT_LENGTH  # 86
# RFC 8030 §7.2 / RFC 8291 §4: push services must accept at least 4096 octets of body; that is
# the interoperable maximum, so it is the default limit on what we are willing to decrypt.
DEFAULT_MAX_BODY = 4096
# 4096 - 86 (header) - 1 (delimiter) - 16 (tag) = 3993, RFC 8291 §4.
MAX_WEBPUSH_PLAINTEXT = DEFAULT_MAX_BODY - WEBPUSH_HEADER_LENGTH - 1 - TAG_LENGTH
DEFAULT_RECORD_SIZE = 4096  # what every encoder in the wild writes (RFC 8291 §5 example)

_LAST_DELIMITER = 2  # RFC 8188 §2: last record's padding delimiter
_OTHER_DELIMITER = 1  # every other record's

# HKDF info strings, each already followed by HKDF-Expand's single-block counter 0x01.
_WEBPUSH_INFO = b"WebPush: info\x00"  # RFC 8291 §3.4, then ua_public || as_public || 0x01
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"  # RFC 8188 §2.2
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"  # RFC 8188 §2.3

_CURVE = ec.SECP256R1()
_ECDH = ec.ECDH()

# --- Errors ----------------------------------------------------------------------------------

REASONS = frozenset(
    {
        "body_too_large",  # body longer than the caller's max_body
        "truncated_header",  # fewer octets than salt || rs || idlen || keyid
        "record_size_too_small",  # rs < 18
        "bad_idlen",  # Web Push: idlen != 65
        "bad_keyid",  # Web Push: keyid is not an uncompressed point on P-256
        "truncated_record",  # a record shorter than tag + delimiter
        "auth_tag_mismatch",  # AES-GCM authentication failed (wrong key, tampering)
        "record_too_long",  # one record longer than the rs its header declares
        "bad_padding",  # a record with no non-zero octet (no delimiter at all)
        "bad_delimiter",  # delimiter not 2 on the last record / not 1 on the others
    }
)


class DecryptError(Exception):
    """A body that cannot be decrypted. ``reason`` is a stable snake_case code from
    :data:`REASONS` (used as a metric label and dead-letter reason); the message never contains
    key material or plaintext."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --- RFC 8188 content coding -----------------------------------------------------------------


class Aes128gcmHeader(NamedTuple):
    """The RFC 8188 §2.1 header at the start of an ``aes128gcm`` body.

    A named tuple rather than a dataclass: it is built once per message on the hot path, and a
    frozen dataclass's constructor costs about a microsecond more.
    """

    salt: bytes
    record_size: int
    keyid: bytes
    length: int  # octets of header: the first record starts here


def parse_header(body: bytes, *, max_body: int = DEFAULT_MAX_BODY) -> Aes128gcmHeader:
    """Parse the header of ``body`` (and enforce ``max_body``), raising :class:`DecryptError`."""
    if len(body) > max_body:
        raise DecryptError("body_too_large", f"{len(body)} octets > limit {max_body}")
    if len(body) < FIXED_HEADER_LENGTH:
        raise DecryptError("truncated_header", f"{len(body)} octets")
    record_size = int.from_bytes(body[SALT_LENGTH : SALT_LENGTH + RS_LENGTH], "big")
    if record_size < MIN_RECORD_SIZE:
        raise DecryptError("record_size_too_small", f"rs {record_size}")
    idlen = body[FIXED_HEADER_LENGTH - 1]
    length = FIXED_HEADER_LENGTH + idlen
    if len(body) < length:
        raise DecryptError("truncated_header", f"{len(body)} octets, idlen {idlen}")
    return Aes128gcmHeader(
        salt=body[:SALT_LENGTH],
        record_size=record_size,
        keyid=body[FIXED_HEADER_LENGTH:length],
        length=length,
    )


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    return hmac.digest(key, message, "sha256")


def content_keys(salt: bytes, ikm: bytes) -> tuple[bytes, bytes]:
    """RFC 8188 §2.2-2.3: the content-encryption key and base nonce for ``salt`` and ``ikm``."""
    prk = _hmac_sha256(salt, ikm)  # HKDF-Extract
    return (
        _hmac_sha256(prk, _CEK_INFO)[:KEY_LENGTH],
        _hmac_sha256(prk, _NONCE_INFO)[:NONCE_LENGTH],
    )


def _open_record(aead: AESGCM, nonce: bytes, record: bytes) -> bytes:
    try:
        return aead.decrypt(nonce, record, None)
    except InvalidTag:
        raise DecryptError("auth_tag_mismatch") from None


def _unpad(plaintext: bytes, *, last: bool) -> bytes:
    """Strip ``delimiter || 0x00*`` (RFC 8188 §2): the delimiter is the last non-zero octet."""
    expected = _LAST_DELIMITER if last else _OTHER_DELIMITER
    if plaintext and plaintext[-1] == expected:  # no padding: the common case
        return plaintext[:-1]
    data = plaintext.rstrip(b"\x00")
    if not data:
        raise DecryptError("bad_padding", "record has no delimiter")
    if data[-1] != expected:
        where = "last record" if last else "non-final record"
        detail = f"{where} delimiter {data[-1]}, expected {expected}"
        if last and data[-1] == _OTHER_DELIMITER:
            detail += " (body truncated at a record boundary)"
        raise DecryptError("bad_delimiter", detail)
    return data[:-1]


def decrypt_records(payload: bytes, *, record_size: int, cek: bytes, nonce: bytes) -> bytes:
    """Decrypt the records that follow the header (RFC 8188 §2), raising :class:`DecryptError`.

    ``payload`` is cut into ``record_size``-octet records (the last may be shorter); record SEQ
    uses ``nonce XOR SEQ``. At least one record is required (see the module docstring).
    """
    if not payload:
        raise DecryptError("truncated_record", "no record after the header")
    aead = AESGCM(cek)
    if len(payload) <= record_size:  # a single record: every Web Push message (RFC 8291 §4)
        if len(payload) < TAG_LENGTH + 1:
            raise DecryptError("truncated_record", f"record of {len(payload)} octets")
        return _unpad(_open_record(aead, nonce, payload), last=True)
    base = int.from_bytes(nonce, "big")
    parts: list[bytes] = []
    for seq, start in enumerate(range(0, len(payload), record_size)):
        record = payload[start : start + record_size]
        if len(record) < TAG_LENGTH + 1:
            raise DecryptError("truncated_record", f"record {seq} of {len(record)} octets")
        record_nonce = (base ^ seq).to_bytes(NONCE_LENGTH, "big")
        try:
            plaintext = _open_record(aead, record_nonce, record)
        except DecryptError:
            if seq == 0 and _is_one_oversized_record(aead, nonce, payload):
                raise DecryptError(
                    "record_too_long", f"{len(payload)}-octet record, rs {record_size}"
                ) from None
            raise
        parts.append(_unpad(plaintext, last=start + record_size >= len(payload)))
    return b"".join(parts)


def _is_one_oversized_record(aead: AESGCM, nonce: bytes, payload: bytes) -> bool:
    """Diagnosis on the failure path only: is ``payload`` one valid record, longer than rs?

    That is a sender who wrote a wrong rs (for instance forgot the tag); say so instead of
    reporting a tag mismatch. The plaintext is discarded either way.
    """
    try:
        aead.decrypt(nonce, payload, None)
    except InvalidTag:
        return False
    return True


def ece_decrypt(body: bytes, *, ikm: bytes, max_body: int = DEFAULT_MAX_BODY) -> bytes:
    """Decrypt a generic RFC 8188 ``aes128gcm`` body given the input keying material directly
    (any keyid; no Web Push profile). Raises only :class:`DecryptError`."""
    header = parse_header(body, max_body=max_body)
    cek, nonce = content_keys(header.salt, ikm)
    return decrypt_records(
        body[header.length :], record_size=header.record_size, cek=cek, nonce=nonce
    )


def ece_encrypt(
    records: Sequence[tuple[bytes, int]],
    *,
    ikm: bytes,
    salt: bytes,
    record_size: int,
    keyid: bytes = b"",
) -> bytes:
    """Encode a generic RFC 8188 body from explicit ``(data, padding)`` records.

    Each record is ``data || delimiter || 0x00 * padding``; non-final records must fill
    ``record_size`` exactly. Enough to reproduce RFC 8188 §3.2 byte for byte and to build
    multi-record bodies for tests. Raises ``ValueError`` on impossible parameters.
    """
    _check_record_size(record_size)
    if len(salt) != SALT_LENGTH:
        raise ValueError(f"salt must be {SALT_LENGTH} octets")
    if len(keyid) > 255:
        raise ValueError("keyid longer than 255 octets")
    if not records:
        raise ValueError("at least one record is needed")
    cek, nonce = content_keys(salt, ikm)
    aead = AESGCM(cek)
    base = int.from_bytes(nonce, "big")
    out = [salt, record_size.to_bytes(RS_LENGTH, "big"), bytes([len(keyid)]), keyid]
    for seq, (data, padding) in enumerate(records):
        last = seq == len(records) - 1
        delimiter = _LAST_DELIMITER if last else _OTHER_DELIMITER
        plaintext = data + bytes([delimiter]) + b"\x00" * padding
        size = len(plaintext) + TAG_LENGTH
        if size > record_size or (not last and size != record_size):
            raise ValueError(f"record {seq} is {size} octets, rs is {record_size}")
        out.append(aead.encrypt((base ^ seq).to_bytes(NONCE_LENGTH, "big"), plaintext, None))
    return b"".join(out)


def _check_record_size(record_size: int) -> None:
    if not MIN_RECORD_SIZE <= record_size <= MAX_RECORD_SIZE:
        raise ValueError(f"record size must be {MIN_RECORD_SIZE}..{MAX_RECORD_SIZE}")


# --- RFC 8291 Web Push profile ---------------------------------------------------------------


def webpush_ikm(
    ecdh_secret: bytes, auth_secret: bytes, ua_public: bytes, as_public: bytes
) -> bytes:
    """RFC 8291 §3.3-3.4: combine the ECDH secret and the auth secret into the RFC 8188 IKM."""
    prk_key = _hmac_sha256(auth_secret, ecdh_secret)  # HKDF-Extract(auth_secret, ecdh_secret)
    return _hmac_sha256(prk_key, _WEBPUSH_INFO + ua_public + as_public + b"\x01")


def _public_bytes(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _load_point(point: bytes) -> ec.EllipticCurvePublicKey:
    """Load an uncompressed P-256 point; ``ValueError`` if it is not one (RFC 8291 §7)."""
    if len(point) != P256_POINT_LENGTH or point[0] != 0x04:
        raise ValueError("not a 65-octet uncompressed point")
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVE, point)


def _decrypt_webpush(
    body: bytes,
    private_key: ec.EllipticCurvePrivateKey,
    ua_public: bytes,
    auth_secret: bytes,
    max_body: int,
) -> bytes:
    header = parse_header(body, max_body=max_body)
    keyid = header.keyid
    if len(keyid) != P256_POINT_LENGTH:
        raise DecryptError("bad_idlen", f"idlen {len(keyid)}, expected {P256_POINT_LENGTH}")
    try:
        sender = _load_point(keyid)
    except ValueError:
        raise DecryptError("bad_keyid", "keyid is not an uncompressed P-256 point") from None
    payload = body[header.length :]
    if not payload:  # checked before the 70 µs ECDH: a header-only body is refused anyway
        raise DecryptError("truncated_record", "no record after the header")
    ecdh_secret = private_key.exchange(_ECDH, sender)
    cek, nonce = content_keys(header.salt, webpush_ikm(ecdh_secret, auth_secret, ua_public, keyid))
    return decrypt_records(payload, record_size=header.record_size, cek=cek, nonce=nonce)


def decrypt(
    body: bytes,
    *,
    private_key: ec.EllipticCurvePrivateKey,
    auth_secret: bytes,
    max_body: int = DEFAULT_MAX_BODY,
) -> bytes:
    """Decrypt a Web Push ``aes128gcm`` body (RFC 8291) for the receiver ``private_key``.

    Raises :class:`DecryptError` and nothing else for any body. Prefer
    :meth:`SubscriptionKeys.decrypt`, which does not re-serialise the public key per call.
    """
    return _decrypt_webpush(
        body, private_key, _public_bytes(private_key.public_key()), auth_secret, max_body
    )


def encrypt(
    plaintext: bytes,
    *,
    p256dh: bytes,
    auth_secret: bytes,
    record_size: int = DEFAULT_RECORD_SIZE,
    padding: int = 0,
    salt: bytes | None = None,
    sender_private_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """Encrypt ``plaintext`` for the subscription ``(p256dh, auth_secret)`` as RFC 8291 says:
    one record of ``plaintext || 0x02 || 0x00 * padding``, a fresh random salt and a fresh
    sender key unless given (fixed ones are for test vectors only).

    Raises ``ValueError`` for a bad key, salt or auth secret, or a message that does not fit in
    one record of ``record_size``.
    """
    _check_record_size(record_size)
    if padding < 0:
        raise ValueError("padding must be >= 0")
    if len(plaintext) + 1 + padding + TAG_LENGTH > record_size:
        raise ValueError(
            f"{len(plaintext)} octets + {padding} padding do not fit one record of {record_size}"
        )
    if len(auth_secret) != AUTH_SECRET_LENGTH:
        raise ValueError(f"auth secret must be {AUTH_SECRET_LENGTH} octets")
    if salt is None:
        salt = os.urandom(SALT_LENGTH)
    elif len(salt) != SALT_LENGTH:
        raise ValueError(f"salt must be {SALT_LENGTH} octets")
    receiver = _load_point(p256dh)
    if sender_private_key is None:
        sender_private_key = ec.generate_private_key(_CURVE)
    as_public = _public_bytes(sender_private_key.public_key())
    ecdh_secret = sender_private_key.exchange(_ECDH, receiver)
    cek, nonce = content_keys(salt, webpush_ikm(ecdh_secret, auth_secret, p256dh, as_public))
    header = salt + record_size.to_bytes(RS_LENGTH, "big") + bytes([len(as_public)]) + as_public
    padded = plaintext + bytes([_LAST_DELIMITER]) + b"\x00" * padding
    return header + AESGCM(cek).encrypt(nonce, padded, None)


# --- Key material ----------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class SubscriptionKeys:
    """One route's receiving key material: a P-256 key pair and a 16-octet auth secret."""

    private_key: ec.EllipticCurvePrivateKey
    auth_secret: bytes
    _p256dh: bytes = field(init=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, ec.EllipticCurvePrivateKey) or not isinstance(
            self.private_key.curve, ec.SECP256R1
        ):
            raise ValueError("private_key must be a P-256 (secp256r1) private key")
        if len(self.auth_secret) != AUTH_SECRET_LENGTH:
            raise ValueError(f"auth secret must be {AUTH_SECRET_LENGTH} octets")
        # Cached once: serialising the public point costs a few µs per message otherwise.
        object.__setattr__(self, "_p256dh", _public_bytes(self.private_key.public_key()))

    @classmethod
    def generate(cls) -> SubscriptionKeys:
        """Fresh key pair and auth secret from the OS CSPRNG (RFC 8291 §3.2)."""
        return cls(ec.generate_private_key(_CURVE), os.urandom(AUTH_SECRET_LENGTH))

    @property
    def p256dh(self) -> bytes:
        """The 65-octet uncompressed public point (``keys.p256dh`` in the subscription JSON)."""
        return self._p256dh

    def private_bytes(self) -> bytes:
        """The private key as unencrypted DER PKCS#8, for the store (keep the file 0600)."""
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @classmethod
    def from_private_bytes(cls, der: bytes, auth_secret: bytes) -> SubscriptionKeys:
        """Load what :meth:`private_bytes` wrote; ``ValueError`` if it is not a P-256 key."""
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"not a DER PKCS#8 private key: {type(exc).__name__}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("not an elliptic-curve private key")
        return cls(key, auth_secret)

    def decrypt(self, body: bytes, *, max_body: int = DEFAULT_MAX_BODY) -> bytes:
        """Decrypt a Web Push body sent to these keys; raises only :class:`DecryptError`."""
        return _decrypt_webpush(body, self.private_key, self._p256dh, self.auth_secret, max_body)

    def subscription_info(
        self, endpoint: str, expiration_time: int | None = None
    ) -> PushSubscriptionInfo:
        """The W3C ``PushSubscription`` for these keys at the push resource ``endpoint``."""
        return PushSubscriptionInfo(endpoint, self.p256dh, self.auth_secret, expiration_time)

    def __repr__(self) -> str:
        # The public point is not secret and identifies the route; the rest stays out of logs.
        return f"SubscriptionKeys(p256dh={b64url_encode(self._p256dh)[:12]}…, private=<redacted>)"


class SubscriptionInfoError(ValueError):
    """A ``PushSubscription`` JSON document that is malformed or carries unusable keys."""


@dataclass(frozen=True)
class PushSubscriptionInfo:
    """The W3C Push API ``PushSubscription`` JSON: what an application server needs to send."""

    endpoint: str
    p256dh: bytes
    auth: bytes
    expiration_time: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.endpoint, str) or not self.endpoint.startswith(
            ("https://", "http://")
        ):
            raise SubscriptionInfoError("endpoint must be an http(s) URL")
        try:
            _load_point(self.p256dh)
        except (ValueError, TypeError):
            raise SubscriptionInfoError(
                "keys.p256dh must be a 65-octet uncompressed P-256 point"
            ) from None
        if not isinstance(self.auth, bytes) or len(self.auth) != AUTH_SECRET_LENGTH:
            raise SubscriptionInfoError(f"keys.auth must be {AUTH_SECRET_LENGTH} octets")
        if self.expiration_time is not None and (
            isinstance(self.expiration_time, bool) or not isinstance(self.expiration_time, int)
        ):
            raise SubscriptionInfoError("expirationTime must be an integer or null")

    def to_json(self) -> dict[str, object]:
        """The JSON object, keys in base64url without padding."""
        return {
            "endpoint": self.endpoint,
            "expirationTime": self.expiration_time,
            "keys": {"p256dh": b64url_encode(self.p256dh), "auth": b64url_encode(self.auth)},
        }

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, object]) -> PushSubscriptionInfo:
        """Parse a JSON text or an already-decoded object; :class:`SubscriptionInfoError` if it
        is not a usable subscription."""
        obj: Any = data
        if isinstance(data, str | bytes):
            try:
                obj = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise SubscriptionInfoError(f"not JSON: {exc}") from None
        if not isinstance(obj, Mapping):
            raise SubscriptionInfoError("a subscription must be a JSON object")
        endpoint = obj.get("endpoint")
        if not isinstance(endpoint, str):
            raise SubscriptionInfoError("missing or non-string 'endpoint'")
        keys = obj.get("keys")
        if not isinstance(keys, Mapping):
            raise SubscriptionInfoError("missing 'keys' object")
        decoded = {name: _decode_key(keys, name) for name in ("p256dh", "auth")}
        expiration = obj.get("expirationTime")
        if isinstance(expiration, float) and expiration.is_integer():
            expiration = int(expiration)  # a JS number may arrive as 1.7e12
        if expiration is not None and (
            isinstance(expiration, bool) or not isinstance(expiration, int)
        ):
            raise SubscriptionInfoError("'expirationTime' must be a number or null")
        return cls(endpoint, decoded["p256dh"], decoded["auth"], expiration)


def _decode_key(keys: Mapping[str, object], name: str) -> bytes:
    value = keys.get(name)
    if not isinstance(value, str):
        raise SubscriptionInfoError(f"missing or non-string 'keys.{name}'")
    try:
        return b64url_decode(value)
    except B64DecodeError as exc:
        raise SubscriptionInfoError(f"'keys.{name}': {exc}") from None
