"""One MQTT connection: a paho client whose socket trio drives, and the per-connection state.

Why trio drives paho's socket instead of ``loop_start()``: paho's own thread costs a socketpair
wake-up and a GIL hand-over per publish, which measured 70-250 us per message in the pipeline
against ~20 us for the publish itself (``/work/shared/reference/perf-limits.md`` §3). Here
``publish()`` writes inline from the delivering task (paho does that when it has no thread and
no ``on_socket_register_write`` callback), and three small trio tasks call paho's
``loop_read``/``loop_write``/``loop_misc`` when the socket is readable, when paho still has
bytes queued and the socket is writable, and on the keepalive tick. Nothing polls: an idle
connection wakes only for keepalive. The one blocking step, paho's ``connect()`` (DNS, TCP and
the TLS handshake), runs once per connection attempt in a worker thread while no task touches the
client.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import trio
from paho.mqtt import _packet
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from adapters.mqtt_config import MqttAdapterConfig

MQTT_PORT = 1883  # IANA "mqtt"
MQTTS_PORT = 8883  # IANA "secure-mqtt"
# Bounds DNS + TCP + TLS in paho's blocking connect(), and again the wait for CONNACK.
CONNECT_TIMEOUT = 10.0
# paho checks keepalive only when loop_misc() runs; ticking 4 times per interval sends PINGREQ
# at most 1.25 keepalives after the last traffic, inside the broker's 1.5x grace (MQTT 5 §3.1.2.10).
KEEPALIVE_TICKS_PER_INTERVAL = 4
# MQTT 5 §3.2.2.3.3: a CONNACK without Receive Maximum means 65,535.
DEFAULT_RECEIVE_MAXIMUM = 65535
# MQTT 3.1.1 has no Receive Maximum; 20 is mosquitto's max_inflight_messages default and paho's.
MQTT311_MAX_INFLIGHT = 20
# Linux's TCP_QUICKACK (tcp(7)); None elsewhere, where the delayed ACK stays as it is.
TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)


@dataclass
class Link:
    """State of one connection attempt, from socket open to loss (callbacks write here)."""

    sock: Any = None  # paho's socket (a socket.socket or ssl.SSLSocket)
    tcp: socket.socket | None = None  # the TCP socket under it (None: a Unix socket)
    connack: trio.Event = field(default_factory=trio.Event)
    lost: trio.Event = field(default_factory=trio.Event)
    write_wanted: trio.Event = field(default_factory=trio.Event)
    accepted: bool = False  # CONNACK with success
    error: str | None = None  # first reason this connection failed or ended
    session_present: bool = False
    max_packet_size: int | None = None  # the broker's Maximum Packet Size (MQTT 5)
    inflight: trio.Semaphore = field(default_factory=lambda: trio.Semaphore(MQTT311_MAX_INFLIGHT))
    receive_maximum: int = MQTT311_MAX_INFLIGHT  # what inflight was sized to

    def attach(self, sock: Any) -> None:
        """Take paho's connected socket, with Nagle's algorithm off (paho leaves it on): MQTT
        is small packets each answered by a small packet, and with Nagle a publish waits for
        the previous one's ACK, which the broker delays (up to 40 ms on Linux) when it has no
        packet of its own to carry it (mosquitto issue #433)."""
        self.sock = sock
        raw = getattr(sock, "_socket", sock)  # under paho's websocket wrapper
        if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
            self.tcp = raw
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def ack_at_once(self) -> None:
        """After a read: ACK what came in now, not after the delayed-ACK timer. A broker that
        leaves Nagle's algorithm on (mosquitto's default, ``set_tcp_nodelay false``) holds each
        PUBACK until our ACK of the previous one: whenever a pipeline of publishes waited for
        its last PUBACKs, it stopped for 40 ms (an MQTT drain: ~1,000 msg/s, both cores idle;
        2,400 msg/s with this). Linux leaves quick-ACK mode by itself, so it is set after every
        read."""
        if self.tcp is not None and TCP_QUICKACK is not None:
            self.tcp.setsockopt(socket.IPPROTO_TCP, TCP_QUICKACK, 1)

    def fail(self, reason: str) -> None:
        """Record why the connection failed (the first reason wins) and mark it lost."""
        if self.error is None:
            self.error = reason
        self.connack.set()
        self.lost.set()


class _Client(paho.Client):
    """paho's client with MQTT 5 §4.3.3 honoured for QoS 2 refusals.

    paho 2.2 ignores a PUBREC's reason code and sends PUBREL anyway, so a QoS 2 publish the broker
    refused (e.g. Not authorized at PUBREC) would end in a successful PUBCOMP and look delivered.
    Here a failing PUBREC ends the flow and reaches ``on_publish`` with its reason code, as a
    PUBACK would. This overrides a private method of paho 2.x (the dependency is pinned < 3);
    ``tests/test_mqtt_adapter.py`` fails if paho changes underneath.
    """

    def _handle_pubrec(self) -> MQTTErrorCode:
        if self._protocol == paho.MQTTv5:
            packet = _packet.decode_pubrec(
                self._in_packet["command"], self._in_packet["packet"], self._protocol
            )
            if packet.reason.is_failure:
                with self._out_message_mutex:
                    if packet.mid in self._out_messages:
                        return self._do_on_publish(packet.mid, packet.reason, packet.properties)
                return paho.MQTT_ERR_SUCCESS
        return super()._handle_pubrec()


def resolve_port(config: MqttAdapterConfig) -> int:
    """The configured port, or the IANA default for plain or TLS MQTT."""
    if config.port is not None:
        return config.port
    return MQTTS_PORT if config.tls else MQTT_PORT


def default_client_id(config: MqttAdapterConfig) -> str:
    """``fieldgate-<hostname>-<adapter>``: stable across restarts, distinct per adapter."""
    return config.client_id or f"fieldgate-{socket.gethostname()}-{config.name}"


def tls_context(config: MqttAdapterConfig) -> ssl.SSLContext:
    """Verify the broker (with ``ca_file`` alone when given) and always check its name."""
    context = ssl.create_default_context(
        cafile=str(config.ca_file) if config.ca_file is not None else None
    )
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if config.cert_file is not None:
        context.load_cert_chain(
            str(config.cert_file),
            str(config.key_file) if config.key_file is not None else None,
        )
    return context


def build_client(config: MqttAdapterConfig, password: str | None) -> paho.Client:
    """A paho client for ``config`` with no network loop of its own."""
    v5 = config.protocol == "5"
    client = _Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=default_client_id(config),
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        clean_session=None if v5 else config.clean_start,
        reconnect_on_failure=False,  # the adapter's supervisor owns reconnects
    )
    client.connect_timeout = CONNECT_TIMEOUT
    # Unlimited in paho: the adapter enforces the broker's Receive Maximum itself, because paho
    # cannot change its limit once connected and would otherwise queue (and later resend) copies.
    client.max_inflight_messages = 0
    if config.username is not None:
        client.username_pw_set(config.username, password)
    if config.tls:
        client.tls_set_context(tls_context(config))
    return client


