"""RFC 8030 semantics of the reference push service: TTL, Topic, Urgency, receipts, redelivery."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import pytest
import trio
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pushservice.service import PushService
from pushservice.settings import TTL_CEILING, ZERO_TTL_REACH, ServiceSettings
from pushservice.vapid import b64url_encode, sign_vapid
from tests.postgres import pg_url_fixture, postgres_fixture  # noqa: F401
from tests.pushservice_client import (
    REL_PUSH,
    REL_RECEIPT,
    REL_SET,
    H2Client,
    ManualClock,
    h1_request,
    h2_client,
    link_of,
    path_of,
    send,
    subscribe,
    sync,
)

REDELIVERY = 30.0


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["sqlite", "postgres"])
async def service(
    nursery: trio.Nursery, clock: ManualClock, request: pytest.FixtureRequest
) -> AsyncIterator[PushService]:
    """The service on each store: the semantics must not depend on it."""
    settings = ServiceSettings(redelivery_after=REDELIVERY, max_ttl=7 * 86400)
    storage = request.getfixturevalue("pg_url") if request.param == "postgres" else None
    svc = PushService(settings, clock=clock, storage=storage)
    await nursery.start(svc.serve)
    yield svc
    svc.close()


@pytest.fixture
async def ua(service: PushService) -> AsyncIterator[H2Client]:
    async with h2_client(service.origin) as client:
        yield client


async def monitor(ua: H2Client, url: str, *headers: tuple[str, str]) -> int:
    sid = await ua.start("GET", path_of(url), list(headers))
    await sync(ua)
    return sid


async def drain(ua: H2Client, url: str) -> list[bytes]:
    """Prefer: wait=0 on a set or subscription: the bodies pushed before the final status."""
    reply = await ua.request("GET", path_of(url), [("prefer", "wait=0")])
    bodies = []
    while True:
        try:
            bodies.append(ua.pushes.receive_nowait().body)
        except trio.WouldBlock:
            break
    assert reply.status == (200 if bodies else 204)
    return bodies


# -- TTL ------------------------------------------------------------------------------------------
async def test_ttl0_is_delivered_to_a_connected_monitor(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    await monitor(ua, link_of(sub, REL_SET))
    assert (await send(link_of(sub, REL_PUSH), b"now", ttl="0")).status == 201
    pushed = await ua.next_push()
    assert pushed.body == b"now"
    assert (await ua.ack(pushed)).status == 204


async def test_ttl0_without_monitor_is_dropped(
    service: PushService, ua: H2Client, clock: ManualClock
) -> None:
    sub = await subscribe(ua)
    reply = await send(link_of(sub, REL_PUSH), b"lost", ttl="0")
    assert reply.status == 201 and reply.header("ttl") == "0"
    if service.db.store.shared:
        # Another node may hold the monitor: it has ZERO_TTL_REACH to take the message.
        clock.now += ZERO_TTL_REACH
        service.sweep()
    assert service.pending_messages() == 0
    assert await drain(ua, link_of(sub, REL_SET)) == []


async def test_message_is_never_delivered_after_its_ttl(
    service: PushService, ua: H2Client, clock: ManualClock
) -> None:
    sub = await subscribe(ua)
    await send(link_of(sub, REL_PUSH), b"short", ttl="10")
    await send(link_of(sub, REL_PUSH), b"long", ttl="100")
    clock.now += 10
    service.sweep()
    assert await drain(ua, link_of(sub, REL_SET)) == [b"long"]


async def test_ttl_above_max_is_lowered_and_answered(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    reply = await send(link_of(sub, REL_PUSH), ttl=str(10**30))
    assert reply.status == 201
    assert reply.header("ttl") == str(min(TTL_CEILING, 7 * 86400))


@pytest.mark.parametrize("ttl", ["-1", "1.5", "abc", "", "1, 2"])
async def test_malformed_ttl_is_400(service: PushService, ua: H2Client, ttl: str) -> None:
    sub = await subscribe(ua)
    assert (await send(link_of(sub, REL_PUSH), ttl=ttl)).status == 400


async def test_two_ttl_fields_are_400(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    assert (await send(link_of(sub, REL_PUSH), headers=[("ttl", "5")])).status == 400


# -- Topic ----------------------------------------------------------------------------------------
async def test_topic_replaces_the_undelivered_message(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    url = link_of(sub, REL_PUSH)
    first = await send(url, b"v1", headers=[("topic", "weather")])
    await send(url, b"other", headers=[("topic", "news")])
    await send(url, b"v2", headers=[("topic", "weather")])
    assert service.pending_messages(url) == 2
    assert sorted(await drain(ua, link_of(sub, REL_SET))) == [b"other", b"v2"]
    first_url = first.header("location")
    assert first_url is not None
    assert (await ua.request("DELETE", path_of(first_url))).status == 404


@pytest.mark.parametrize("topic", ["a" * 33, "has space", "dot.ted", "plus+", "a,b"])
async def test_invalid_topic_is_400(service: PushService, ua: H2Client, topic: str) -> None:
    sub = await subscribe(ua)
    assert (await send(link_of(sub, REL_PUSH), headers=[("topic", topic)])).status == 400


async def test_topic_of_32_url_safe_characters_is_accepted(
    service: PushService, ua: H2Client
) -> None:
    sub = await subscribe(ua)
    topic = "Az09-_" + "x" * 26
    assert (await send(link_of(sub, REL_PUSH), headers=[("topic", topic)])).status == 201


# -- Urgency --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        [("urgency", "high"), ("urgency", "low")],
        [("urgency", "high, low")],
        [("urgency", "urgent")],
    ],
)
async def test_bad_urgency_is_400(
    service: PushService, ua: H2Client, headers: list[tuple[str, str]]
) -> None:
    sub = await subscribe(ua)
    assert (await send(link_of(sub, REL_PUSH), headers=headers)).status == 400


async def test_urgency_filter_on_the_monitor(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    url = link_of(sub, REL_PUSH)
    await monitor(ua, link_of(sub, REL_SET), ("urgency", "high"))
    await send(url, b"low", headers=[("urgency", "low")])
    await send(url, b"default")  # normal
    await send(url, b"high", headers=[("urgency", "high")])
    assert (await ua.next_push()).body == b"high"
    assert service.pending_messages() == 3
    # Without the filter the rest arrives; "high" is still in flight on this connection.
    assert sorted(await drain(ua, link_of(sub, REL_SET))) == [b"default", b"low"]


async def test_urgency_filter_normal_passes_normal_and_high(
    service: PushService, ua: H2Client
) -> None:
    sub = await subscribe(ua)
    url = link_of(sub, REL_PUSH)
    for level in ("very-low", "low", "normal", "high"):
        await send(url, level.encode(), headers=[("urgency", level)])
    reply = await ua.request(
        "GET", path_of(link_of(sub, REL_SET)), [("prefer", "wait=0"), ("urgency", "normal")]
    )
    assert reply.status == 200
    got = {(await ua.next_push()).body, (await ua.next_push()).body}
    assert got == {b"normal", b"high"}
    assert ua.pushes.statistics().current_buffer_used == 0


# -- receipts -------------------------------------------------------------------------------------
async def test_receipt_204_pushed_to_the_application_server(
    service: PushService, ua: H2Client
) -> None:
    sub = await subscribe(ua)
    await monitor(ua, link_of(sub, REL_SET))
    async with h2_client(service.origin) as app:
        sent = await app.request(
            "POST",
            path_of(link_of(sub, REL_PUSH)),
            [("ttl", "60"), ("prefer", "respond-async")],
            b"with receipt",
        )
        assert sent.status == 202
        receipt_url = link_of(sent, REL_RECEIPT)
        await app.start("GET", path_of(receipt_url))
        await sync(app)
        pushed = await ua.next_push()
        assert (await ua.ack(pushed)).status == 204
        receipt = await app.next_push()
        assert receipt.status == 204
        location = sent.header("location")
        assert location is not None
        assert receipt.pseudo(":path") == path_of(location)


async def test_receipt_410_when_the_message_expires_undelivered(
    service: PushService, ua: H2Client, clock: ManualClock
) -> None:
    sub = await subscribe(ua)
    async with h2_client(service.origin) as app:
        sent = await app.request(
            "POST",
            path_of(link_of(sub, REL_PUSH)),
            [("ttl", "5"), ("prefer", "respond-async")],
            b"x",
        )
        await app.start("GET", path_of(link_of(sent, REL_RECEIPT)))
        await sync(app)
        clock.now += 6
        service.sweep()
        assert (await app.next_push()).status == 410


async def test_receipts_polled_over_http1_as_json(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    sent = await send(link_of(sub, REL_PUSH), headers=[("prefer", "respond-async")])
    assert sent.status == 202
    receipt_url = link_of(sent, REL_RECEIPT)
    before = await h1_request(receipt_url, "GET")
    assert before.status == 200 and json.loads(before.body) == []
    await drain(ua, link_of(sub, REL_SET))  # pushes; the drain helper does not ack
    location = sent.header("location")
    assert location is not None
    assert (await ua.request("DELETE", path_of(location))).status == 204
    after = await h1_request(receipt_url, "GET")
    assert json.loads(after.body) == [{"message": location, "status": 204}]
    # The same receipt subscription can be named on later pushes (RFC 8030 §5.1).
    again = await send(
        link_of(sub, REL_PUSH), headers=[("link", f'<{receipt_url}>; rel="{REL_RECEIPT}"')]
    )
    assert again.status == 202 and link_of(again, REL_RECEIPT) == receipt_url


async def test_unknown_receipt_subscription_is_400(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    bogus = f'<{service.origin}/receipt/nope>; rel="{REL_RECEIPT}"'
    assert (await send(link_of(sub, REL_PUSH), headers=[("link", bogus)])).status == 400


# -- redelivery -----------------------------------------------------------------------------------
async def test_unacked_message_is_pushed_again_after_redelivery_time(
    service: PushService, ua: H2Client, clock: ManualClock
) -> None:
    sub = await subscribe(ua)
    await monitor(ua, link_of(sub, REL_SET))
    await send(link_of(sub, REL_PUSH), b"again")
    first = await ua.next_push()
    clock.now += REDELIVERY - 1
    service.sweep()
    assert ua.pushes.statistics().current_buffer_used == 0
    clock.now += 1
    service.sweep()
    second = await ua.next_push()
    assert second.pseudo(":path") == first.pseudo(":path") and second.body == b"again"
    assert (await ua.ack(second)).status == 204
    clock.now += REDELIVERY
    service.sweep()
    assert service.pending_messages() == 0


async def test_unacked_message_is_pushed_again_when_the_ua_monitors_again(
    service: PushService, ua: H2Client
) -> None:
    sub = await subscribe(ua)
    async with h2_client(service.origin) as first_conn:
        await monitor(first_conn, link_of(sub, REL_SET))
        await send(link_of(sub, REL_PUSH), b"unacked")
        first = await first_conn.next_push()
    async with h2_client(service.origin) as second_conn:
        await second_conn.start("GET", path_of(link_of(sub, REL_SET)))
        again = await second_conn.next_push()
        assert again.pseudo(":path") == first.pseudo(":path")
        assert (await second_conn.ack(again)).status == 204


# -- resources, deletion, limits ------------------------------------------------------------------
async def test_unknown_push_resource_is_404(service: PushService) -> None:
    assert (await send(f"{service.origin}/push/unknown")).status == 404


async def test_monitoring_unknown_set_is_404(service: PushService, ua: H2Client) -> None:
    assert (await ua.request("GET", "/set/unknown")).status == 404


async def test_delete_subscription_then_push_is_404(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    location = sub.header("location")
    assert location is not None
    assert (await ua.request("DELETE", path_of(location))).status == 204
    assert (await send(link_of(sub, REL_PUSH))).status == 404
    assert (await ua.request("DELETE", path_of(location))).status == 404


async def test_delete_set_removes_members_and_ends_monitor_404(
    service: PushService, ua: H2Client
) -> None:
    a = await subscribe(ua)
    b = await subscribe(ua, link_of(a, REL_SET))
    mon = await monitor(ua, link_of(a, REL_SET))
    assert (await ua.request("DELETE", path_of(link_of(a, REL_SET)))).status == 204
    assert (await ua.wait(mon)).status == 404
    for sub in (a, b):
        assert (await send(link_of(sub, REL_PUSH))).status == 404
    assert service.subscriptions() == []


async def test_subscription_monitor_gets_only_its_messages(
    service: PushService, ua: H2Client
) -> None:
    a = await subscribe(ua)
    b = await subscribe(ua, link_of(a, REL_SET))
    location = a.header("location")
    assert location is not None
    await monitor(ua, location)
    await send(link_of(b, REL_PUSH), b"for-b")
    await send(link_of(a, REL_PUSH), b"for-a")
    assert (await ua.next_push()).body == b"for-a"


async def test_body_limit_413_and_4096_always_accepted(nursery: trio.Nursery) -> None:
    svc = PushService(ServiceSettings(max_body=4096))
    await nursery.start(svc.serve)
    async with h2_client(svc.origin) as ua:
        sub = await subscribe(ua)
        url = link_of(sub, REL_PUSH)
        assert (await send(url, b"x" * 4096)).status == 201
        assert (await send(url, b"x" * 4097)).status == 413
        over_h2 = await ua.request("POST", path_of(url), [("ttl", "5")], b"x" * 5000)
        assert over_h2.status == 413
        assert svc.pending_messages() == 1
    with pytest.raises(ValueError):
        ServiceSettings(max_body=4095)


async def test_large_body_respects_flow_control(nursery: trio.Nursery) -> None:
    svc = PushService(ServiceSettings(max_body=1 << 20))
    await nursery.start(svc.serve)
    body = bytes(range(256)) * 1024  # 256 KiB: four times h2's initial 64 KiB window
    async with h2_client(svc.origin) as ua:
        sub = await subscribe(ua)
        assert (
            await ua.request("POST", path_of(link_of(sub, REL_PUSH)), [("ttl", "9")], body)
        ).status == 201
        assert await drain(ua, link_of(sub, REL_SET)) == [body]


async def test_subscriptions_per_connection_limit_is_429(nursery: trio.Nursery) -> None:
    svc = PushService(ServiceSettings(max_subscriptions_per_connection=2))
    await nursery.start(svc.serve)
    async with h2_client(svc.origin) as ua:
        await subscribe(ua)
        await subscribe(ua)
        assert (await ua.request("POST", "/subscribe")).status == 429
    async with h2_client(svc.origin) as other:
        await subscribe(other)


async def test_monitor_needs_server_push(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    async with h2_client(service.origin, enable_push=False) as no_push:
        assert (await no_push.request("GET", path_of(link_of(sub, REL_SET)))).status == 400
    assert (await h1_request(link_of(sub, REL_SET), "GET")).status == 400


async def test_unknown_paths_and_methods(service: PushService, ua: H2Client) -> None:
    assert (await ua.request("GET", "/nothing/here")).status == 404
    assert (await ua.request("GET", "/subscribe")).status == 405
    assert (await ua.request("POST", "/_control/freeze", [], b"{}")).status == 404  # not enabled


# -- VAPID (RFC 8292) -----------------------------------------------------------------------------
def _vapid_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    raw = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return key, b64url_encode(raw)


async def _restricted(ua: H2Client, public: str) -> str:
    body = json.dumps({"vapid": public, "unknown-member": 1}).encode()
    reply = await ua.request(
        "POST", "/subscribe", [("content-type", "application/webpush-options+json")], body
    )
    assert reply.status == 201
    return link_of(reply, REL_PUSH)


async def test_restricted_subscription_needs_matching_vapid(
    service: PushService, ua: H2Client, clock: ManualClock
) -> None:
    key, public = _vapid_key()
    other, _ = _vapid_key()
    url = await _restricted(ua, public)
    aud = service.origin

    def auth(k: ec.EllipticCurvePrivateKey, **claims: object) -> list[tuple[str, str]]:
        base: dict[str, object] = {"aud": aud, "exp": int(clock.now) + 3600, "sub": "mailto:t@x"}
        return [("authorization", sign_vapid(k, {**base, **claims}))]

    assert (await send(url)).status == 401
    assert (await send(url, headers=[("authorization", "vapid t=x")])).status == 401
    assert (await send(url, headers=[("authorization", "Bearer abc")])).status == 401
    assert (await send(url, headers=auth(other))).status == 403
    assert (await send(url, headers=auth(key, exp=int(clock.now) - 1))).status == 401
    assert (await send(url, headers=auth(key, exp=int(clock.now) + 25 * 3600))).status == 401
    assert (await send(url, headers=auth(key, aud="https://elsewhere.example"))).status == 401
    forged = auth(key)[0][1].replace(", k=", "x, k=")  # corrupt the signature's last char
    assert (await send(url, headers=[("authorization", forged)])).status == 401
    assert (await send(url, headers=auth(key))).status == 201


async def test_unrestricted_ignores_vapid_and_other_media_types(
    service: PushService, ua: H2Client
) -> None:
    _, public = _vapid_key()
    body = json.dumps({"vapid": public}).encode()
    reply = await ua.request("POST", "/subscribe", [("content-type", "application/json")], body)
    assert reply.status == 201
    assert (await send(link_of(reply, REL_PUSH))).status == 201


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"vapid": "AAAA"}', b'{"vapid": 5}'])
async def test_bad_subscribe_options_are_400(
    service: PushService, ua: H2Client, body: bytes
) -> None:
    headers = [("content-type", "application/webpush-options+json")]
    assert (await ua.request("POST", "/subscribe", headers, body)).status == 400


def test_capability_tokens_are_random() -> None:
    from pushservice.model import new_token

    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000 and all(len(t) == 32 for t in tokens)
    assert time.time() > 0
