"""Shared set-up for the end-to-end tests: push service + whole gateway + real devices.

``running_gateway`` starts the reference push service and a :class:`gateway.app.Gateway` (store,
adapters, router, agent, status) on loopback and yields a :class:`Pipeline`, through which a test
sends like an application server (pywebpush over HTTP/1.1), reads receipts, metrics and the
journal. ``MqttSubscriber`` is the device side of an MQTT route; the serial device side is the C
simulator of :mod:`tests.serial_sim`.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgpack
import paho.mqtt.client as paho
import requests
import trio
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions
from pywebpush import webpush

from adapters.base import AdapterConfig, TargetConfig
from adapters.serial_config import SerialAdapterConfig
from gateway.app import Gateway
from gateway.config import Config, PushConfig, RouteConfig, StatusConfig
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import wait_until
from tests.mosquitto import Mosquitto
from tests.serial_sim import Simulator

# Route retries in tests: fast enough that a recovered broker or device is used within ~0.3 s.
RETRY_BASE = 0.05
RETRY_CAP = 0.3
# Bounds a loopback round trip on a loaded 2-core machine; a healthy one takes milliseconds.
HTTP_TIMEOUT = 10.0
# The paho subscriber's CONNACK/SUBACK wait; mosquitto answers in milliseconds.
SUBSCRIBE_TIMEOUT = 10.0
# Where MqttSubscriber.settle() publishes (never delivered back to it: No Local).
SETTLE_TOPIC = "e2e/settle"


def route(
    name: str, *targets: TargetConfig, ack: str = "stored", max_age: float = 3600.0
) -> RouteConfig:
    """A route with the fast test retry schedule."""
    return RouteConfig(
        name=name,
        deliver=targets,
        ack=ack,  # type: ignore[arg-type]
        max_age=max_age,
        retry_base=RETRY_BASE,
        retry_cap=RETRY_CAP,
    )


def serial_adapter(name: str, port: Path) -> SerialAdapterConfig:
    """A serial adapter tuned for ptys on a shared machine (as in test_serial_adapter)."""
    return SerialAdapterConfig(
        name=name,
        port=str(port),
        ack_timeout=0.15,  # generous for 2 shared cores; the derived RTO is ~87 ms
        max_tries=8,
        reopen_base=0.05,
        reopen_cap=0.2,
        ping_interval=0.5,
    )


def gateway_config(
    service_url: str,
    state_dir: Path,
    routes: Sequence[RouteConfig],
    adapters: Mapping[str, AdapterConfig],
) -> Config:
    """A whole-gateway configuration with fast upstream backoff and an ephemeral status port."""
    return Config(
        push=PushConfig(
            service=service_url,
            state_dir=state_dir,
            keepalive=30.0,
            backoff_base=0.05,
            backoff_cap=0.3,
            healthy_after=60.0,
            connect_timeout=5.0,
        ),
        routes=tuple(routes),
        adapters=dict(adapters),
        status=StatusConfig(listen="127.0.0.1:0"),
    )


@dataclass(frozen=True)
class Sent:
    """What the push service answered the application server."""

    status: int
    message_url: str
    receipt_url: str | None


@dataclass
class Pipeline:
    """A push service and a whole gateway talking to it; see the module docstring."""

    service: PushService
    gateway: Gateway
    # push message URL -> journal id, from the agent's observer ("journalled" events)
    journal_ids: dict[str, str] = field(default_factory=dict)
    session: requests.Session = field(default_factory=requests.Session)

    def observe(self, event: str, url: str, message_id: str | None) -> None:
        if event == "journalled" and message_id is not None:
            self.journal_ids[url] = message_id

    def info(self, route_name: str) -> dict[str, Any]:
        """The route's PushSubscription as JSON (what an application server is given)."""
        info: dict[str, Any] = self.gateway.upstream.subscription_infos()[route_name].to_json()
        return info

    async def send(
        self,
        route_name: str,
        body: bytes,
        *,
        ttl: int = 600,
        receipt: bool = False,
        urgency: str | None = None,
        topic: str | None = None,
    ) -> Sent:
        """Encrypt and POST ``body`` with pywebpush, in a thread (it blocks)."""
        headers: dict[str, str | int | float] = {}
        if receipt:
            headers["Prefer"] = "respond-async"
        if urgency:
            headers["Urgency"] = urgency
        if topic:
            headers["Topic"] = topic
        info = self.info(route_name)

        def post() -> Sent:
            response = webpush(
                info,
                body,
                ttl=ttl,
                headers=headers,
                timeout=HTTP_TIMEOUT,
                requests_session=self.session,
            )
            assert isinstance(response, requests.Response)
            assert response.status_code in (201, 202), response.text
            link = response.headers.get("Link", "")
            receipt_url = link[link.index("<") + 1 : link.index(">")] if "<" in link else None
            return Sent(response.status_code, response.headers["Location"], receipt_url)

        return await trio.to_thread.run_sync(post)

    async def send_all(self, route_name: str, bodies: Sequence[bytes], **kwargs: Any) -> None:
        """Send ``bodies`` one after another (in order), in one worker thread."""
        for body in bodies:
            await self.send(route_name, body, **kwargs)

    async def receipts(self, receipt_url: str) -> list[dict[str, Any]]:
        """GET the receipt subscription: the service answers a JSON list of receipts."""

        def get() -> list[dict[str, Any]]:
            with urllib.request.urlopen(receipt_url, timeout=HTTP_TIMEOUT) as response:
                return list(json.loads(response.read()))

        return await trio.to_thread.run_sync(get)

    def counter(self, name: str, **labels: str) -> float:
        """The sum of a registry metric's series whose labels include ``labels``."""
        metric = self.gateway.registry.get(name)
        values: dict[tuple[str, ...], float] = getattr(metric, "values", {})
        total = 0.0
        for key, value in values.items():
            series = dict(zip(metric.labelnames, key, strict=True))
            if all(series.get(k) == v for k, v in labels.items()):
                total += value
        return total

    def metrics_line(self, name: str, **labels: str) -> str | None:
        """The /metrics text line of one series (as Prometheus scrapes it), or None."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
        for line in self.gateway.metrics().splitlines():
            if line.startswith(prefix):
                return line
        return None

    async def status(self) -> dict[str, Any]:
        """The gateway's /status document, as a client of its status endpoint reads it."""

        def get() -> dict[str, Any]:
            url = f"http://{self.gateway.status_address}/status"
            with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT) as response:
                return dict(json.loads(response.read()))

        return await trio.to_thread.run_sync(get)

    def queue_depth(self) -> int:
        """Undelivered messages in the journal, every route."""
        return sum(usage.messages for usage in self.gateway.store.queue_usage().values())