def blocking_connect(client: paho.Client, config: MqttAdapterConfig) -> None:
    """Open the socket and send CONNECT (runs in a worker thread; raises OSError on failure)."""
    keepalive = max(0, round(config.keepalive))
    if config.protocol == "5":
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = max(0, int(config.session_expiry))
        client.connect(
            config.host,
            resolve_port(config),
            keepalive,
            clean_start=config.clean_start,
            properties=properties,
        )
    else:
        client.connect(config.host, resolve_port(config), keepalive)


def request_write(client: paho.Client, link: Link) -> None:
    """Wake the writer task when paho still holds bytes its inline write could not send."""
    if client.want_write():
        link.write_wanted.set()


async def pump(client: paho.Client, link: Link) -> None:
    """Drive the connected client until the connection is lost (then return)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_read_loop, client, link)
        nursery.start_soon(_write_loop, client, link)
        nursery.start_soon(_misc_loop, client, link)
        await link.lost.wait()
        nursery.cancel_scope.cancel()


def _pending_tls_bytes(sock: Any) -> int:
    # Records already decrypted inside the SSL object do not make the fd readable again.
    pending = getattr(sock, "pending", None)
    return int(pending()) if pending is not None else 0


async def _read_loop(client: paho.Client, link: Link) -> None:
    try:
        while True:
            await trio.lowlevel.wait_readable(link.sock)
            rc = client.loop_read()
            while rc == paho.MQTT_ERR_SUCCESS and _pending_tls_bytes(link.sock) > 0:
                rc = client.loop_read()
            if rc != paho.MQTT_ERR_SUCCESS:
                link.fail(f"connection lost: {paho.error_string(rc)}")
                return
            link.ack_at_once()
            request_write(client, link)  # PUBREL and PINGRESP replies queue bytes too
    except (trio.ClosedResourceError, OSError) as exc:
        link.fail(f"connection lost: {exc or type(exc).__name__}")


async def _write_loop(client: paho.Client, link: Link) -> None:
    try:
        while True:
            await link.write_wanted.wait()
            link.write_wanted = trio.Event()
            while client.want_write():
                await trio.lowlevel.wait_writable(link.sock)
                rc = client.loop_write()
                if rc != paho.MQTT_ERR_SUCCESS:
                    link.fail(f"connection lost: {paho.error_string(rc)}")
                    return
    except (trio.ClosedResourceError, OSError) as exc:
        link.fail(f"connection lost: {exc or type(exc).__name__}")


async def _misc_loop(client: paho.Client, link: Link) -> None:
    while True:
        keepalive = client.keepalive  # the broker's Server Keep Alive once CONNACK arrived
        if keepalive <= 0:
            return  # keepalive disabled: nothing to tick
        await trio.sleep(keepalive / KEEPALIVE_TICKS_PER_INTERVAL)
        rc = client.loop_misc()
        if rc != paho.MQTT_ERR_SUCCESS:
            link.fail("connection lost: no PINGRESP within the keepalive interval")
            return
        request_write(client, link)
