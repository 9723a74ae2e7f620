"""The msgpack envelope some targets receive instead of the raw body."""

from __future__ import annotations

import msgpack

from adapters.base import Message


def encode_envelope(message: Message) -> bytes:
    """A compact msgpack map: id, route, received time, expiry and body.

    Times are integer Unix seconds (msgpack's smallest forms fit a microcontroller); ``exp`` is
    ``nil`` for a message that never expires.
    """
    packed: bytes = msgpack.packb(
        {
            "id": message.id,
            "route": message.route,
            "rcv": int(message.received_at),
            "exp": None if message.expires_at is None else int(message.expires_at),
            "body": message.body,
        },
        use_bin_type=True,
    )
    return packed


def payload_for(message: Message, form: str) -> bytes:
    """The bytes a target configured with ``payload = form`` receives."""
    return encode_envelope(message) if form == "envelope" else message.body
