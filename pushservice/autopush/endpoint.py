"""The application-server side: ``POST /wpush/{v1,v2}/{token}`` checked as autoendpoint does
(sans-IO: a request in, a validated push or an error out).

autoendpoint's rules (``autoendpoint/src/extractors/*.rs``, ``error.rs``): a token that does
not decrypt is 404 (errno 102); VAPID (``Authorization: vapid t=..,k=..``) is checked whenever
it is sent and required for a ``v2`` endpoint, whose key must hash to the one in the token —
every VAPID failure, a wrong key included, is 401 (errno 109); ``TTL`` is required (400, errno
111), a negative one is 400 (114) and a huge one clamped; ``Topic`` is at most 32 base64url
characters (400, 113); a body needs ``Content-Encoding`` ``aes128gcm`` (or ``aesgcm`` with an
``Encryption: salt=..`` header; 400, 110); a body too large is 413 (104). ``Urgency`` is not
looked at. A dropped uaid or channel is 410 (106), decided by the service.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from http import HTTPStatus

from pushservice.autopush.settings import MAX_TOPIC_LENGTH
from pushservice.autopush.state import TokenInfo, Tokens, key_hash
from pushservice.vapid import VapidError, parse_authorization, parse_public_key, verify_vapid

ERROR_URL = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"
# autoendpoint notification_headers.rs VALID_BASE64_URL.
_B64URL = re.compile(r"^[0-9A-Za-z\-_]+=*$")
_TTL = re.compile(r"^[+-]?[0-9]{1,18}$")  # what Rust's i64 parse accepts, bounded
# A Gone answer may be cached for a day (error.rs).
GONE_CACHE_CONTROL = "max-age=86400"


@dataclass(frozen=True)
class HttpRequest:
    """A complete HTTP/1.1 request: lower-case header names, the whole body."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer_is_loopback: bool

    def header(self, name: str) -> str | None:
        """The first value of a header field."""
        return next((v for k, v in self.headers if k == name), None)


