"""Configuration reload (SIGHUP): routes added and removed without dropping the connection."""

from __future__ import annotations

import json
import signal
import urllib.error
from dataclasses import replace
from functools import partial
from pathlib import Path

import trio
from pywebpush import webpush

from adapters.log_config import LogAdapterConfig, LogTarget
from gateway.app import Gateway
from gateway.config import Config, RouteConfig
from pushservice.service import PushService
from tests.agent_harness import make_config, wait_until
from tests.gateway_process import GatewayProcess, free_port, write_config


def _config(base: Config, deliveries: Path, *names: str) -> Config:
    routes = tuple(RouteConfig(name=n, deliver=(LogTarget(adapter="out"),)) for n in names)
    adapters = {"out": LogAdapterConfig(name="out", path=deliveries)}
    return replace(base, routes=routes, adapters=adapters)


def _healthy(gateway: GatewayProcess) -> bool:
    try:
        return gateway.get("/healthz").strip() == b"ok"
    except urllib.error.HTTPError:
        return False  # 503 while a part is (re)starting


def _bodies(deliveries: Path) -> list[str]:
    if not deliveries.exists():
        return []
    return [json.loads(line)["body"] for line in deliveries.read_text().splitlines()]


async def test_reload_adds_and_removes_routes_on_the_same_connection(tmp_path):
    service = PushService()
    deliveries = tmp_path / "deliveries.jsonl"
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        base = make_config(service.subscribe_url, tmp_path / "state")
        gateway = Gateway(_config(base, deliveries, "a"))
        await nursery.start(gateway.run)
        await wait_until(lambda: "a" in gateway.upstream.subscription_infos(), "route a")
        old_a = gateway.upstream.subscription_infos()["a"]

        assert gateway.reload(_config(base, deliveries, "a", "b")) == []
        await wait_until(lambda: "b" in gateway.upstream.subscription_infos(), "route b")
        info = gateway.upstream.subscription_infos()["b"].to_json()
        await trio.to_thread.run_sync(lambda: webpush(info, b"to b", ttl=60))
        await wait_until(lambda: _bodies(deliveries) == ["to b"], "delivery through b")
        assert gateway.upstream.status.connections == 1  # the connection stayed
        assert gateway.upstream.subscription_infos()["a"] == old_a  # a untouched

        gateway.reload(_config(base, deliveries, "b"))
        await wait_until(lambda: "a" not in gateway.upstream.subscription_infos(), "a removed")
        assert old_a.endpoint not in {s.push_url for s in service.subscriptions()}
        assert gateway.upstream.status.connections == 1

        changed = replace(_config(base, deliveries, "b"), push=replace(base.push, keepalive=5.0))
        assert gateway.reload(changed) == ["[push] changed: restart the gateway to apply it"]
        nursery.cancel_scope.cancel()
    gateway.close()


ROUTES = """
[adapters.out]
type = "log"
path = "{deliveries}"
{routes}
"""
ROUTE = """
[[routes]]
name = "{name}"
deliver = [ {{ adapter = "out" }} ]
"""


async def test_sighup_reloads_and_a_broken_file_keeps_the_running_configuration(tmp_path):
    service = PushService()
    deliveries = tmp_path / "deliveries.jsonl"
    port = free_port()

    def configure(*names: str, broken: bool = False) -> Path:
        routes = "".join(ROUTE.format(name=n) for n in names)
        body = ROUTES.format(deliveries=deliveries, routes=routes)
        if broken:
            body += "\n[[routes]]\nname = 'bad'\ndeliver = [ { adapter = 'nowhere' } ]\n"
        return write_config(
            tmp_path / "config.toml",
            service.subscribe_url,
            tmp_path / "state",
            status_port=port,
            body=body,
        )

    def route_names(gateway: GatewayProcess) -> set[str]:
        routes = gateway.status()["routes"]
        return {r["name"] for r in routes if r["push_resource_id"]}  # type: ignore[index, union-attr]

    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        with GatewayProcess(configure("a"), port, tmp_path / "gateway.log") as gateway:
            await gateway.start()
            await wait_until(lambda: route_names(gateway) == {"a"}, "route a")
            configure("a", "b")
            assert gateway.proc is not None
            gateway.proc.send_signal(signal.SIGHUP)
            await wait_until(lambda: route_names(gateway) == {"a", "b"}, "route b after SIGHUP")
            configure("a", broken=True)
            gateway.proc.send_signal(signal.SIGHUP)
            await wait_until(
                lambda: "reload refused" in (tmp_path / "gateway.log").read_text(), "refusal"
            )
            assert gateway.proc.poll() is None  # still running
            assert route_names(gateway) == {"a", "b"}  # the configuration it had
            await wait_until(lambda: _healthy(gateway), "a healthy gateway")
            assert gateway.metric("fieldgate_reconnects_total") == 0
            assert gateway.terminate() == 0
        nursery.cancel_scope.cancel()
