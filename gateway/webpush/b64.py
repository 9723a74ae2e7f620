"""base64url without padding (RFC 4648 §5), the encoding of every Web Push key in JSON.

W3C Push API and RFC 8291 §6 write keys as base64url with the ``=`` padding omitted; some
senders keep the padding, so decoding accepts both but nothing else (no ``+``/``/``, no
whitespace): a key that only decodes leniently is a key somebody mangled.
"""

from __future__ import annotations

import base64
import binascii
import re

# The base64url alphabet, optionally followed by up to two '=' pad characters.
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class B64DecodeError(ValueError):
    """The text is not base64url."""


def b64url_encode(data: bytes) -> str:
    """Encode ``data`` as base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url text, with or without its ``=`` padding.

    Raises :class:`B64DecodeError` (a ``ValueError``) for any other character or an impossible
    length.
    """
    if not isinstance(text, str):
        raise B64DecodeError(f"expected base64url text, got {type(text).__name__}")
    if _B64URL.fullmatch(text) is None:
        raise B64DecodeError("not base64url: characters outside A-Z a-z 0-9 - _")
    unpadded = text.rstrip("=")
    if len(unpadded) % 4 == 1:
        raise B64DecodeError("not base64url: impossible length")
    if text != unpadded and len(text) % 4 != 0:
        raise B64DecodeError("not base64url: wrong amount of '=' padding")
    try:
        return base64.urlsafe_b64decode(unpadded + "=" * (-len(unpadded) % 4))
    except binascii.Error as exc:  # unreachable after the checks above; keep the contract
        raise B64DecodeError(f"not base64url: {exc}") from None
