"""The autopush double over loopback: our client core as the user agent, pywebpush (real VAPID,
real aes128gcm to a gateway's keys) as the application server."""

from __future__ import annotations

import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

import pytest
import requests
import trio
import trio.testing
import trustme
import wsproto.events as ws
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid
from pywebpush import WebPushException, webpush

from gateway.webpush.autopush import (
    BACKOFF_CLOSE_CODE,
    ConnectionClosed,
    ProtocolPong,
    RegisterFailed,
    ServerClosed,
)
from gateway.webpush.b64 import b64url_encode
from gateway.webpush.crypto import SubscriptionKeys
from pushservice.autopush import AutopushService, AutopushSettings
from tests.autopush_driver import WAIT, autopush_client, raw_peer

CH_A = "0b3c8a9e-8f0e-4d52-9c1b-6c0d1e2f3a4b"
CH_B = "7f1e2d3c-4b5a-4968-8776-655443322110"
SUB = {"sub": "mailto:ops@example.test"}


class WallClock:
    """The service's wall clock (TTL, VAPID exp), which a test may move on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """trio time that runs like the real one and can be jumped (the 5 s, 45 s, 300 s timers)."""
    return trio.testing.MockClock(rate=1.0)


@asynccontextmanager
async def running(
    settings: AutopushSettings | None = None,
    *,
    wall: Callable[[], float] = time.time,
    state_path: Path | None = None,
    control: bool = False,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[AutopushService]:
    service = AutopushService(
        settings or AutopushSettings(), clock=wall, state_path=state_path, control=control
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, ssl_context=ssl_context))
        yield service
        nursery.cancel_scope.cancel()


def vapid_keypair() -> tuple[Vapid, str]:
    """A sender's VAPID key and its public half as a route's ``vapid_public_key``."""
    vapid = Vapid()
    vapid.generate_keys()
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return vapid, b64url_encode(raw)


def post(
    endpoint: str,
    keys: SubscriptionKeys,
    data: bytes | None,
    *,
    ttl: int = 60,
    vapid: Vapid | None = None,
    claims: dict[str, str | int] | None = None,
    headers: dict[str, str] | None = None,
    session: requests.Session | None = None,
) -> requests.Response:
    """pywebpush as an application server would call it; the response even for errors."""
    info = keys.subscription_info(endpoint).to_json()
    kwargs: dict[str, object] = {"ttl": ttl, "headers": headers, "requests_session": session}
    if vapid is not None:
        kwargs |= {"vapid_private_key": vapid, "vapid_claims": dict(claims or SUB)}
    try:
        return webpush(info, data, **kwargs)  # type: ignore[arg-type,return-value]
    except WebPushException as exc:
        assert exc.response is not None
        return exc.response  # type: ignore[no-any-return]


async def send(
    endpoint: str, keys: SubscriptionKeys, data: bytes | None, **kw: object
) -> requests.Response:
    return await trio.to_thread.run_sync(partial(post, endpoint, keys, data, **kw))  # type: ignore[arg-type]


async def raw_post(url: str, headers: dict[str, str], body: bytes = b"") -> requests.Response:
    return await trio.to_thread.run_sync(partial(requests.post, url, headers=headers, data=body))


# -------------------------------------------------------------------------- the happy path


async def test_hello_register_and_live_delivery_decrypt_end_to_end() -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        hello = await ua.hello(None)
        assert len(hello.uaid) == 32 and int(hello.uaid, 16) >= 0 and not hello.reset
        vapid, vapid_public = vapid_keypair()
        open_ch = await ua.register(CH_A)
        restricted = await ua.register(CH_B, vapid_public)
        assert "/wpush/v1/" in open_ch.push_endpoint and "/wpush/v2/" in restricted.push_endpoint
        assert open_ch.push_endpoint.startswith(service.public_url)
        keys_a, keys_b = SubscriptionKeys.generate(), SubscriptionKeys.generate()

        reply = await send(open_ch.push_endpoint, keys_a, b"valve 3 open", ttl=120)
        assert reply.status_code == 201, reply.text
        assert reply.headers["TTL"] == "120"
        (note,) = await ua.notifications(1)
        assert reply.headers["Location"] == f"{service.public_url}/m/{note.version}"
        assert note.channel_id == CH_A and note.encoding == "aes128gcm"
        assert keys_a.decrypt(note.body) == b"valve 3 open"

        reply = await send(restricted.push_endpoint, keys_b, b"signed", vapid=vapid)
        assert reply.status_code == 201, reply.text
        (signed,) = await ua.notifications(1)
        assert signed.channel_id == CH_B and keys_b.decrypt(signed.body) == b"signed"

        await ua.ack(note, signed)
        assert await ua.barrier() == []
        stats = service.stats()
        assert stats.counters.delivered_direct == 2 and stats.counters.acked == 2
        assert stats.stored_now == 0 and stats.connected == 1
        issued = service.endpoints()
        assert [(e.channel_id, e.restricted) for e in issued] == [(CH_A, False), (CH_B, True)]


async def test_a_body_less_push_is_an_empty_notification() -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        endpoint = (await ua.register(CH_A)).push_endpoint
        reply = await raw_post(endpoint, {"TTL": "60"})
        assert reply.status_code == 201
        (note,) = await ua.notifications(1)
        assert note.body == b"" and note.encoding is None and note.headers == ()


# ------------------------------------------------------------------------- the endpoint side


async def test_vapid_is_required_and_checked_on_a_restricted_endpoint() -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        vapid, vapid_public = vapid_keypair()
        other, _ = vapid_keypair()
        restricted = (await ua.register(CH_A, vapid_public)).push_endpoint
        keys = SubscriptionKeys.generate()
        missing = await send(restricted, keys, b"x")
        assert (missing.status_code, missing.json()["errno"]) == (401, 109)
        wrong_key = await send(restricted, keys, b"x", vapid=other)
        assert (wrong_key.status_code, wrong_key.json()["errno"]) == (401, 109)
        too_late = {**SUB, "exp": int(time.time()) + 48 * 3600}
        far = await send(restricted, keys, b"x", vapid=vapid, claims=too_late)
        assert far.status_code == 401 and "24 hours" in far.json()["message"]
        wrong_aud = {**SUB, "aud": "https://elsewhere.example"}
        aud = await send(restricted, keys, b"x", vapid=vapid, claims=wrong_aud)
        assert aud.status_code == 401
        assert (await send(restricted, keys, b"ok", vapid=vapid)).status_code == 201
        (note,) = await ua.notifications(1)
        assert keys.decrypt(note.body) == b"ok"
        # A VAPID header on an open endpoint is checked too (autoendpoint does).
        open_endpoint = (await ua.register(CH_B)).push_endpoint
        bad = await send(open_endpoint, keys, b"x", vapid=vapid, claims=wrong_aud)
        assert bad.status_code == 401
        assert service.stats().counters.rejected == 5


@pytest.mark.parametrize(
    ("headers", "body", "status", "errno"),
    [
        ({"Content-Encoding": "aes128gcm"}, b"x", 400, 111),  # no TTL
        ({"TTL": "soon", "Content-Encoding": "aes128gcm"}, b"x", 400, 111),
        ({"TTL": "-1", "Content-Encoding": "aes128gcm"}, b"x", 400, 114),
        ({"TTL": "60", "Topic": "x" * 33}, b"", 400, 113),
        ({"TTL": "60", "Topic": "not/base64"}, b"", 400, 113),
        ({"TTL": "60"}, b"x", 400, 110),  # a body needs Content-Encoding
        ({"TTL": "60", "Content-Encoding": "gzip"}, b"x", 400, 110),
        ({"TTL": "60", "Content-Encoding": "aesgcm"}, b"x", 400, 110),  # no Encryption salt
        ({"TTL": "60", "Content-Encoding": "aes128gcm"}, b"x" * 4097, 413, 104),
    ],
)
async def test_endpoint_refusals(
    headers: dict[str, str], body: bytes, status: int, errno: int
) -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        endpoint = (await ua.register(CH_A)).push_endpoint
        reply = await raw_post(endpoint, headers, body)
        assert reply.status_code == status, reply.text
        assert reply.json()["errno"] == errno and reply.json()["code"] == status
        assert await ua.barrier() == []  # nothing was delivered


async def test_forged_tokens_are_404_and_dropped_channels_410() -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        hello = await ua.hello(None)
        endpoint = (await ua.register(CH_A)).push_endpoint
        forged = endpoint[:-4] + ("AAAA" if not endpoint.endswith("AAAA") else "BBBB")
        reply = await raw_post(forged, {"TTL": "60"})
        assert (reply.status_code, reply.json()["errno"]) == (404, 102)
        v2 = endpoint.replace("/wpush/v1/", "/wpush/v2/")  # the version is bound to the token
        assert (await raw_post(v2, {"TTL": "60"})).status_code == 404
        ua.core.unregister(CH_A)
        await ua.flush()
        await ua.next()  # Unregistered
        gone = await raw_post(endpoint, {"TTL": "60"})
        assert (gone.status_code, gone.json()["errno"]) == (410, 106)
        assert gone.headers["Cache-Control"] == "max-age=86400"
        again = (await ua.register(CH_A)).push_endpoint
        assert (await raw_post(again, {"TTL": "60"})).status_code == 201
        service.reset_uaid(hello.uaid)
        server, _ = await ua.until_closed()
        assert server is not None and server.code == 1000
        assert (await raw_post(again, {"TTL": "60"})).status_code == 410


# --------------------------------------------------------------------------- uaids and hello


async def test_the_uaid_is_kept_and_an_unknown_one_replaced() -> None:
    async with running() as service:
        async with autopush_client(service.ws_url) as ua:
            first = await ua.hello(None)
            await ua.register(CH_A)
        async with autopush_client(service.ws_url) as ua:
            again = await ua.hello(first.uaid)
            assert again.uaid == first.uaid and not again.reset
        async with autopush_client(service.ws_url) as ua:
            unknown = uuid.uuid4().hex
            reset = await ua.hello(unknown)
            assert reset.reset and reset.uaid != unknown and reset.requested_uaid == unknown
        # A uaid that never registered a channel was never written (autopush defers it).
        async with autopush_client(service.ws_url) as ua:
            assert (await ua.hello(reset.uaid)).reset
        assert service.stats().counters.uaid_resets == 2


async def test_a_uaid_absent_for_60_days_is_gone() -> None:
    wall = WallClock()
    async with running(wall=wall) as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        wall.offset = 61 * 86400.0
        assert (await raw_post(endpoint, {"TTL": "60"})).status_code == 410
        async with autopush_client(service.ws_url) as ua:
            assert (await ua.hello(uaid)).reset


async def test_hello_within_five_seconds(clock: trio.testing.MockClock) -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(4.9)
        assert await ua.barrier() == []  # still open
        clock.jump(0.2)
        server, _ = await ua.until_closed()
        assert server == ServerClosed(1011, "HandshakeTimeout")


@pytest.mark.parametrize(
    ("frames", "code", "reason"),
    [
        ([ws.TextMessage(data='{"messageType": "register", "channelID": "x"}')], 1011, "SM: "),
        ([ws.TextMessage(data="{}")], 1011, 'SM: Expected messageType="hello"'),
        ([ws.TextMessage(data="not json")], 1011, "Json: "),
        ([ws.TextMessage(data='{"messageType": "hello", "uaid": 7}')], 1011, "Json: "),
        ([ws.BytesMessage(data=b"\x00")], 1003, "UnsupportedMessage"),
        (
            [
                ws.TextMessage(data='{"messageType": "hello"}'),
                ws.TextMessage(data='{"messageType": "hello"}'),
            ],
            1011,
            "SM: Already Hello'd",
        ),
        (
            [
                ws.TextMessage(data='{"messageType": "hello"}'),
                ws.TextMessage(
                    data=json.dumps({"messageType": "register", "channelID": CH_A.upper()})
                ),
            ],
            1011,
            "SM: Invalid UUID format",
        ),
        (
            [
                ws.TextMessage(data='{"messageType": "hello"}'),
                ws.TextMessage(data='{"messageType": "future"}'),
            ],
            1011,
            "Json: unknown messageType",
        ),
        ([ws.TextMessage(data="x" * (64 * 1024 + 1))], 1002, "Protocol"),
    ],
)
async def test_clients_breaking_the_protocol_are_closed(
    frames: list[ws.Event], code: int, reason: str
) -> None:
    async with running() as service, raw_peer(service.ws_url) as peer:
        for frame in frames:
            await peer.send(frame)
        close = await peer.close_frame()
        assert close.code == code and close.reason.startswith(reason), close


async def test_a_bad_vapid_key_fails_the_register_not_the_connection() -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        # Python decodes "AB" (ignoring the stray bits); autopush's strict decoder refuses it.
        ua.core.register(CH_A, "AB")
        await ua.flush()
        failed = await ua.expect(RegisterFailed)
        assert failed.status == 400
        assert (await ua.register(CH_B)).channel_id == CH_B


async def test_a_second_connection_ghosts_the_first() -> None:
    async with running() as service, autopush_client(service.ws_url) as first:
        hello = await first.hello(None)
        await first.register(CH_A)
        async with autopush_client(service.ws_url) as second:
            assert (await second.hello(hello.uaid)).uaid == hello.uaid
            server, _ = await first.until_closed()
            assert server == ServerClosed(1011, "SM: Ghost")
            assert service.connected(hello.uaid)


# -------------------------------------------------------------------------- stored messages


async def offline_uaid(service: AutopushService, *channels: str) -> tuple[str, list[str]]:
    """A uaid with registered channels and no connection; (uaid, endpoints)."""
    async with autopush_client(service.ws_url) as ua:
        uaid = (await ua.hello(None)).uaid
        endpoints = [(await ua.register(ch)).push_endpoint for ch in channels]
    with trio.fail_after(WAIT):
        while service.connected(uaid):  # noqa: ASYNC110 - the service notices the close
            await trio.sleep(0.01)
    return uaid, endpoints


def post_many(endpoint: str, count: int, headers: dict[str, str] | None = None) -> list[int]:
    with requests.Session() as http:
        return [
            http.post(endpoint, headers={"TTL": "600", **(headers or {})}).status_code
            for _ in range(count)
        ]


async def test_stored_messages_come_in_batches_of_ten_each_after_the_last_is_acked() -> None:
    async with running() as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        keys = SubscriptionKeys.generate()
        with requests.Session() as http:
            for i in range(25):
                reply = await send(endpoint, keys, f"m{i}".encode(), ttl=600, session=http)
                assert reply.status_code == 201
        assert service.stats().counters.stored == 25
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            batch = await ua.notifications(10)
            assert [keys.decrypt(n.body) for n in batch] == [f"m{i}".encode() for i in range(10)]
            assert await ua.barrier() == []  # nothing more while the batch is unacknowledged
            await ua.ack(*batch[:9])
            assert await ua.barrier() == []  # still one short
            await ua.ack(batch[9])
            second = await ua.notifications(10)
            await ua.ack(*second)
            third = await ua.notifications(5)
            assert keys.decrypt(third[-1].body) == b"m24"
            await ua.ack(*third)
            assert await ua.barrier() == []
        counters = service.stats().counters
        assert counters.delivered_stored == 25 and counters.acked == 25
        assert service.stats().stored_now == 0


async def test_unacknowledged_messages_come_again_after_a_reconnect() -> None:
    async with running() as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        keys = SubscriptionKeys.generate()
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            for body in (b"one", b"two", b"three"):
                assert (await send(endpoint, keys, body)).status_code == 201
            live = await ua.notifications(3)
            await ua.ack(live[0])
            assert await ua.barrier() == []
        async with autopush_client(service.ws_url) as ua:  # the connection was cut, unacked
            await ua.hello(uaid)
            again = await ua.notifications(2)
            assert [n.version for n in again] == [n.version for n in live[1:]]  # dedupe by it
            assert [keys.decrypt(n.body) for n in again] == [b"two", b"three"]
            await ua.ack(again[0])  # a stored batch half acknowledged ...
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            (last,) = await ua.notifications(1)  # ... comes again, what was acked does not
            assert last.version == live[2].version
            await ua.ack(last)
            assert await ua.barrier() == []


async def test_ttl_expiry_and_ttl_zero() -> None:
    wall = WallClock()
    async with running(wall=wall) as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        keys = SubscriptionKeys.generate()
        zero = await send(endpoint, keys, b"now or never", ttl=0)
        assert zero.status_code == 201  # accepted, and dropped: nobody is connected
        assert (await send(endpoint, keys, b"short", ttl=30)).status_code == 201
        assert (await send(endpoint, keys, b"long", ttl=3600)).status_code == 201
        wall.offset = 31.0
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            (note,) = await ua.notifications(1)
            assert keys.decrypt(note.body) == b"long"
            await ua.ack(note)
            assert await ua.barrier() == []
            live_zero = await send(endpoint, keys, b"while connected", ttl=0)
            assert live_zero.status_code == 201
            (now,) = await ua.notifications(1)
            assert keys.decrypt(now.body) == b"while connected"  # not acked: TTL 0 is not kept
        counters = service.stats().counters
        assert counters.dropped_ttl0 == 1 and counters.expired == 1
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            assert await ua.barrier() == []


async def test_a_sender_may_withdraw_a_stored_message() -> None:
    async with running() as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        keys = SubscriptionKeys.generate()
        withdrawn = await send(endpoint, keys, b"never mind")
        kept = await send(endpoint, keys, b"still valid")
        gone = await trio.to_thread.run_sync(
            partial(requests.delete, withdrawn.headers["Location"])
        )
        assert gone.status_code == 204
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            (note,) = await ua.notifications(1)
            assert keys.decrypt(note.body) == b"still valid"
            assert kept.headers["Location"].endswith(note.version)


async def test_a_topic_replaces_the_stored_message_of_that_topic() -> None:
    async with running() as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        keys = SubscriptionKeys.generate()
        for body in (b"3 unread", b"4 unread"):
            reply = await send(endpoint, keys, body, headers={"Topic": "mail"})
            assert reply.status_code == 201
        assert (await send(endpoint, keys, b"other", headers={"Topic": "news"})).status_code == 201
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            notes = await ua.notifications(2)
            assert sorted(keys.decrypt(n.body) for n in notes) == [b"4 unread", b"other"]
            assert await ua.barrier() == []


async def test_more_than_150_stored_messages_in_a_session_drop_the_uaid() -> None:
    async with running() as service:
        uaid, (endpoint,) = await offline_uaid(service, CH_A)
        statuses = await trio.to_thread.run_sync(post_many, endpoint, 151)
        assert statuses == [201] * 151
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            for _ in range(15):  # 150 stored messages are fine ...
                await ua.ack(*await ua.notifications(10))
            server, _ = await ua.until_closed()  # ... the 151st is one too many
            assert server == ServerClosed(1000, "SM: UAID dropped")
        assert (await raw_post(endpoint, {"TTL": "60"})).status_code == 410
        async with autopush_client(service.ws_url) as ua:
            assert (await ua.hello(uaid)).reset
        assert service.stats().counters.msg_limit_resets == 1


# ------------------------------------------------------------------------------- the pings


async def test_service_pings_and_a_missing_pong(clock: trio.testing.MockClock) -> None:
    settings = AutopushSettings(ping_interval=300.0)
    async with running(settings) as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(300.0)  # ping sent, and answered by the core
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(4.1)
        assert await ua.barrier() == []  # alive
        ua.muted = True  # from now on the service's ping goes unanswered
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(300.0)
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(4.1)
        await trio.testing.wait_all_tasks_blocked()
        clock.jump(2.5)  # the close grace: our (muted) close reply never comes
        server, _ = await ua.until_closed()
        assert server == ServerClosed(1011, "PongTimeout")
        assert service.stats().counters.pong_timeouts == 1


async def test_protocol_pings_more_often_than_every_45_seconds_close(
    clock: trio.testing.MockClock,
) -> None:
    async with running() as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        ua.core.protocol_ping()
        await ua.flush()
        assert await ua.next() == ProtocolPong()
        clock.jump(45.0)
        ua.core.protocol_ping()
        await ua.flush()
        assert await ua.next() == ProtocolPong()
        clock.jump(44.0)
        ua.core.protocol_ping()
        await ua.flush()
        server, _ = await ua.until_closed()
        assert server == ServerClosed(1011, "SM: Client sent too many pings too often")


# ----------------------------------------------------------------------------- the controls


async def test_close_4774_and_dropped_connections() -> None:
    async with running() as service:
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(None)
            assert service.close_with() == 1
            server, _ = await ua.until_closed()
            assert server is not None and server.code == BACKOFF_CLOSE_CODE
            assert server.do_not_reconnect
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(None)
            assert service.drop_connections() == 1
            server, end = await ua.until_closed()
            assert server is None and isinstance(end, ConnectionClosed)  # no close frame


async def test_the_http_control_api_is_loopback_and_opt_in() -> None:
    async with running(control=True) as service, autopush_client(service.ws_url) as ua:
        await ua.hello(None)
        await ua.register(CH_A)
        base = f"{service.public_url}/_control"
        stats = await trio.to_thread.run_sync(partial(requests.post, f"{base}/stats"))
        assert stats.status_code == 200 and stats.json()["counters"]["registers"] == 1
        issued = await trio.to_thread.run_sync(partial(requests.post, f"{base}/endpoints"))
        assert [e["channel_id"] for e in issued.json()] == [CH_A]
        bad = await trio.to_thread.run_sync(
            partial(requests.post, f"{base}/close_with", json={"code": 1})
        )
        assert bad.status_code == 400
        close = await trio.to_thread.run_sync(
            partial(requests.post, f"{base}/close_with", json={"code": 4774, "reason": "bye"})
        )
        assert close.json() == {"closed": 1}
        server, _ = await ua.until_closed()
        assert server == ServerClosed(BACKOFF_CLOSE_CODE, "bye")
    async with running() as service:  # not enabled: not there
        reply = await trio.to_thread.run_sync(
            partial(requests.post, f"{service.public_url}/_control/stats")
        )
        assert reply.status_code == 404


async def test_separate_endpoint_port_and_public_url() -> None:
    service = AutopushService()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            partial(service.serve, endpoint_port=0, public_url="https://push.example.test/")
        )
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(None)
            endpoint = (await ua.register(CH_A)).push_endpoint
            assert endpoint.startswith("https://push.example.test/wpush/v1/")
        nursery.cancel_scope.cancel()


# --------------------------------------------------------------------- state, TLS and CLI


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "autopush.sqlite"
    vapid, vapid_public = vapid_keypair()
    keys = SubscriptionKeys.generate()
    async with running(state_path=path) as service:
        uaid, _ = await offline_uaid(service, CH_A)
        async with autopush_client(service.ws_url) as ua:
            await ua.hello(uaid)
            restricted = (await ua.register(CH_B, vapid_public)).push_endpoint
        for body in (b"before", b"restart"):
            assert (await send(restricted, keys, body, vapid=vapid)).status_code == 201
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    async with running(state_path=path) as service, autopush_client(service.ws_url) as ua:
        hello = await ua.hello(uaid)
        assert hello.uaid == uaid and not hello.reset
        notes = await ua.notifications(2)
        assert [keys.decrypt(n.body) for n in notes] == [b"before", b"restart"]
        await ua.ack(*notes)
        # The endpoint minted before the restart still works, VAPID and all (on the new
        # port: the token is what counts).
        endpoint = service.public_url + restricted[restricted.index("/wpush/") :]
        reply = await send(endpoint, keys, b"after", vapid=vapid)
        assert reply.status_code == 201, reply.text
        (after,) = await ua.notifications(1)
        assert keys.decrypt(after.body) == b"after"


async def test_wss_with_a_given_certificate() -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with running(ssl_context=server) as service:
        assert service.ws_url.startswith("wss://") and service.public_url.startswith("https://")
        async with autopush_client(service.ws_url, ssl_context=client_ctx) as ua:
            await ua.hello(None)
            endpoint = (await ua.register(CH_A)).push_endpoint
            keys = SubscriptionKeys.generate()
            with ca.cert_pem.tempfile() as ca_file, requests.Session() as http:
                http.verify = ca_file
                http.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment wins
                assert (await send(endpoint, keys, b"tls", session=http)).status_code == 201
            (note,) = await ua.notifications(1)
            assert keys.decrypt(note.body) == b"tls"


async def test_cli_serves_with_state_until_sigterm(tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    proc = await trio.lowlevel.open_process(
        [
            *(sys.executable, "-m", "pushservice.autopush.cli", "--listen", "127.0.0.1:0"),
            *("--state", str(tmp_path / "s.sqlite"), "--ready-file", str(ready)),
            *("--log-level", "warning"),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(WAIT):
            while not ready.exists():  # noqa: ASYNC110 - another process writes it
                await trio.sleep(0.05)
        url = ready.read_text().strip()
        async with autopush_client(url) as ua:
            hello = await ua.hello(None)
            assert (await ua.register(CH_A)).push_endpoint
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(WAIT):
            assert await proc.wait() == 0
        assert len(hello.uaid) == 32
    finally:
        if proc.returncode is None:
            proc.kill()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--listen", "nowhere"], "--listen wants HOST:PORT, got 'nowhere'"),
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--public-url", "push.example"], "--public-url must be an http(s) URL"),
    ],
)
async def test_cli_start_up_faults_are_one_line(args: list[str], message: str) -> None:
    with trio.fail_after(WAIT):
        bad = await trio.run_process(
            [sys.executable, "-m", "pushservice.autopush.cli", *args],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert bad.returncode == 2
    (line,) = bad.stderr.decode().splitlines()  # no traceback
    assert line.startswith(f"fieldgate autopush-service: {message}")
