"""The MQTT adapter: publishes each delivery to a broker and waits for the broker's confirmation.

``MqttAdapter.run`` is the one supervisor of the broker connection: it connects, serves until the
connection is lost, waits an exponential backoff with full jitter and connects again (paho's own
reconnect has no jitter and is switched off). ``deliver`` publishes on the current connection and
returns when the broker confirms: PUBACK (QoS 1), PUBCOMP (QoS 2), or once written (QoS 0).

The store, not paho, holds the durable copy. So nothing is left in paho's queue across a
disconnect: every unconfirmed publish is dropped from paho and resolved ``RetryLater`` (the router
offers it again on the new connection); paho never resends it by itself, which would duplicate it.

Broker refusals are final: an MQTT 5 PUBACK/PUBCOMP with a reason code >= 0x80 (Not authorized
0x87, Topic Name invalid 0x90, Packet too large 0x95, Quota exceeded 0x97, ...) becomes
``Rejected`` with the reason's name and code. With MQTT 3.1.1 there are no reason codes: mosquitto
acknowledges a publish its ACL denies and silently drops it, so such a delivery counts as
delivered. Use MQTT 5 where refusals must be visible.

A refused QoS 2 publish is refused at PUBREC (paho itself ignores that reason code; see
``adapters.mqtt_link._Client``).
"""

from __future__ import annotations

import contextlib
import random
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
import trio

from adapters.base import (
    Adapter,
    Confirmation,
    Delivered,
    Health,
    Message,
    Outcome,
    Rejected,
    RetryLater,
    Settled,
    TargetConfig,
)
from adapters.envelope import payload_for
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from adapters.mqtt_link import (
    CONNECT_TIMEOUT,
    DEFAULT_RECEIVE_MAXIMUM,
    Link,
    blocking_connect,
    build_client,
    pump,
    request_write,
    resolve_port,
)
from adapters.mqtt_policy import (
    Publication,
    ack_outcome,
    encode_publish_properties,
    plan_publication,
    reconnect_delay,
    retry_while_down,
)
from fieldgate_common.logs import get_logger
from fieldgate_common.metrics import Counter, Gauge, Histogram, Metrics

log = get_logger("mqtt")

# A connection that stayed up this long was healthy: the next loss starts the backoff afresh.
# (A broker that accepts and then drops us at once, e.g. a duplicate client id, keeps backing off.)
HEALTHY_AFTER = 10.0
# Publishes to one target awaiting their confirmation at once, at most (beside the broker's
# Receive Maximum): enough to keep a loopback or LAN broker busy while the gateway publishes
# the next (20 in flight took the drain from 0.36 to 0.61 of its floor, issue 20), few enough
# that a broker going away leaves little to resend.
MAX_WINDOW = 32
# Confirmed publishes per target that a crash may repeat (see Adapter.repeat_window): twice
# the pipelining window, so that a drain records every 64 and not every 8 (bench e2e). What a
# subscriber that suppresses repeats by message-id must remember; the README says so.
REPEAT_WINDOW = 64
# Fixed header (1) + Remaining Length (up to 4) + Packet Identifier (2): the bytes of a PUBLISH
# besides topic, properties and payload (MQTT 5 §3.3), counted against Maximum Packet Size.
PUBLISH_OVERHEAD = 7


@dataclass(frozen=True)
class _PackedProperties:
    """Stands in for paho's ``Properties`` on PUBLISH: paho only calls ``pack()`` on it there.

    (Debug logging would also format it; paho logs only when a logger is enabled, and this
    adapter enables none.)
    """

    packed: bytes

    def pack(self) -> bytes:
        return self.packed

    def __str__(self) -> str:
        return f"<{len(self.packed)} bytes of properties>"


@dataclass
class _Pending:
    """One publish waiting for the broker's confirmation."""

    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome = field(default_factory=lambda: RetryLater("not confirmed"))

    def resolve(self, outcome: Outcome) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()


@dataclass
class _Instruments:
    """This adapter's series in the shared metrics registry."""

    deliveries: Counter
    connected: Gauge
    connects: Counter
    confirm_seconds: Histogram

    @classmethod
    def register(cls, metrics: Metrics) -> _Instruments:
        # Several MQTT adapters share one registry: the first registers, the others reuse.
        def get_or(name: str, make: Any) -> Any:
            try:
                return metrics.get(name)
            except KeyError:
                return make()

        return cls(
            deliveries=get_or(
                "fieldgate_mqtt_deliveries_total",
                lambda: metrics.counter(
                    "fieldgate_mqtt_deliveries_total",
                    "MQTT deliveries by outcome.",
                    ("adapter", "outcome"),
                ),
            ),
            connected=get_or(
                "fieldgate_mqtt_connected",
                lambda: metrics.gauge(
                    "fieldgate_mqtt_connected", "1 while the broker connection is up.", ("adapter",)
                ),
            ),
            connects=get_or(
                "fieldgate_mqtt_connection_attempts_total",
                lambda: metrics.counter(
                    "fieldgate_mqtt_connection_attempts_total",
                    "Broker connection attempts by result.",
                    ("adapter", "result"),
                ),
            ),
            confirm_seconds=get_or(
                "fieldgate_mqtt_confirm_seconds",
                lambda: metrics.histogram(
                    "fieldgate_mqtt_confirm_seconds",
                    "Time from publish to the broker's confirmation.",
                    ("adapter",),
                ),
            ),
        )


