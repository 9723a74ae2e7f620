"""RFC 8292 (VAPID) verification for restricted subscriptions: ES256 JWTs with ``cryptography``."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from pushservice.settings import VAPID_MAX_EXP_SECONDS

# P-256 uncompressed point (X9.62): 0x04 || X || Y.
P256_POINT_BYTES = 65
# ES256 JWS signature: raw r || s, 32 bytes each (RFC 7518 §3.4).
ES256_SIGNATURE_BYTES = 64


class VapidError(Exception):
    """Authentication failed; ``status`` is 401 (absent or invalid) or 403 (wrong key)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def b64url_decode(text: str) -> bytes:
    """Decode base64url with or without padding; raises ValueError."""
    text = text.strip()
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def b64url_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse_public_key(encoded: str) -> bytes:
    """Validate a base64url uncompressed P-256 point; return its 65 bytes (ValueError if bad)."""
    raw = b64url_decode(encoded)
    if len(raw) != P256_POINT_BYTES or raw[0] != 4:
        raise ValueError("not an uncompressed P-256 point")
    ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # checks the curve
    return raw


@dataclass(frozen=True)
class VapidCredentials:
    """The ``t`` and ``k`` parameters of an ``Authorization: vapid`` header."""

    token: str
    key: str


def parse_authorization(header: str | None) -> VapidCredentials:
    """Parse ``vapid t=<jwt>, k=<key>``; 401 when absent or malformed."""
    if not header:
        raise VapidError(401, "missing vapid authorization")
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise VapidError(401, "authorization scheme is not vapid")
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            params[name.strip().lower()] = value.strip().strip('"')
    if "t" not in params or "k" not in params:
        raise VapidError(401, "vapid authorization needs t and k")
    return VapidCredentials(params["t"], params["k"])


def verify_vapid(
    header: str | None, *, audience: str, restricted_key: bytes, now: float
) -> dict[str, object]:
    """Check the VAPID header of a push to a restricted subscription; return the JWT claims.

    ``audience`` is the origin of the push resource; ``restricted_key`` the 65-byte key bound at
    subscription time. Raises VapidError(401) for absent/invalid auth, (403) for another key.
    """
    creds = parse_authorization(header)
    try:
        key_bytes = parse_public_key(creds.key)
    except ValueError as exc:
        raise VapidError(401, "invalid vapid key") from exc
    if key_bytes != restricted_key:
        raise VapidError(403, "vapid key does not match the subscription")
    parts = creds.token.split(".")
    if len(parts) != 3:
        raise VapidError(401, "malformed JWT")
    try:
        header_json = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except (ValueError, UnicodeDecodeError) as exc:
        raise VapidError(401, "malformed JWT") from exc
    if not isinstance(header_json, dict) or header_json.get("alg") != "ES256":
        raise VapidError(401, "JWT alg must be ES256")
    if not isinstance(claims, dict):
        raise VapidError(401, "JWT claims must be an object")
    if len(signature) != ES256_SIGNATURE_BYTES:
        raise VapidError(401, "ES256 signature must be 64 bytes")
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    public_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), key_bytes)
    signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
    try:
        public_key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VapidError(401, "JWT signature does not verify") from exc
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or isinstance(exp, bool):
        raise VapidError(401, "JWT exp missing")
    if exp <= now:
        raise VapidError(401, "JWT expired")
    if exp > now + VAPID_MAX_EXP_SECONDS:
        raise VapidError(401, "JWT exp more than 24 hours ahead")
    aud = claims.get("aud")
    if not isinstance(aud, str) or aud.rstrip("/") != audience:
        raise VapidError(401, "JWT aud is not the push resource origin")
    return claims


def sign_vapid(private_key: ec.EllipticCurvePrivateKey, claims: dict[str, object]) -> str:
    """Make an ``Authorization: vapid`` value (used by ``fieldgate send`` and the tests)."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    header = b64url_encode(json.dumps({"typ": "JWT", "alg": "ES256"}).encode())
    payload = b64url_encode(json.dumps(claims, separators=(",", ":")).encode())
    signing_input = f"{header}.{payload}".encode("ascii")
    der = private_key.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    signature = b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    key = b64url_encode(
        private_key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    )
    return f"vapid t={header}.{payload}.{signature}, k={key}"
