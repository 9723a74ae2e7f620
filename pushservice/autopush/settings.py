"""Limits and tunables of the autopush test double, each with where autopush-rs has it."""

from __future__ import annotations

from dataclasses import dataclass

# Stored messages go out in batches of at most this many (fetch_timestamp_messages(.., 10) in
# autoconnect-ws-sm identified/on_server_notif.rs); topic messages are fetched 11 at a time.
STORED_BATCH = 10
TOPIC_BATCH = 11
# RFC 8030 §5.4 and autoendpoint notification_headers.rs: a Topic is at most 32 characters.
MAX_TOPIC_LENGTH = 32
# autopush-common MAX_NOTIFICATION_TTL_SECS: TTLs above 30 days are clamped, not refused.
MAX_TTL = 30 * 86400
# autopush-common MAX_ROUTER_TTL_SECS: a user agent absent for 60 days loses its record.
MAX_USER_IDLE = 60 * 86400.0
# actix-ws's default frame limit (64 KiB): a bigger client message is a protocol error.
MAX_CLIENT_MESSAGE = 64 * 1024
# Our bound on an HTTP request head (h11's default too) and on how long a client may take to
# finish TLS and send its upgrade request (slowloris).
MAX_HEAD_BYTES = 16 * 1024
HANDSHAKE_TIMEOUT = 10.0
# An idle HTTP keep-alive connection is closed after this (seconds).
KEEPALIVE_TIMEOUT = 300.0
# How long a closing WebSocket waits for the client's close frame before dropping TCP.
CLOSE_GRACE = 2.0
# A client that does not read: its unsent bytes beyond this get it disconnected.
MAX_OUTBOX_BYTES = 4 * 1024 * 1024
# Capability tokens and message ids: 192 random bits (RFC 8030 §8 asks for >= 120).
TOKEN_BYTES = 24


@dataclass(frozen=True)
class AutopushSettings:
    """What a test or the demo may tune; the defaults are autopush-rs's."""

    hello_timeout: float = 5.0  # autoconnect open_handshake_timeout
    ping_interval: float = 300.0  # auto_ping_interval: WebSocket pings to the client
    pong_timeout: float = 4.0  # auto_ping_timeout: no pong by then drops the client
    min_protocol_ping_interval: float = 45.0  # `{}` sooner than this: ExcessivePing
    msg_limit: int = 150  # stored messages sent in one session before the uaid is dropped
    # The request body limit. autoendpoint's max_data_bytes is 5630; 4096 is what RFC 8030
    # §7.2 promises and what Mozilla documents, so a sender that passes here passes there.
    max_data_bytes: int = 4096
    max_ttl: int = MAX_TTL
    max_user_idle: float = MAX_USER_IDLE

    def __post_init__(self) -> None:
        for name in ("hello_timeout", "ping_interval", "pong_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.min_protocol_ping_interval < 0 or self.msg_limit < 1 or self.max_data_bytes < 1:
            raise ValueError("limits must be positive")