def read_password(config: MqttAdapterConfig) -> str | None:
    """The password from the config or its ``password_file`` (first line, newline stripped)."""
    if config.password_file is None:
        return config.password
    path = config.password_file
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s: password file %s is readable by others (want 0600)", config.name, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0] if lines else ""


class _Confirmation(Confirmation):
    """A QoS 1/2 publish on its way: holds its in-flight slot until the broker answered."""

    def __init__(
        self, adapter: MqttAdapter, link: Link, started: Outcome | tuple[_Pending, float]
    ) -> None:
        self._adapter, self._link, self._started = adapter, link, started

    async def outcome(self) -> Outcome:
        try:
            return self._adapter._count(await self._adapter._await(self._started))
        finally:
            self._link.inflight.release()


def _outcome_label(outcome: Outcome) -> str:
    labels = {Delivered: "delivered", RetryLater: "retry_later", Rejected: "rejected"}
    return labels.get(type(outcome), "expired")


class MqttAdapter(Adapter):
    """One broker connection (``[adapters.NAME]`` with ``type = "mqtt"``)."""

    def __init__(self, config: MqttAdapterConfig, *, metrics: Metrics | None = None) -> None:
        self.name = config.name
        self._config = config
        self._v5 = config.protocol == "5"
        self._client: paho.Client | None = None
        self._link: Link | None = None  # the current connection, accepted or not
        self._pending: dict[int, _Pending] = {}
        self._inline: dict[int, Outcome] | None = None  # confirmations during publish()
        self._rng = random.Random()
        self._state = "stopped"
        self._detail = ""
        self._since = time.time()
        self._counters: dict[str, int] = dict.fromkeys(
            (
                "delivered",
                "rejected",
                "retry_later",
                "expired",
                "connects",
                "connect_failures",
                "disconnects",
            ),
            0,
        )
        self._metrics = _Instruments.register(metrics) if metrics is not None else None
        self._changed = trio.Event()  # set (and replaced) whenever health() would differ
        self._watchers = 0

    # -- health --------------------------------------------------------------------------------

    def health(self) -> Health:
        """Connected or not, the last error, and the counters."""
        counters = dict(self._counters)
        counters["in_flight"] = len(self._pending)
        return Health(
            ok=self._state == "connected",
            state=self._state,
            detail=self._detail,
            since=self._since,
            counters=counters,
        )

    async def wait_health(self, predicate: Callable[[Health], bool]) -> Health:
        """Wait until ``health()`` satisfies ``predicate`` and return that snapshot."""
        self._watchers += 1
        try:
            while not predicate(snapshot := self.health()):
                await self._changed.wait()
            return snapshot
        finally:
            self._watchers -= 1

    def _notify(self) -> None:
        if self._watchers:
            self._changed.set()
            self._changed = trio.Event()

    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self._state or detail != self._detail:
            self._state, self._detail, self._since = state, detail, time.time()
            self._notify()
        if self._metrics is not None:
            self._metrics.connected.set(1.0 if state == "connected" else 0.0, adapter=self.name)

    # -- supervisor ----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect, serve, back off with full jitter, repeat; until cancelled."""
        try:
            client = build_client(self._config, read_password(self._config))
        except (OSError, ValueError) as exc:
            # A missing password file or unreadable certificate: nothing to retry until fixed.
            self._set_state("misconfigured", f"{type(exc).__name__}: {exc}")
            log.error("%s: %s", self.name, self._detail)
            task_status.started()
            await trio.sleep_forever()
        self._install_callbacks(client)
        self._client = client
        self._set_state("connecting")
        task_status.started()
        attempt = 0
        try:
            while True:
                up_since = await self._connect_and_serve(client)
                if up_since is not None and trio.current_time() - up_since >= HEALTHY_AFTER:
                    attempt = 0
                delay = reconnect_delay(
                    attempt, self._config.reconnect_base, self._config.reconnect_cap, self._rng
                )
                attempt += 1
                self._set_state("connecting", f"{self._detail} (retry in {delay:.1f} s)")
                await trio.sleep(delay)
        finally:
            self._set_state("stopped")
            self._abandon_pending("adapter stopped")
            if client.is_connected():
                client.disconnect()  # best effort: a clean DISCONNECT, written inline

    async def _connect_and_serve(self, client: paho.Client) -> float | None:
        """One connection attempt; returns when it is over, with the time it was accepted."""
        link = Link()
        self._link = link
        where = f"{self._config.host}:{resolve_port(self._config)}"
        try:
            await trio.to_thread.run_sync(blocking_connect, client, self._config)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            self._connect_failed(link, f"cannot connect to {where}: {_describe(exc)}")
            return None
        link.attach(client.socket())
        if link.sock is None:  # paho lost it while writing CONNECT in the worker thread
            self._connect_failed(link, f"connection to {where} closed while sending CONNECT")
            return None
        up_since: float | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, link)
            with trio.move_on_after(CONNECT_TIMEOUT):
                await link.connack.wait()
            if not link.connack.is_set():
                link.fail(f"no CONNACK from {where} within {CONNECT_TIMEOUT:.0f} s")
            if link.accepted and not link.lost.is_set():
                up_since = trio.current_time()
                self._counters["connects"] += 1
                self._count_connect("ok")
                self._set_state("connected")
                log.info("%s: connected to %s", self.name, where)
            await link.lost.wait()
            nursery.cancel_scope.cancel()
        reason = link.error or "connection closed"
        if up_since is None:
            self._connect_failed(link, reason)
        else:
            self._counters["disconnects"] += 1
            log.warning("%s: %s", self.name, reason)
            self._set_state("connecting", reason)
        self._abandon_pending(reason)
        return up_since

    def _connect_failed(self, link: Link, reason: str) -> None:
        link.fail(reason)
        self._counters["connect_failures"] += 1
        self._count_connect("failed")
        log.warning("%s: %s", self.name, reason)
        self._set_state("connecting", reason)

    def _count_connect(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.connects.inc(adapter=self.name, result=result)

    def _abandon_pending(self, reason: str) -> None:
        """Resolve every unconfirmed publish RetryLater and make sure paho never resends it."""
        if self._client is not None:
            self._client.drop_out_messages()
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            waiter.resolve(RetryLater(f"not confirmed before the connection ended: {reason}"))
        if pending:
            self._notify()

    # -- paho callbacks (run inside paho calls made from trio tasks) ---------------------------

    def _install_callbacks(self, client: paho.Client) -> None:
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_close = self._on_socket_close

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        link = self._link
        if link is None:
            return
        if reason.is_failure:
            link.fail(f"broker refused the connection: {reason.getName()} (0x{reason.value:02X})")
            return
        link.accepted = True
        link.session_present = bool(flags.session_present)
        if self._v5:
            receive_maximum = getattr(properties, "ReceiveMaximum", DEFAULT_RECEIVE_MAXIMUM)
            link.inflight = trio.Semaphore(receive_maximum)
            link.receive_maximum = receive_maximum
            link.max_packet_size = getattr(properties, "MaximumPacketSize", None)
        link.connack.set()

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        link = self._link
        if link is None or not _in_trio_thread():
            return  # in paho's connect() on the worker thread: _connect_and_serve handles it
        if flags.is_disconnect_packet_from_server:
            link.fail(f"broker disconnected: {reason.getName()} (0x{reason.value:02X})")
        else:
            link.fail(f"connection lost: {reason.getName()}")
        # Resolve at once, so no deliver() waits for the supervisor to notice.
        self._abandon_pending(link.error or "connection lost")

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        outcome = ack_outcome(reason.value, reason.getName(), "confirmed by the broker")
        waiter = self._pending.pop(mid, None)
        if waiter is not None:
            waiter.resolve(outcome)
        elif self._inline is not None:
            self._inline[mid] = outcome  # QoS 0 written inside publish()

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Tasks blocked in wait_readable/wait_writable on this socket must hear of the close.
        # (RuntimeError: closed by paho's connect() in the worker thread, where no task waits.)
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(sock)

    # -- deliveries ----------------------------------------------------------------------------

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        """Publish ``message`` per ``target`` and return once the broker confirmed it."""
        if not isinstance(target, MqttTarget):
            return self._count(Rejected(f"{type(target).__name__} given to MQTT adapter"))
        return await (await self.send(message, target)).outcome()

    def repeat_window(self, target: TargetConfig) -> int:
        """A subscriber suppresses repeats by the ``message-id`` user property with a window
        it chooses (MQTT QoS 1 repeats on its own too): :data:`REPEAT_WINDOW`."""
        return REPEAT_WINDOW

    def repeat_scope(self, target: TargetConfig) -> str | None:
        """Each target its own: a topic's subscribers keep their own memory of message ids."""
        return None

    def window(self, target: TargetConfig) -> int:
        """QoS 1 and 2: as many as the broker takes in flight (its Receive Maximum), bounded."""
        if not isinstance(target, MqttTarget) or target.qos == 0:
            return 1
        link = self._link
        receive_maximum = link.receive_maximum if link is not None else 1
        return max(1, min(receive_maximum, MAX_WINDOW))

    async def send(self, message: Message, target: TargetConfig) -> Confirmation:
        """Publish now (in the order of the calls); the confirmation is the PUBACK/PUBCOMP."""
        if not isinstance(target, MqttTarget):
            return Settled(self._count(Rejected(f"{type(target).__name__} given to MQTT adapter")))
        link, client = self._link, self._client
        if client is None or link is None or not link.accepted or link.lost.is_set():
            return Settled(self._count(retry_while_down(self._state, self._detail)))
        if target.qos == 0:
            return Settled(
                self._count(await self._await(self._publish(client, link, message, target)))
            )
        # The broker's Receive Maximum; released when confirmed. A free slot is taken without a
        # checkpoint: with one per publish the router sent one message per scheduling round
        # while the upstream reader took in a backlog (bench e2e drain: ~100 publishes/s).
        try:
            link.inflight.acquire_nowait()
        except trio.WouldBlock:
            await link.inflight.acquire()
        try:
            started = self._publish(client, link, message, target)
        except BaseException:
            link.inflight.release()
            raise
        return _Confirmation(self, link, started)

    async def _await(self, started: Outcome | tuple[_Pending, float]) -> Outcome:
        """The outcome of a publish that :meth:`_publish` started."""
        if not isinstance(started, tuple):
            return started
        waiter, at = started
        if not waiter.done.is_set():  # an answer already read costs no scheduling round
            await waiter.done.wait()
        outcome = waiter.outcome
        if self._metrics is not None and isinstance(outcome, Delivered):
            self._metrics.confirm_seconds.observe(trio.current_time() - at, adapter=self.name)
        return outcome

    def _publish(
        self, client: paho.Client, link: Link, message: Message, target: MqttTarget
    ) -> Outcome | tuple[_Pending, float]:
        """Publish ``message``: its outcome when known at once, else the waiter for it."""
        if link.lost.is_set():  # lost while waiting for an in-flight slot
            return retry_while_down(self._state, self._detail)
        # Planned here, after any wait for an in-flight slot: the deadline is the last thing
        # checked before the bytes go out.
        plan = plan_publication(message, target.topic, target.content_type, time.time())
        if not isinstance(plan, Publication):
            return plan
        payload = payload_for(message, target.payload)
        properties = _PackedProperties(encode_publish_properties(plan)) if self._v5 else None
        too_large = self._too_large(link, plan, payload, properties, target.qos)
        if too_large is not None:
            return too_large
        started = trio.current_time()
        self._inline = {}
        try:
            info = client.publish(
                plan.topic,
                payload,
                target.qos,
                target.retain,
                properties,  # type: ignore[arg-type]  # duck-typed: see _PackedProperties
            )
        except ValueError as exc:
            return Rejected(f"paho refused the publish: {exc}")
        finally:
            inline, self._inline = self._inline, None
        if info.rc != paho.MQTT_ERR_SUCCESS or link.lost.is_set():
            self._abandon_pending(link.error or paho.error_string(info.rc))
            return retry_while_down(self._state, link.error or paho.error_string(info.rc))
        outcome = inline.get(info.mid)
        if outcome is not None:
            return outcome
        waiter = _Pending()
        self._pending[info.mid] = waiter
        self._notify()
        request_write(client, link)  # a partial inline write leaves bytes for the writer
        return waiter, started

    def _too_large(
        self,
        link: Link,
        plan: Publication,
        payload: bytes,
        properties: _PackedProperties | None,
        qos: int,
    ) -> Rejected | None:
        """Refuse locally what the broker announced it would refuse (MQTT 5 §3.2.2.3.6)."""
        if link.max_packet_size is None:
            return None
        size = PUBLISH_OVERHEAD + 2 + len(plan.topic.encode()) + len(payload)
        if properties is not None:
            size += len(properties.pack())
        if size <= link.max_packet_size:
            return None
        return Rejected(
            f"broker refused the publish: Packet too large (0x95): {size} bytes, "
            f"the broker accepts at most {link.max_packet_size}"
        )

    def _count(self, outcome: Outcome) -> Outcome:
        label = _outcome_label(outcome)
        self._counters[label] += 1
        self._notify()
        if self._metrics is not None:
            self._metrics.deliveries.inc(adapter=self.name, outcome=label)
        return outcome


def _in_trio_thread() -> bool:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


def _describe(exc: BaseException) -> str:
    """A short, secret-free description of a connection error."""
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"