@asynccontextmanager
async def running_gateway(
    tmp_path: Path,
    routes: Sequence[RouteConfig],
    adapters: Mapping[str, AdapterConfig],
    *,
    settings: ServiceSettings | None = None,
) -> AsyncIterator[Pipeline]:
    """Start a push service and a gateway subscribed for every route; stop both on exit."""
    service = PushService(settings or ServiceSettings(redelivery_after=5.0))
    async with trio.open_nursery() as nursery:
        await nursery.start(partial(service.serve, "127.0.0.1", 0))
        config = gateway_config(service.subscribe_url, tmp_path / "state", routes, adapters)
        holder: list[Pipeline] = []
        gateway = Gateway(config, observer=lambda *event: holder[0].observe(*event))
        pipeline = Pipeline(service, gateway)
        holder.append(pipeline)
        try:
            await nursery.start(gateway.run)
            await wait_until(
                lambda: (
                    gateway.upstream.status.state == "connected"
                    and len(gateway.upstream.subscription_infos()) == len(config.routes)
                ),
                "the gateway to subscribe every route",
            )
            yield pipeline
        finally:
            nursery.cancel_scope.cancel()
    gateway.close()
    pipeline.session.close()


# -- the device side -------------------------------------------------------------------------


class MqttSubscriber:
    """An MQTT 5 client on its own thread (paho's loop) recording what arrives on ``topic``.

    Subscribed with QoS 2 (so each message arrives at the QoS it was published with) and
    Retain As Published (so the retain flag of a live message is visible).
    """

    def __init__(
        self,
        broker: Mosquitto,
        topic: str = "#",
        *,
        username: str | None = None,
        password: str | None = None,
        session_expiry: int = 0,
    ) -> None:
        self._lock = threading.Lock()
        self._messages: list[paho.MQTTMessage] = []
        self._subscribed = threading.Event()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="e2e-subscriber", protocol=paho.MQTTv5
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        # paho reconnects by itself after a broker restart; a second apart at most here.
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        # No Local: the client's own settle() publications are not delivered back to it.
        options = SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, options=options)
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        # With a session expiry and a persistent broker, the subscription and the messages
        # queued for this client survive a broker restart: nothing published before this client
        # is back is lost on the subscriber's side.
        connect.SessionExpiryInterval = session_expiry
        self.client.connect(
            broker.host, broker.port, clean_start=session_expiry == 0, properties=connect
        )
        self.client.loop_start()
        if not self._subscribed.wait(SUBSCRIBE_TIMEOUT):
            self.stop()
            raise RuntimeError("subscriber got no SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self._lock:
            self._messages.append(message)

    def settle(self) -> None:
        """Return once the broker has processed everything this client sent so far.

        A QoS 1 publish's PUBACK comes after the broker read the packets before it on the same
        connection, the acknowledgements of received messages included: a broker stopped after
        this will not redeliver those messages to the client's persistent session.
        """
        info = self.client.publish(SETTLE_TOPIC, b"", qos=1)
        info.wait_for_publish(SUBSCRIBE_TIMEOUT)
        if not info.is_published():
            raise RuntimeError("the broker did not acknowledge the settle publication")

    @property
    def messages(self) -> list[paho.MQTTMessage]:
        with self._lock:
            return list(self._messages)

    def payloads(self) -> list[bytes]:
        return [bytes(m.payload) for m in self.messages]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def user_properties(message: paho.MQTTMessage) -> dict[str, str]:
    """The MQTT 5 user properties of a received message, as a dict."""
    return dict(getattr(message.properties, "UserProperty", []))


def mqtt_property(message: paho.MQTTMessage, name: str) -> Any:
    """One MQTT 5 property of a received message (paho names them, e.g. ``ContentType``)."""
    return getattr(message.properties, name)


def has_mqtt_property(message: paho.MQTTMessage, name: str) -> bool:
    return hasattr(message.properties, name)


def processed_envelopes(sim: Simulator) -> list[dict[str, Any]]:
    """The msgpack envelopes the simulator processed, in order, from its record file."""
    envelopes: list[dict[str, Any]] = []
    for _mid, packed in sim.processed():
        envelope: dict[str, Any] = msgpack.unpackb(packed, raw=False)
        envelopes.append(envelope)
    return envelopes
