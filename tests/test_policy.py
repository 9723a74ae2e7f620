"""The policy core: every decision about a message, without I/O (time is an argument)."""

from __future__ import annotations

from adapters.log_config import LogTarget
from gateway import policy
from gateway.config import RouteConfig
from gateway.routes import RouteTable
from gateway.store_types import Incoming

NOW = 1_700_000_000.0
ROUTES = RouteTable(
    (
        RouteConfig(name="stored", deliver=(LogTarget("a"),), max_age=60.0),
        RouteConfig(name="held", deliver=(LogTarget("a"),), ack="delivered", max_age=60.0),
    )
)


def incoming(route: str | None = "stored", **kw: object) -> Incoming:
    fields: dict[str, object] = {
        "push_message_url": "https://p/m/1",
        "route": route,
        "plaintext": b"hello",
        "raw_body": b"\x00",
        "headers": (),
        "received_at": NOW,
    }
    fields.update(kw)
    return Incoming(**fields)  # type: ignore[arg-type]


def test_deadline_counts_from_last_modified_and_a_ttl_header_can_only_shorten_it():
    sent = "Thu, 01 Jan 1970 00:16:40 GMT"  # 1000 s after the epoch
    deadline = policy.deadline
    assert deadline((("last-modified", sent),), received_at=1010.0, max_age=60) == 1060.0
    assert deadline((), received_at=1010.0, max_age=60) == 1070.0
    assert deadline((("ttl", "5"),), received_at=1010.0, max_age=60) == 1015.0
    assert deadline((("ttl", "500"),), received_at=1010.0, max_age=60) == 1070.0
    assert deadline((("last-modified", "garbage"),), received_at=1010.0, max_age=60) == 1070.0
    # A Last-Modified in the future (a fast sender clock) never extends the lifetime.
    future = "Thu, 01 Jan 1970 00:20:00 GMT"
    assert deadline((("last-modified", future),), received_at=1010.0, max_age=60) == 1070.0


def test_the_ttl_counts_from_when_the_service_pushed_the_message():
    # The chaos run's "expired but arrived" (seed 12345, ttl 2): after a reconnect the service
    # pushed a backlog, each message with the TTL it had left then; the gateway received this
    # one 3 s later and counted its TTL from receipt, so it lived 3 s longer than it should.
    pushed = "Thu, 01 Jan 1970 00:16:40 GMT"  # 1000 s after the epoch
    headers = (("ttl", "2"), ("date", pushed))
    assert policy.deadline(headers, received_at=1003.0, max_age=3600) == 1002.0
    late = incoming(headers=headers, received_at=1003.0)
    assert policy.dispose(late, ROUTES, 1003.0) == policy.Expired("stored")
    # A Date ahead of our clock (ours is slow) never extends it either; garbage is ignored.
    ahead = (("ttl", "2"), ("date", "Thu, 01 Jan 1970 00:20:00 GMT"))
    assert policy.deadline(ahead, received_at=1003.0, max_age=3600) == 1005.0
    assert policy.deadline((("ttl", "2"), ("date", "x")), received_at=1003.0, max_age=60) == 1005.0


def test_the_ttl_header_is_parsed_in_one_place():
    assert policy.ttl_seconds((("ttl", " 30 "),)) == 30
    for bad in ("-1", "1.5", "", "٣", "1e3"):
        assert policy.ttl_seconds((("ttl", bad),)) is None
    assert policy.dedupe_forget_at(NOW) == NOW + policy.DEDUPE_GRACE


def test_a_decrypted_message_is_journalled_with_its_deadline_and_ack_policy():
    stored = policy.dispose(incoming("stored"), ROUTES, NOW)
    assert stored == policy.Journal(ROUTES.get("stored"), NOW + 60.0, ack_after_delivery=False)
    held = policy.dispose(incoming("held"), ROUTES, NOW)
    assert isinstance(held, policy.Journal) and held.ack_after_delivery


def test_delivered_ack_needs_somewhere_to_deliver():
    nowhere = RouteConfig(name="x", deliver=(), ack="delivered")
    assert not policy.acknowledge_after_delivery(nowhere)


def test_dead_letter_reasons():
    dispose = policy.dispose
    assert dispose(incoming(failure="auth_tag_mismatch", plaintext=None), ROUTES, NOW) == (
        policy.DeadLetter("auth_tag_mismatch", "stored")
    )
    assert dispose(incoming(None, plaintext=None), ROUTES, NOW) == policy.DeadLetter(
        "unknown_subscription", None
    )
    assert dispose(incoming("removed"), ROUTES, NOW) == policy.DeadLetter(
        "unknown_route", "removed"
    )
    assert dispose(incoming(plaintext=None), ROUTES, NOW) == policy.DeadLetter(
        "no_plaintext", "stored"
    )


def test_a_message_past_its_deadline_on_arrival_is_expired_not_journalled():
    late = incoming(headers=(("ttl", "0"),))
    assert policy.dispose(late, ROUTES, NOW) == policy.Expired("stored")
    assert isinstance(policy.dispose(late, ROUTES, NOW - 0.001), policy.Journal)


def test_a_redelivery_is_recognised_before_anything_else():
    again = incoming(None, plaintext=None, redelivery=True)
    assert policy.dispose(again, ROUTES, NOW) == policy.Redelivered()


def test_encodings_and_the_replay_deadline():
    assert policy.encoding_supported(None) and policy.encoding_supported(" AES128GCM ")
    assert not policy.encoding_supported("aesgcm")
    route = ROUTES.get("stored")
    assert route is not None and policy.replay_deadline(route, NOW) == NOW + 60.0


def test_the_repeat_window_is_what_the_devices_remember():
    """The router's bound on unrecorded deliveries for a serial target is the C library's
    duplicate window: read from its header, so neither side changes alone."""
    import re
    from pathlib import Path

    from adapters.base import DEVICE_REPEAT_WINDOW

    header = Path(__file__).parents[1] / "firmware-bridge" / "src" / "fieldgate_bridge.h"
    found = re.search(r"#define FB_DEDUPE_SLOTS (\d+)u?", header.read_text())
    assert found is not None
    assert DEVICE_REPEAT_WINDOW == int(found.group(1)) == policy.REPEAT_WINDOW
