"""Operating the push service: TLS reload on SIGHUP, drain on SIGTERM, /metrics and /healthz,
rate limits, require_vapid and the PROXY protocol."""

from __future__ import annotations

import ssl
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import ec

from pushservice.proxy import ProxyHeaderError, parse_proxy_header
from pushservice.ratelimit import RateLimiter
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from pushservice.vapid import sign_vapid
from tests.pushservice_client import (
    REL_PUSH,
    REL_SET,
    h2_client,
    link_of,
    path_of,
    send,
    subscribe,
    sync,
)
from tests.pushservice_nodes import free_port, wait_for

FIELDGATE = [sys.executable, "-m", "gateway"]


def _issue(ca: trustme.CA, directory: Path) -> None:
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_pem.write_to_path(str(directory / "key.pem"))
    (directory / "cert.pem").write_bytes(b"".join(b.bytes() for b in cert.cert_chain_pems))


def _client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@asynccontextmanager
async def node_process(tmp_path: Path, config: str) -> AsyncIterator[subprocess.Popen[bytes]]:
    path = tmp_path / "push.toml"
    path.write_text(config)
    ready = tmp_path / "ready"
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen(  # noqa: ASYNC220 - a child the test signals, never awaited
        [*FIELDGATE, "push-service", "--config", str(path), "--ready-file", str(ready)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        await wait_for(ready.exists, "the node")
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        log.close()


async def test_sighup_reloads_the_certificate_and_keeps_open_connections(tmp_path: Path) -> None:
    first, second = trustme.CA(), trustme.CA()
    _issue(first, tmp_path)
    port = free_port()
    config = f'[service]\nlisten = "127.0.0.1:{port}"\ntls_cert = "cert.pem"\ntls_key = "key.pem"\n'
    async with node_process(tmp_path, config) as proc:
        origin = f"https://127.0.0.1:{port}"
        async with h2_client(origin, ssl_context=_client_context(first)) as old:
            await subscribe(old)
            _issue(second, tmp_path)
            proc.send_signal(1)  # SIGHUP

            async def trusted_by(ca: trustme.CA) -> bool:
                try:
                    async with h2_client(origin, ssl_context=_client_context(ca)) as fresh:
                        await subscribe(fresh)
                    return True
                except (ssl.SSLError, trio.BrokenResourceError):
                    return False

            with trio.fail_after(10):
                while not await trusted_by(second):  # noqa: ASYNC110 - another process's state
                    await trio.sleep(0.05)
            assert not await trusted_by(first)
            await subscribe(old)  # the connection opened before the reload still works
        # A broken certificate file: the old one stays in use.
        (tmp_path / "cert.pem").write_text("garbage")
        proc.send_signal(1)
        await trio.sleep(0.5)
        assert await trusted_by(second)
    assert "TLS reload failed, keeping the old certificate" in (tmp_path / "node.log").read_text()


async def test_sigterm_drains_and_the_status_endpoint_tells(tmp_path: Path) -> None:
    port, status = free_port(), free_port()
    config = (
        f'[service]\nlisten = "127.0.0.1:{port}"\ndrain_timeout = "5s"\n'
        f'[status]\nlisten = "127.0.0.1:{status}"\n'
    )

    def get(path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{status}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    async with node_process(tmp_path, config) as proc:
        origin = f"http://127.0.0.1:{port}"
        async with h2_client(origin) as ua:
            sub = await subscribe(ua)
            assert (await send(link_of(sub, REL_PUSH), b"one")).status == 201
            monitor = await ua.start("GET", path_of(link_of(sub, REL_SET)))
            pushed = await ua.next_push()
            assert (await ua.ack(pushed)).status == 204
            assert get("/healthz") == (200, "ok\n")
            metrics = get("/metrics")[1]
            for name in (
                "fieldgate_push_connections 1",
                "fieldgate_push_monitors 1",
                "fieldgate_push_messages_accepted_total 1",
                "fieldgate_push_messages_delivered_total 1",
                "fieldgate_push_messages_acknowledged_total 1",
                "fieldgate_push_store_up 1",
                'fieldgate_push_store_seconds_count{operation="accept"} 1',
            ):
                assert name in metrics, name
            started = time.monotonic()
            proc.terminate()  # SIGTERM: graceful
            assert (await ua.wait(monitor)).status == 204
            await ua.closed.wait()
            assert ua.goaway_received
        with trio.fail_after(10):
            while proc.poll() is None:  # noqa: ASYNC110 - another process's state
                await trio.sleep(0.05)
        assert proc.returncode == 0 and time.monotonic() - started < 5


# -- in-process: limits, VAPID, PROXY protocol ----------------------------------------------------
async def test_rate_limits_per_address_and_per_push_resource(nursery: trio.Nursery) -> None:
    svc = PushService(ServiceSettings(requests_per_address=50, pushes_per_resource=2))
    await nursery.start(svc.serve)
    async with h2_client(svc.origin) as ua:
        sub = await subscribe(ua)
        url = link_of(sub, REL_PUSH)
        statuses = [(await send(url)).status for _ in range(3)]
        assert statuses[:2] == [201, 201] and statuses[2] == 429
        refused = await send(url)
        assert refused.status == 429 and int(refused.header("retry-after") or 0) >= 1
        for _ in range(60):
            last = await ua.request("DELETE", "/message/none")
        assert last.status == 429  # 50 per second from this address


def test_rate_limiter_refills_at_its_rate() -> None:
    limiter = RateLimiter(2.0)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [None, None, 0.5]
    assert limiter.check("b", 0.0) is None  # per key
    assert limiter.check("a", 0.5) is None and limiter.check("a", 0.5) == 0.5
    assert RateLimiter(0).check("a", 0.0) is None  # 0: no limit


async def test_require_vapid_refuses_unsigned_pushes_to_any_subscription(
    nursery: trio.Nursery,
) -> None:
    svc = PushService(ServiceSettings(require_vapid=True))
    await nursery.start(svc.serve)
    async with h2_client(svc.origin) as ua:
        url = link_of(await subscribe(ua), REL_PUSH)  # not restricted to a key
    refused = await send(url)
    assert refused.status == 401 and refused.header("www-authenticate") == "vapid"
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {"aud": svc.origin, "exp": int(time.time()) + 3600, "sub": "mailto:ops@example.com"}
    assert (await send(url, headers=[("authorization", sign_vapid(key, claims))])).status == 201
    wrong = sign_vapid(key, {**claims, "aud": "https://elsewhere.example"})
    assert (await send(url, headers=[("authorization", wrong)])).status == 401


def _v2(address: str = "203.0.113.7", command: int = 1) -> bytes:
    block = bytes(int(p) for p in address.split(".")) + bytes(4) + struct.pack("!HH", 5000, 443)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x20 | command, 0x11]) + struct.pack("!H", 12) + block


def test_proxy_header_parser() -> None:
    assert parse_proxy_header(_v2()) == ("203.0.113.7", 28)
    assert parse_proxy_header(_v2()[:20]) is None  # incomplete: read more
    assert parse_proxy_header(_v2(command=0)) == ("", 28)  # LOCAL: a health check
    assert parse_proxy_header(b"PROXY TCP4 198.51.100.1 10.0.0.1 4000 443\r\nGET") == (
        "198.51.100.1",
        43,
    )
    assert parse_proxy_header(b"PROXY UNKNOWN\r\n") == ("", 15)
    for bad in (b"GET / HTTP/1.1\r\n", b"PROXY TCP4 nonsense\r\n", b"PROXY " + b"x" * 200):
        with pytest.raises(ProxyHeaderError):
            parse_proxy_header(bad)


async def test_behind_a_balancer_the_client_address_comes_from_the_proxy_header(
    nursery: trio.Nursery,
) -> None:
    svc = PushService(ServiceSettings(requests_per_address=1), control=True)
    port = await nursery.start(
        lambda task_status: svc.serve(proxy_protocol=True, task_status=task_status)
    )

    async def request(header: bytes, target: str) -> bytes:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(
            header + f"POST {target} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n".encode()
        )
        reply = await stream.receive_some(4096)
        await stream.aclose()
        return bytes(reply)

    # The control API is loopback-only: from 203.0.113.7 (through a loopback balancer) it is not.
    assert (await request(_v2(), "/_control/stats")).startswith(b"HTTP/1.1 404")
    # One request per second per address: the second from the same client is refused, another
    # client (another PROXY address) is not.
    assert (await request(_v2(), "/subscribe")).startswith(b"HTTP/1.1 201")
    assert (await request(_v2(), "/subscribe")).startswith(b"HTTP/1.1 429")
    assert (await request(_v2("198.51.100.9"), "/subscribe")).startswith(b"HTTP/1.1 201")
    # Without a PROXY header the connection is dropped unanswered.
    assert await request(b"", "/subscribe") == b""


async def test_sync_marker_still_orders_requests_on_one_connection(nursery: trio.Nursery) -> None:
    """Requests on one HTTP/2 connection are answered in order (tests rely on it)."""
    svc = PushService()
    await nursery.start(svc.serve)
    async with h2_client(svc.origin) as ua:
        sub = await subscribe(ua)
        await ua.start("GET", path_of(link_of(sub, REL_SET)))
        await sync(ua)
        assert svc.monitor_count() == 1
