"""The reference push service over real sockets: subscribe, monitor, push, ack (h2 + HTTP/1.1)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from pushservice.links import links_with_rel
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.pushservice_client import (
    REL_PUSH,
    REL_SET,
    H2Client,
    Reply,
    h2_client,
    link_of,
    path_of,
    send,
    subscribe,
)


@pytest.fixture
async def service(nursery: trio.Nursery) -> PushService:
    svc = PushService(ServiceSettings(redelivery_after=3600))
    await nursery.start(svc.serve)
    return svc


@pytest.fixture
async def ua(service: PushService) -> AsyncIterator[H2Client]:
    async with h2_client(service.origin) as client:
        yield client


def push_url(reply: Reply) -> str:
    return link_of(reply, REL_PUSH)


def set_url(reply: Reply) -> str:
    return link_of(reply, REL_SET)


async def test_subscribe_returns_absolute_capability_urls(
    service: PushService, ua: H2Client
) -> None:
    reply = await subscribe(ua)
    location = reply.header("location")
    assert location is not None and location.startswith(f"{service.origin}/subscription/")
    for url in (location, push_url(reply), set_url(reply)):
        token = url.rsplit("/", 1)[1]
        assert len(token) * 6 >= 120  # RFC 8030 §8: at least 120 bits of randomness
    assert len({location, push_url(reply), set_url(reply)}) == 3


async def test_subscribe_with_set_link_joins_that_set(service: PushService, ua: H2Client) -> None:
    first = await subscribe(ua)
    second = await subscribe(ua, set_url(first))
    assert set_url(second) == set_url(first)
    assert push_url(second) != push_url(first)


async def test_unknown_set_link_is_400(service: PushService, ua: H2Client) -> None:
    link = f'<{service.origin}/set/not-a-real-set>; rel="{REL_SET}"'
    reply = await ua.request("POST", "/subscribe", [("link", link)])
    assert reply.status == 400


async def test_set_monitor_receives_server_push_and_ack(service: PushService, ua: H2Client) -> None:
    a = await subscribe(ua)
    b = await subscribe(ua, set_url(a))
    await ua.start("GET", path_of(set_url(a)))
    sent = await send(push_url(b), b"payload-b")
    assert sent.status == 201
    pushed = await ua.next_push()
    assert pushed.status == 200
    location = sent.header("location")
    assert location is not None
    assert pushed.pseudo(":path") == path_of(location)
    assert pushed.body == b"payload-b"
    assert links_with_rel(pushed.header_values("link"), REL_PUSH) == [push_url(b)]
    assert pushed.header("content-encoding") == "aes128gcm"
    assert pushed.header("last-modified") is not None
    assert pushed.header("content-length") == "9"
    assert pushed.header("ttl") in ("59", "60")
    assert service.pending_messages() == 1
    assert (await ua.ack(pushed)).status == 204
    assert service.pending_messages() == 0
    assert service.acked_count() == 1
    assert (await ua.ack(pushed)).status == 404  # already acknowledged


async def test_wait0_pushes_stored_then_204(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    empty = await ua.request("GET", path_of(set_url(sub)), [("prefer", "wait=0")])
    assert empty.status == 204
    await send(push_url(sub), b"one")
    await send(push_url(sub), b"two")
    drained = await ua.request("GET", path_of(set_url(sub)), [("prefer", "wait=0")])
    assert drained.status == 200
    bodies = {(await ua.next_push()).body, (await ua.next_push()).body}
    assert bodies == {b"one", b"two"}


async def test_push_without_ttl_is_400(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    assert (await send(push_url(sub), ttl=None)).status == 400
    assert service.pending_messages() == 0
