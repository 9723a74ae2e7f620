"""MQTT publishing decisions without I/O: topics, MQTT 5 properties, outcomes, reconnect delays.

Everything here is a pure function of its arguments (time and randomness are passed in), so the
rules are unit-tested without a broker; :mod:`adapters.mqtt` applies them to a live connection.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass

from adapters.base import Delivered, Expired, Message, Outcome, Rejected, RetryLater
from fieldgate_common.backoff import full_jitter

# MQTT 5 §2.2.2.2 / MQTT 3.1.1 §1.5.3: a topic is a UTF-8 string of at most 65,535 bytes.
MAX_TOPIC_BYTES = 65535
# MQTT 5 §3.3.2.3.3: Message Expiry Interval is a Four Byte Integer of whole seconds.
MAX_EXPIRY_INTERVAL = 2**32 - 1
# MQTT 5 §2.4: reason codes of 0x80 and above are failures.
FIRST_FAILURE_REASON = 0x80
# Failures that pass: Quota exceeded (0x97, §3.4.2.1) and Server busy (0x89) say "not now", not
# "never" — retried like a broker that is down, never dead-lettered.
TRANSIENT_REASONS = frozenset({0x89, 0x97})


@dataclass(frozen=True)
class Publication:
    """What one delivery publishes: the rendered topic and the MQTT 5 properties' values."""

    topic: str
    expiry_interval: int | None  # whole seconds; None: the message never expires
    content_type: str | None
    user_properties: tuple[tuple[str, str], ...]


def render_topic(template: str, message: Message) -> str:
    """Replace ``{route}`` and ``{id}`` in a target's topic (other braces stay as they are)."""
    return template.replace("{route}", message.route).replace("{id}", message.id)


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to, or ``None`` when it can."""
    if not topic:
        return "topic is empty"
    if "+" in topic or "#" in topic:
        return f"topic {topic!r} contains a wildcard (+ or #)"
    if "\x00" in topic:
        return "topic contains a NUL character"
    if len(topic.encode("utf-8", "surrogatepass")) > MAX_TOPIC_BYTES:
        return f"topic is longer than {MAX_TOPIC_BYTES} bytes"
    return None


# The broker counts a message's lifetime in whole seconds (Message Expiry Interval): a message
# with less than one second left cannot be given to it without outliving its deadline there.
EXPIRY_RESOLUTION = 1.0


def expiry_interval(remaining: float | None) -> int | None:
    """The Message Expiry Interval for ``remaining`` seconds of lifetime (at least one).

    Rounded down, so the broker drops the message no later than the gateway would. ``None``
    (no expiry) stays ``None``.
    """
    if remaining is None:
        return None
    return min(max(int(remaining), 1), MAX_EXPIRY_INTERVAL)


def plan_publication(
    message: Message, topic_template: str, content_type: str | None, now: float
) -> Publication | Rejected | Expired:
    """Decide what to publish for ``message``, or why it must not be published at all.

    The deadline is the last thing checked before the publish: the caller plans right before
    it writes.
    """
    topic = render_topic(topic_template, message)
    problem = topic_problem(topic)
    if problem is not None:
        return Rejected(problem)
    if message.expired(now, margin=EXPIRY_RESOLUTION):
        return Expired("less than a second left: the broker counts whole seconds")
    return Publication(
        topic=topic,
        expiry_interval=expiry_interval(message.remaining_lifetime(now)),
        content_type=content_type if content_type is not None else message.content_type,
        user_properties=(("message-id", message.id), ("route", message.route)),
    )


# MQTT 5 §2.2.2.2 property identifiers.
MESSAGE_EXPIRY_INTERVAL = 0x02
CONTENT_TYPE = 0x03
USER_PROPERTY = 0x26


def _utf8(text: str) -> bytes:
    """MQTT 5 §1.5.4 UTF-8 Encoded String: two-byte length, then the bytes."""
    data = text.encode("utf-8")
    return struct.pack("!H", len(data)) + data


def variable_byte_integer(value: int) -> bytes:
    """MQTT 5 §1.5.5: seven bits per byte, least significant first, high bit = more follows."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode_publish_properties(publication: Publication) -> bytes:
    """The PUBLISH properties block (length prefix included) for ``publication``.

    Encoded here rather than with paho's ``Properties``, whose generic Python encoder cost about
    100 us per message (build + pack) on this machine: more than the publish itself.
    """
    body = bytearray()
    if publication.expiry_interval is not None:
        body += struct.pack("!BI", MESSAGE_EXPIRY_INTERVAL, publication.expiry_interval)
    if publication.content_type is not None:
        body.append(CONTENT_TYPE)
        body += _utf8(publication.content_type)
    for key, value in publication.user_properties:
        body.append(USER_PROPERTY)
        body += _utf8(key) + _utf8(value)
    return variable_byte_integer(len(body)) + bytes(body)


def ack_outcome(reason_value: int, reason_name: str, packet: str) -> Outcome:
    """The outcome of a broker acknowledgement (PUBACK or PUBCOMP) carrying a reason code."""
    if reason_value in TRANSIENT_REASONS:
        return RetryLater(f"broker is not taking it now: {reason_name} (0x{reason_value:02X})")
    if reason_value >= FIRST_FAILURE_REASON:
        return Rejected(f"broker refused the publish: {reason_name} (0x{reason_value:02X})")
    return Delivered(packet)


def reconnect_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)].

    Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") keeps a fleet of
    gateways that lost the same broker from reconnecting in step.
    """
    return full_jitter(attempt, base, cap, rng.random)


def retry_while_down(state: str, detail: str) -> RetryLater:
    """The outcome of a delivery attempted while there is no usable broker connection."""
    reason = f"broker {state}"
    return RetryLater(f"{reason}: {detail}" if detail else reason)
