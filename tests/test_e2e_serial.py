"""End to end to a serial device: pywebpush -> push service -> whole gateway -> C simulator.

The device is ``firmware-bridge/build/fbsim`` on a real pseudo-terminal, reached through a
symlink as ``/dev/serial/by-id`` would name it; its record file lists every message it processed.
The last test runs an MQTT route and a serial route through one gateway, like ``fieldgate demo``.
"""

# ruff: noqa: F811  (pytest fixtures are imported explicitly and then named as parameters)

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from adapters.base import AdapterConfig
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from adapters.serial_config import SerialTarget
from tests.agent_harness import WAIT_LIMIT, wait_until
from tests.mosquitto import Mosquitto, mosquitto, mosquitto_factory  # noqa: F401
from tests.pipeline import (
    MqttSubscriber,
    Pipeline,
    Sent,
    processed_envelopes,
    route,
    running_gateway,
    serial_adapter,
)
from tests.serial_sim import Simulator, point_symlink, start_simulator

DEVICE = SerialTarget(adapter="valve-controller")
# How often receipts are fetched while waiting for one (HTTP/1.1 GETs on loopback).
RECEIPT_POLL = 0.02


@pytest.fixture
def sims() -> Iterator[list[Simulator]]:
    """Simulators a test starts; killed at teardown."""
    started: list[Simulator] = []
    yield started
    for sim in started:
        sim.kill()


def bodies(sim: Simulator) -> list[bytes]:
    return [bytes(envelope["body"]) for envelope in processed_envelopes(sim)]


def device_link(tmp_path: Path) -> Path:
    """Where the adapter looks for the device; a dangling link until a simulator is plugged."""
    link = tmp_path / "usb-fieldgate_valves-if00"
    point_symlink(link, str(tmp_path / "nothing-plugged-in"))
    return link


def plug(tmp_path: Path, sims: list[Simulator], link: Path, *args: str) -> Simulator:
    """Start a simulator (appending to the one record file) and point the link at its pty."""
    sim = start_simulator(tmp_path / "device-record", args)
    sims.append(sim)
    point_symlink(link, sim.pty)
    return sim


def noise(seed: int) -> tuple[str, ...]:
    """fbsim options for a noisy line: 5% of frames corrupted, 5% dropped, reproducibly."""
    return ("--corrupt", "0.05", "--drop", "0.05", "--seed", str(seed))


async def receipt_statuses(run: Pipeline, sent: Sent) -> list[object]:
    assert sent.receipt_url is not None
    return [r["status"] for r in await run.receipts(sent.receipt_url)]


async def wait_for_receipt(run: Pipeline, sent: Sent, processed: Any) -> list[object]:
    """Poll the receipt; when it is there, ``processed()`` must already be true."""
    with trio.fail_after(WAIT_LIMIT):
        # The receipt is the push service's answer to a GET: it has to be asked for.
        while not (statuses := await receipt_statuses(run, sent)):  # noqa: ASYNC110
            await trio.sleep(RECEIPT_POLL)
    assert processed(), "the receipt reached the sender before the device processed the message"
    return statuses


async def test_receipt_follows_the_device_and_every_message_arrives_once_in_order(
    tmp_path: Path, sims: list[Simulator]
) -> None:
    link = device_link(tmp_path)
    routes = [route("valves", DEVICE, ack="delivered")]
    adapters = {"valve-controller": serial_adapter("valve-controller", link)}
    async with running_gateway(tmp_path, routes, adapters) as run:
        first = await run.send("valves", b"open valve 0", receipt=True)
        # No device yet: the gateway journals it and keeps trying; nobody has confirmed anything.
        await wait_until(
            lambda: run.counter("fieldgate_deliveries_retried_total", route="valves") >= 2,
            "delivery attempts without a device",
        )
        assert await receipt_statuses(run, first) == []
        assert run.service.pending_messages() == 1

        sim = plug(tmp_path, sims, link)
        assert await wait_for_receipt(run, first, lambda: bodies(sim) == [b"open valve 0"]) == [204]

        rest = [b"valve %d to %d%%" % (i % 4, i * 5) for i in range(1, 25)]
        sent = [await run.send("valves", body, receipt=True) for body in rest]
        for body, answer in zip(rest, sent, strict=True):
            statuses = await wait_for_receipt(run, answer, lambda b=body: b in bodies(sim))
            assert statuses == [204]
        await wait_until(lambda: run.service.pending_messages() == 0, "every ack upstream")
        ids = [envelope["id"] for envelope in processed_envelopes(sim)]
        journal_ids = [run.journal_ids[answer.message_url] for answer in [first, *sent]]
        routes_seen = {envelope["route"] for envelope in processed_envelopes(sim)}

    assert bodies(sim) == [b"open valve 0", *rest]
    assert ids == journal_ids  # each message once, in the order it was sent
    assert routes_seen == {"valves"}


