"""A whole gateway on the autopush path: ``service = "ws://127.0.0.1:PORT/"`` against the
autopush double, pywebpush as the application server (VAPID-signed where the route has a key),
a log-file target standing in for the device."""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import requests
import trio
import trustme
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from py_vapid import Vapid
from pywebpush import webpush

from adapters.log_config import LogAdapterConfig, LogTarget
from gateway.app import Gateway
from gateway.config import Config, PushConfig, RouteConfig, StatusConfig
from gateway.status_schema import STATUS_SCHEMA_VERSION, status_errors
from gateway.webpush.b64 import b64url_encode
from pushservice.autopush import AutopushService, AutopushSettings
from tests.agent_harness import Receiver, wait_until

SUB = {"sub": "mailto:ops@example.test"}


def vapid_pair() -> tuple[Vapid, str]:
    vapid = Vapid()
    vapid.generate_keys()
    raw = vapid.public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return vapid, b64url_encode(raw)


def config_for(
    service: AutopushService, state: Path, out: Path, vapid_key: str, distribute: str
) -> Config:
    return Config(
        push=PushConfig(
            service=service.ws_url,
            state_dir=state,
            keepalive=30.0,
            backoff_base=0.05,
            backoff_cap=0.3,
            connect_timeout=5.0,
        ),
        routes=(
            RouteConfig(name="open", deliver=(LogTarget("out"),), retry_base=0.05, retry_cap=0.3),
            RouteConfig(
                name="signed",
                deliver=(LogTarget("out"),),
                vapid_public_key=vapid_key,
                distribute_url=distribute,
                retry_base=0.05,
                retry_cap=0.3,
            ),
        ),
        adapters={"out": LogAdapterConfig(name="out", path=out)},
        status=StatusConfig(listen=""),
    )


def delivered(out: Path) -> list[str]:
    if not out.exists():
        return []
    return [json.loads(line)["body"] for line in out.read_text().splitlines()]


@asynccontextmanager
async def gateway_running(config: Config) -> AsyncIterator[Gateway]:
    gateway = Gateway(config)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(gateway.run)
            await wait_until(
                lambda: (
                    gateway.upstream.status.state == "connected"
                    and len(gateway.upstream.subscription_infos()) == len(config.routes)
                ),
                "connected, every route registered",
            )
            yield gateway
            nursery.cancel_scope.cancel()
    finally:
        gateway.close()


async def send(info: dict[str, object], body: str, vapid: Vapid | None = None) -> int:
    def post() -> int:
        kwargs: dict[str, object] = {"ttl": 600, "timeout": 10}
        if vapid is not None:
            kwargs |= {"vapid_private_key": vapid, "vapid_claims": dict(SUB)}
        response = webpush(info, body, **kwargs)  # type: ignore[arg-type]
        assert isinstance(response, requests.Response)
        return response.status_code

    return await trio.to_thread.run_sync(post)