@dataclass(frozen=True)
class HttpResponse:
    """A complete response."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True)
class EndpointError:
    """An autoendpoint error: status, stable errno, message."""

    status: int
    errno: int | None
    message: str

    def response(self) -> HttpResponse:
        """The JSON error body autoendpoint writes (``ApiError`` serialisation)."""
        body = {
            "code": self.status,
            "errno": self.errno,
            "error": HTTPStatus(self.status).phrase,
            "message": self.message,
            "more_info": ERROR_URL,
        }
        headers: list[tuple[str, str]] = [("content-type", "application/json")]
        if self.status == HTTPStatus.GONE:
            headers.append(("cache-control", GONE_CACHE_CONTROL))
        return HttpResponse(self.status, tuple(headers), json.dumps(body).encode())


@dataclass(frozen=True)
class PushRequest:
    """A push that passed every check of the request itself."""

    token: TokenInfo
    ttl: int
    topic: str | None
    data: bytes
    headers: tuple[tuple[str, str], ...]  # what the notification's ``headers`` carries


def _vapid_error(message: str) -> EndpointError:
    return EndpointError(401, 109, message)


def _split_target(target: str) -> tuple[str, str] | None:
    """``/wpush/v1/{t}``, ``/wpush/v2/{t}`` or ``/wpush/{t}`` -> (version, token)."""
    parts = target.split("?", 1)[0].split("/")
    if len(parts) == 4 and parts[:2] == ["", "wpush"] and parts[3]:
        return parts[2], parts[3]
    if len(parts) == 3 and parts[:2] == ["", "wpush"] and parts[2]:
        return "v1", parts[2]
    return None


def _params(header: str) -> dict[str, str]:
    """``a=b; c=d`` (Encryption, Crypto-Key) -> {a: b, c: d}; quotes and padding stripped."""
    out: dict[str, str] = {}
    for part in header.replace(",", ";").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep:
            out[name.strip().lower()] = value.strip().strip('"').rstrip("=")
    return out


def _encoding_headers(req: HttpRequest) -> tuple[tuple[str, str], ...] | EndpointError:
    encoding = req.header("content-encoding")
    encryption = req.header("encryption")
    crypto_key = req.header("crypto-key")
    if encoding is None:
        return EndpointError(400, 110, "Missing Content-Encoding header")
    enc = _params(encryption) if encryption is not None else {}
    ck = _params(crypto_key) if crypto_key is not None else {}
    if encoding == "aesgcm":
        salt = enc.get("salt")
        if salt is None or not _B64URL.match(salt):
            return EndpointError(400, 110, "Missing or invalid salt value in Encryption header")
        dh = ck.get("dh")
        if crypto_key is not None and (dh is None or not _B64URL.match(dh)):
            return EndpointError(400, 110, "Missing or invalid dh value in Crypto-Key header")
    elif encoding == "aes128gcm":
        if "salt" in enc:
            return EndpointError(400, 110, "Do not include 'salt' header in aes128gcm Encryption")
        if "dh" in ck:
            return EndpointError(400, 110, "Do not include 'dh' header in aes128gcm Crypto-Key")
    else:
        return EndpointError(400, 110, "Unknown Content-Encoding header")
    headers = [("encoding", encoding)]
    if encryption is not None:
        headers.append(("encryption", encryption.replace('"', "")))
    if crypto_key is not None:
        headers.append(("crypto_key", crypto_key.replace('"', "")))
    return tuple(headers)


def _check_vapid(
    req: HttpRequest, version: str, info: TokenInfo, audience: str, now: float
) -> EndpointError | None:
    auth = req.header("authorization")
    if auth is None:
        return _vapid_error("Missing VAPID key") if version == "v2" else None
    try:
        raw_key = parse_public_key(parse_authorization(auth).key)
    except VapidError as exc:
        return _vapid_error(f"Invalid VAPID: {exc.reason}")
    except ValueError:
        return _vapid_error("Invalid VAPID public key")
    if version == "v2" and key_hash(raw_key) != info.key_hash:
        return _vapid_error("VAPID public key mismatch")
    try:
        # The key was matched above (or is not bound, v1): verify signature, exp and aud.
        verify_vapid(auth, audience=audience, restricted_key=raw_key, now=now)
    except VapidError as exc:
        return _vapid_error(exc.reason)
    return None


def parse_push(
    req: HttpRequest, *, tokens: Tokens, audience: str, now: float, max_data: int, max_ttl: int
) -> PushRequest | EndpointError:
    """Check one push request; ``audience`` is the endpoint origin VAPID ``aud`` must name."""
    split = _split_target(req.target)
    if split is None:
        return EndpointError(404, None, "Not Found")
    version, token = split
    if version not in ("v1", "v2"):
        return EndpointError(404, 102, "Invalid API version")
    info = tokens.read(version, token)
    if info is None:
        return EndpointError(404, 102, "Invalid token")
    vapid = _check_vapid(req, version, info, audience, now)
    if vapid is not None:
        return vapid
    if len(req.body) > max_data:
        return EndpointError(413, 104, f"Body over {max_data} bytes")
    ttl_text = (req.header("ttl") or "").strip()
    if not _TTL.match(ttl_text):
        return EndpointError(400, 111, "Missing TTL value")
    ttl = int(ttl_text)
    if ttl < 0:
        return EndpointError(400, 114, "TTL must be greater than 0")
    topic = req.header("topic")
    if topic is not None and (len(topic) > MAX_TOPIC_LENGTH or not _B64URL.match(topic)):
        return EndpointError(400, 113, "Topic must be at most 32 URL-safe base64 characters")
    headers: tuple[tuple[str, str], ...] = ()
    if req.body:
        encoding = _encoding_headers(req)
        if isinstance(encoding, EndpointError):
            return encoding
        headers = encoding
    return PushRequest(info, min(ttl, max_ttl), topic, req.body, headers)
