"""Limits and tunables of the reference push service, each named with where it comes from."""

from __future__ import annotations

from dataclasses import dataclass

# RFC 8030 §7.2: a push service MUST NOT answer 413 to a body of 4096 bytes or less.
MIN_MAX_BODY = 4096
# RFC 8030 §5.2: a TTL too large to represent is taken as 2^31 seconds.
TTL_CEILING = 2**31
# RFC 8030 §5.4: a topic is at most 32 characters of the URL-safe base64 alphabet.
MAX_TOPIC_LENGTH = 32
# RFC 8030 §8: capability URLs need >= 120 bits; token_urlsafe(24) gives 192 bits.
CAPABILITY_TOKEN_BYTES = 24
# RFC 8292 §2: a VAPID JWT's exp must be no more than 24 hours ahead.
VAPID_MAX_EXP_SECONDS = 24 * 3600
# Our own bound on the JSON options body of a subscribe request (RFC 8292 §4.1 needs ~110 bytes).
MAX_SUBSCRIBE_BODY = 4096
# How often the expiry / redelivery sweep runs at most (seconds); keeps the sweep cheap.
SWEEP_INTERVAL = 0.5
# Rows one sweep takes at most (per kind of work); the next sweep takes the rest.
SWEEP_BATCH = 1000
# RFC 8030 §5.2: a zero-TTL message goes only to a user agent available now. On several nodes
# the monitor may be held by another node, reached through pg_notify in milliseconds: the
# message waits this long for it, then expires (410 receipt).
ZERO_TTL_REACH = 2.0


@dataclass(frozen=True)
class ServiceSettings:
    """What a deployment (or a test) may tune."""

    max_body: int = 4096 * 4  # 413 above; never below 4096 (RFC 8030 §7.2)
    redelivery_after: float = 30.0  # unacked pushed messages are pushed again after this
    max_concurrent_streams: int = 100  # our SETTINGS_MAX_CONCURRENT_STREAMS
    max_header_bytes: int = 16384  # HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE and h11's header limit
    max_subscriptions_per_connection: int = 1000  # 429 above (RFC 8030 §8.4 allows rate limits)
    max_ttl: int = 28 * 86400  # answered in the TTL response header when lower
    max_messages_per_subscription: int = 100_000  # 429 above: bounds storage per subscription
    require_vapid: bool = False  # every push needs a valid VAPID JWT (RFC 8292), restricted or not
    requests_per_address: float = 0.0  # per second per client address, 429 above (0: no limit)
    pushes_per_resource: float = 0.0  # per second per push resource, 429 above (0: no limit)
    public_url: str | None = None  # origin of every URL minted (several nodes: the LB's)
    store_threads: int = 8  # worker threads (PostgreSQL connections) for the store
    drain_timeout: float = 30.0  # on SIGTERM: how long streams may take to finish

    def __post_init__(self) -> None:
        if self.max_body < MIN_MAX_BODY:
            raise ValueError(f"max_body must be at least {MIN_MAX_BODY} (RFC 8030 §7.2)")
        if self.redelivery_after <= 0:
            raise ValueError("redelivery_after must be positive")
        if self.max_ttl < 0:
            raise ValueError("max_ttl must not be negative")
        if self.store_threads < 1:
            raise ValueError("store_threads must be at least 1")