async def test_live_stopped_cut_and_reset_uaid_lose_nothing_and_duplicate_nothing(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    vapid, vapid_key = vapid_pair()
    out = tmp_path / "device.jsonl"
    service = AutopushService(AutopushSettings(), state_path=tmp_path / "autopush.sqlite3")
    receiver = Receiver(fail=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        listeners = await nursery.start(
            partial(trio.serve_tcp, receiver.handle, 0, host="127.0.0.1")
        )
        distribute = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/subs"
        config = config_for(service, tmp_path / "state", out, vapid_key, distribute)
        sent: list[str] = []

        # Live, to an open and to a VAPID-restricted route.
        async with gateway_running(config) as gateway:
            infos = {n: i.to_json() for n, i in gateway.upstream.subscription_infos().items()}
            assert await send(infos["open"], "live-1") == 201
            assert await send(infos["signed"], "live-2", vapid) == 201
            sent += ["live-1", "live-2"]
            await wait_until(lambda: sorted(delivered(out)) == sorted(sent), "live delivery")
            uaid = gateway.store.upstream_value("autopush.uaid")
            assert uaid
            await wait_until(lambda: receiver.bodies, "the signed route's endpoint distributed")
            assert json.loads(receiver.bodies[0]) == infos["signed"]

        # Sent while the gateway was stopped: stored by the service, delivered on reconnect.
        for i in range(25):  # more than two batches of 10
            assert await send(infos["open"], f"stored-{i}") == 201
            sent.append(f"stored-{i}")
        async with gateway_running(config) as gateway:
            await wait_until(lambda: sorted(delivered(out)) == sorted(sent), "stored delivery")
            assert gateway.store.upstream_value("autopush.uaid") == uaid  # the same identity

            # A cut connection: the gateway reconnects and the next message arrives.
            service.drop_connections()
            await wait_until(lambda: gateway.upstream.status.connections >= 2, "a reconnect")
            await wait_until(lambda: gateway.upstream.status.state == "connected", "again")
            assert await send(infos["open"], "after-cut") == 201
            sent.append("after-cut")
            await wait_until(lambda: sorted(delivered(out)) == sorted(sent), "after the cut")

            # The service drops the uaid: every route is registered again, new endpoints.
            assert service.reset_uaid(uaid)
            await wait_until(
                lambda: gateway.store.upstream_value("autopush.uaid") not in (None, uaid),
                "a new uaid",
            )
            await wait_until(
                lambda: (
                    len(gateway.upstream.subscription_infos()) == 2
                    and all(
                        i.endpoint != infos[n]["endpoint"]
                        for n, i in gateway.upstream.subscription_infos().items()
                    )
                ),
                "new endpoints",
            )
            fresh = {n: i.to_json() for n, i in gateway.upstream.subscription_infos().items()}
            assert await send(fresh["signed"], "after-reset", vapid) == 201
            sent.append("after-reset")
            await wait_until(lambda: sorted(delivered(out)) == sorted(sent), "after the reset")
            # The new endpoint was distributed too.
            await wait_until(
                lambda: any(json.loads(b) == fresh["signed"] for b in receiver.bodies),
                "the new endpoint distributed",
            )
            document = gateway.status()
            upstream = document["upstream"]
            assert isinstance(upstream, dict) and upstream["protocol"] == "autopush"
            autopush = upstream["autopush"]
            assert autopush["channels"] == 2 and autopush["uaid_resets"] == 1
            assert 0 <= autopush["uaid_age"] < 60 and autopush["last_hello"] is not None
            assert autopush["notifications"] >= 26
            assert (
                status_errors(
                    {
                        "schema": STATUS_SCHEMA_VERSION,
                        "health": {"ok": True, "reason": ""},
                        **document,
                    }
                )
                == []
            )
            secrets = [uaid, gateway.store.upstream_value("autopush.uaid")]
            secrets += [r.subscription_url for r in gateway.store.subscriptions()]
            secrets += [i["endpoint"] for i in (*infos.values(), *fresh.values())]
        nursery.cancel_scope.cancel()
    assert sorted(delivered(out)) == sorted(sent)  # nothing lost, nothing twice
    # The uaid, the channel ids and the endpoints are capabilities: never in a log line.
    for secret in secrets:
        assert secret and secret not in caplog.text
    assert "the push service assigned a new uaid" in caplog.text


def _tls(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return server_context, ca_file


async def test_wss_is_verified_against_the_configured_ca(tmp_path):
    server_context, ca_file = _tls(tmp_path)
    other_ca = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other_ca))
    out = tmp_path / "device.jsonl"
    _vapid, key = vapid_pair()
    service = AutopushService(AutopushSettings())
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0, ssl_context=server_context))
        assert service.ws_url.startswith("wss://")
        base = config_for(service, tmp_path / "state", out, key, "")
        routes = tuple(replace(r, distribute_url=None) for r in base.routes)
        # An unknown CA: refused, with the reason, nothing registered.
        wrong = replace(base, push=replace(base.push, ca_file=other_ca), routes=routes)
        gateway = Gateway(wrong)
        async with trio.open_nursery() as inner:
            await inner.start(gateway.run)
            await wait_until(lambda: gateway.upstream.status.last_error is not None, "an error")
            assert "CERTIFICATE_VERIFY_FAILED" in (gateway.upstream.status.last_error or "")
            assert gateway.upstream.subscription_infos() == {}
            inner.cancel_scope.cancel()
        gateway.close()
        # The service's CA: connected and registered over TLS.
        right = replace(wrong, push=replace(wrong.push, ca_file=ca_file))
        async with gateway_running(right) as gateway:
            assert all(
                i.endpoint.startswith("https://")
                for i in gateway.upstream.subscription_infos().values()
            )
        nursery.cancel_scope.cancel()
