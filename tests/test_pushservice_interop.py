"""The push service against independent peers: pywebpush (HTTP/1.1), nghttp (HTTP/2 pushes on the
wire), and the ``fieldgate push-service`` / ``fieldgate send`` commands as real processes."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pywebpush
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.webpush.b64 import b64url_encode
from gateway.webpush.crypto import SubscriptionKeys
from pushservice.http import ConnectionInfo, Request
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.pushservice_client import (
    REL_PUSH,
    REL_SET,
    H2Client,
    h1_request,
    h2_client,
    link_of,
    path_of,
    send,
    subscribe,
)

FIELDGATE = [sys.executable, "-m", "gateway"]


@pytest.fixture
async def service(nursery: trio.Nursery) -> PushService:
    svc = PushService(ServiceSettings(redelivery_after=3600))
    await nursery.start(svc.serve)
    return svc


@pytest.fixture
async def ua(service: PushService) -> AsyncIterator[H2Client]:
    async with h2_client(service.origin) as client:
        yield client


def subscription_json(push_url: str, keys: SubscriptionKeys) -> dict[str, object]:
    return {
        "endpoint": push_url,
        "keys": {"p256dh": b64url_encode(keys.p256dh), "auth": b64url_encode(keys.auth_secret)},
    }


async def test_pywebpush_sends_over_http1_and_ua_decrypts(
    service: PushService, ua: H2Client
) -> None:
    sub = await subscribe(ua)
    keys = SubscriptionKeys.generate()
    info = subscription_json(link_of(sub, REL_PUSH), keys)
    response = await trio.to_thread.run_sync(
        lambda: pywebpush.webpush(info, "from pywebpush", ttl=120, headers={"Urgency": "high"})
    )
    assert response.status_code == 201
    assert response.headers["TTL"] == "120"
    await ua.start("GET", path_of(link_of(sub, REL_SET)))
    pushed = await ua.next_push()
    assert keys.decrypt(pushed.body) == b"from pywebpush"
    assert (await ua.ack(pushed)).status == 204


async def test_pywebpush_vapid_on_restricted_subscription(
    service: PushService, ua: H2Client, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = tmp_path / "vapid.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    body = json.dumps({"vapid": b64url_encode(public)}).encode()
    sub = await ua.request(
        "POST", "/subscribe", [("content-type", "application/webpush-options+json")], body
    )
    info = subscription_json(link_of(sub, REL_PUSH), SubscriptionKeys.generate())

    def push(vapid: bool) -> int:
        kwargs: dict[str, object] = {"ttl": 60}
        if vapid:
            kwargs |= {"vapid_private_key": str(pem), "vapid_claims": {"sub": "mailto:t@x.test"}}
        try:
            return int(pywebpush.webpush(info, "restricted", **kwargs).status_code)
        except pywebpush.WebPushException as exc:
            return int(exc.response.status_code)

    assert await trio.to_thread.run_sync(push, True) == 201
    assert await trio.to_thread.run_sync(push, False) == 401


async def test_nghttp_shows_push_promise_on_the_wire(service: PushService, ua: H2Client) -> None:
    sub = await subscribe(ua)
    await send(link_of(sub, REL_PUSH), b"seen-by-nghttp")
    result = await trio.run_process(
        ["nghttp", "-v", "-H", "prefer: wait=0", link_of(sub, REL_SET)],
        capture_stdout=True,
        capture_stderr=True,
    )
    out = result.stdout.decode()
    assert "recv PUSH_PROMISE frame" in out
    assert ":path: /message/" in out
    assert 'rel="urn:ietf:params:push"' in out
    assert ":status: 200" in out


async def test_control_api_refused_to_non_loopback_peers() -> None:
    svc = PushService(control=True)
    remote = ConnectionInfo("http", peer_is_loopback=False, http2=False)
    req = Request("POST", "/_control/freeze", "x", [], b'{"frozen": true}', remote)
    assert (await svc.resources.handle(req, 0.0)).status == 404  # type: ignore[union-attr]
    assert not svc.faults.frozen


# -- the commands as processes -------------------------------------------------------------------
async def _start_service(
    nursery: trio.Nursery, tmp_path: Path, *extra: str
) -> tuple[trio.Process, str]:
    """Start ``fieldgate push-service``; its first stdout line (the subscribe URL) means ready."""
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    cmd = [*FIELDGATE, "push-service", "--listen", "127.0.0.1:0", "--ready-file", str(ready)]
    proc = await trio.lowlevel.open_process(
        [*cmd, *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    nursery.start_soon(_reap, proc)
    assert proc.stdout is not None
    line = b""
    with trio.fail_after(20):
        while not line.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(1)
            assert chunk, "push-service exited before it was ready"
            line += chunk
    url = line.decode().strip()
    assert ready.read_text().strip() == url  # written (atomically) before the URL is printed
    return proc, url


async def _reap(proc: trio.Process) -> None:
    try:
        await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()


async def _stop(proc: trio.Process, sig: int = signal.SIGTERM) -> None:
    proc.send_signal(sig)
    with trio.fail_after(10):
        await proc.wait()


async def test_process_control_api_and_kill_restart_with_state(tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    async with trio.open_nursery() as nursery:
        proc, url = await _start_service(nursery, tmp_path, "--control", "--state", str(state))
        origin = url.rsplit("/", 1)[0]
        fault = await h1_request(
            f"{origin}/_control/fail_requests",
            "POST",
            [("content-type", "application/json")],
            json.dumps({"status": 503, "count": 1, "retry_after": 3}).encode(),
        )
        assert fault.status == 204
        async with h2_client(origin) as ua:
            refused = await ua.request("POST", "/subscribe")
            assert refused.status == 503 and refused.header("retry-after") == "3"
            sub = await subscribe(ua)
        assert (await send(link_of(sub, REL_PUSH), b"survives")).status == 201
        bad = await h1_request(f"{origin}/_control/freeze", "POST", [], b'{"nope": 1}')
        assert bad.status == 400
        stats = await h1_request(f"{origin}/_control/stats", "POST")
        assert json.loads(stats.body)["pending"] == 1
        await _stop(proc, signal.SIGKILL)
        port = origin.rsplit(":", 1)[1]
        proc, url = await _start_service(
            nursery, tmp_path, "--state", str(state), "--listen", f"127.0.0.1:{port}"
        )
        async with h2_client(origin) as ua:
            drained = await ua.request(
                "GET", path_of(link_of(sub, REL_SET)), [("prefer", "wait=0")]
            )
            assert drained.status == 200
            assert (await ua.next_push()).body == b"survives"
        await _stop(proc)


async def test_fieldgate_send_over_tls_with_receipt(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        certs = tmp_path / "tls"
        proc, url = await _start_service(nursery, tmp_path, "--self-signed", str(certs))
        assert url.startswith("https://")
        ca = certs / "ca.pem"
        assert (certs / "key.pem").stat().st_mode & 0o077 == 0
        import ssl

        ctx = ssl.create_default_context(cafile=str(ca))
        origin = url.rsplit("/", 1)[0]
        async with h2_client(origin, ssl_context=ctx) as ua:
            sub = await subscribe(ua)
            keys = SubscriptionKeys.generate()
            sub_file = tmp_path / "sub.json"
            sub_file.write_text(json.dumps(subscription_json(link_of(sub, REL_PUSH), keys)))
            await ua.start("GET", path_of(link_of(sub, REL_SET)))
            sender = await nursery.start(
                functools.partial(
                    trio.run_process,
                    [
                        *FIELDGATE,
                        "send",
                        str(sub_file),
                        "-",
                        "--ttl",
                        "30",
                        "--receipt",
                        "--receipt-timeout",
                        "20",
                        "--ca-file",
                        str(ca),
                        "--urgency",
                        "high",
                    ],
                    stdin=b"secret reading",
                    capture_stdout=True,
                    check=False,
                )
            )
            pushed = await ua.next_push()
            assert keys.decrypt(pushed.body) == b"secret reading"
            assert (await ua.ack(pushed)).status == 204
            with trio.fail_after(20):
                await sender.wait()
            assert sender.returncode == 0
        await _stop(proc)


async def test_fieldgate_send_exit_codes(
    service: PushService, ua: H2Client, tmp_path: Path
) -> None:
    sub = await subscribe(ua)
    keys = SubscriptionKeys.generate()
    info = json.dumps(subscription_json(link_of(sub, REL_PUSH), keys))
    ok = await trio.run_process([*FIELDGATE, "send", info, "hi"], capture_stdout=True)
    assert ok.stdout.decode().startswith(f"{service.origin}/message/")
    gone = json.dumps(subscription_json(f"{service.origin}/push/unknown", keys))
    refused = await trio.run_process(
        [*FIELDGATE, "send", gone, "hi"], capture_stderr=True, check=False
    )
    assert refused.returncode == 1 and b"404" in refused.stderr
    usage = await trio.run_process(
        [*FIELDGATE, "send", "{not json", "hi"], capture_stderr=True, check=False
    )
    assert usage.returncode == 2
    assert os.environ.get("NO_SUCH_VAR") is None