async def test_noise_reboots_and_an_unplug_lose_nothing_and_repeat_nothing(
    tmp_path: Path, sims: list[Simulator]
) -> None:
    link = device_link(tmp_path)
    sim = plug(tmp_path, sims, link, *noise(seed=11), "--reboot-after", "7")
    routes = [route("valves", DEVICE, ack="delivered")]
    adapters = {"valve-controller": serial_adapter("valve-controller", link)}
    messages = [b"setpoint %02d" % i for i in range(40)]
    async with running_gateway(tmp_path, routes, adapters) as run, trio.open_nursery() as senders:
        adapter = run.gateway.adapters["valve-controller"]
        sending = trio.Event()

        async def send_first_part() -> None:
            await run.send_all("valves", messages[:30])
            sending.set()

        senders.start_soon(send_first_part)
        await wait_until(lambda: len(sim.processed()) >= 10, "the device to be mid-stream")
        sim.kill()  # unplugged mid-stream, while the sender goes on
        await wait_until(lambda: not adapter.health().ok, "the adapter to notice the unplug")
        # Replugged: a new device process (same non-volatile record) on a new pty.
        sim = plug(tmp_path, sims, link, *noise(seed=12))
        await sending.wait()
        await run.send_all("valves", messages[30:])
        await wait_until(lambda: run.queue_depth() == 0, "the journal to drain")
        await wait_until(lambda: run.service.pending_messages() == 0, "every ack upstream")
        rebooted = run.counter("fieldgate_serial_events_total", event="DeviceRebooted")
        sim.reboot()  # SIGUSR1 once idle: the link comes back and nothing is replayed
        await wait_until(
            lambda: (
                run.counter("fieldgate_serial_events_total", event="DeviceRebooted") == rebooted + 1
            ),
            "the gateway to see the reboot",
        )
        await wait_until(lambda: adapter.health().ok, "the link back after the reboot")
        retransmits = adapter.health().counters.get("tx_retransmits", 0)  # this link's
        link_ups = run.counter("fieldgate_serial_events_total", event="LinkUp")
        dead = run.gateway.store.dead_letters()

    envelopes = processed_envelopes(sim)
    ids = [envelope["id"] for envelope in envelopes]
    assert len(ids) == len(set(ids)), "a message was processed twice"
    assert bodies(sim) == messages  # none lost, in order
    assert retransmits >= 1  # the noise did cost frames
    assert rebooted >= 1  # --reboot-after 7 on the first device
    assert link_ups >= 4  # first plug, its reboot(s), the replug, the SIGUSR1 reboot
    assert dead == []


async def test_mqtt_and_serial_routes_through_one_gateway(
    tmp_path: Path, sims: list[Simulator], mosquitto: Mosquitto
) -> None:
    link = device_link(tmp_path)
    sim = plug(tmp_path, sims, link)
    broker = MqttAdapterConfig(
        name="site-broker",
        host=mosquitto.host,
        port=mosquitto.port,
        reconnect_base=0.05,
        reconnect_cap=0.2,
    )
    telemetry = MqttTarget(adapter="site-broker", topic="greenhouse/{route}/{id}")
    alarm_topic = MqttTarget(adapter="site-broker", topic="greenhouse/alarms", qos=2)
    routes = [
        route("site-telemetry", telemetry),
        route("greenhouse-valves", DEVICE, ack="delivered"),
        route("alarms", alarm_topic, DEVICE, ack="delivered"),  # both targets
    ]
    adapters: dict[str, AdapterConfig] = {
        "site-broker": broker,
        "valve-controller": serial_adapter("valve-controller", link),
    }
    plan: list[tuple[str, bytes]] = []
    for i in range(6):
        plan.append(("site-telemetry", b'{"interval_s": %d}' % (60 + i)))
        plan.append(("greenhouse-valves", b'{"valve": %d, "open": true}' % i))
    plan.append(("alarms", b"frost warning"))
    subscriber = MqttSubscriber(mosquitto, "greenhouse/#")
    try:
        async with running_gateway(tmp_path, routes, adapters) as run:
            for name, body in plan:
                await run.send(name, body, urgency="high" if name == "alarms" else "normal")
            await wait_until(lambda: run.queue_depth() == 0, "every route delivered")
            await wait_until(lambda: run.service.pending_messages() == 0, "every ack upstream")
            await wait_until(lambda: len(subscriber.messages) == 7, "the MQTT side")
            healthy = run.gateway.health()
            adapters_ok = {a["name"]: a["ok"] for a in run.gateway.status()["adapters"]}  # type: ignore[attr-defined]
    finally:
        subscriber.stop()

    def sent_to(route_name: str) -> list[bytes]:
        return [body for name, body in plan if name == route_name]

    # Order holds per route (one worker per route and target); routes sharing a device or a
    # broker interleave as their workers go.
    mqtt = subscriber.messages
    assert [bytes(m.payload) for m in mqtt if m.topic.startswith("greenhouse/site-telemetry/")] == (
        sent_to("site-telemetry")
    )
    assert [bytes(m.payload) for m in mqtt if m.topic == "greenhouse/alarms"] == sent_to("alarms")
    device = processed_envelopes(sim)
    for route_name in ("greenhouse-valves", "alarms"):
        got = [bytes(e["body"]) for e in device if e["route"] == route_name]
        assert got == sent_to(route_name), route_name
    assert len(device) == len(sent_to("greenhouse-valves")) + len(sent_to("alarms"))
    assert healthy == (True, "ok")
    assert adapters_ok == {"site-broker": True, "valve-controller": True}
