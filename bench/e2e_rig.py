"""The end-to-end benchmark's peers, for the benchmarks that run the gateway their own way
(``bench instructions``, ``bench sdcard``): mosquitto, the push service and fbsim, the gateway's
configuration for them, its subscriptions, an MQTT subscriber and a sender."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from bench.e2e_common import CORE_PEERS, Child
from bench.e2e_procs import (
    TOPIC_PREFIX,
    GatewayProcess,
    export_keys,
    free_port,
    start_mosquitto,
    start_push_service,
    start_simulator,
    stop_process,
    write_config,
)

# The service must not push a message twice because a phase is slow (valgrind, long idles).
REDELIVERY_AFTER = 3600.0
LIMIT = 600.0  # seconds for a child to answer; beyond that it is broken, not slow


class Peers:
    """Everything around the gateway; ``subscribe`` makes its subscriptions with a first start."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(exist_ok=True)
        self.workdir = workdir
        self.children: list[Child] = []
        mosquitto, self.mqtt_port = start_mosquitto(workdir)
        self.procs: list[Any] = [mosquitto]
        service, service_url = start_push_service(workdir, REDELIVERY_AFTER)
        fbsim, pty, self.record = start_simulator(workdir)
        self.procs += [service, fbsim]
        self.status_port = free_port()
        self.config = write_config(workdir, service_url, self.mqtt_port, pty, self.status_port)
        self.keys_file = workdir / "keys.json"

    def subscribe(self, log: str) -> GatewayProcess:
        """Start the gateway, wait until both routes are subscribed, write the keys file; the
        gateway is left running."""
        gateway = GatewayProcess(self.config, self.status_port, self.workdir / log)
        gateway.start()
        gateway.wait_ready()
        gateway.wait_subscribed()
        export_keys(self.config, self.keys_file)
        return gateway

    def clients(self, ttl: int, pools: dict[str, int]) -> tuple[Child, Child]:
        """The MQTT subscriber (every topic of the benchmark) and a sender with ``pools[route]``
        messages encrypted ahead for each route."""
        subscriber = self.child(
            ["-m", "bench.e2e_subscriber", str(self.mqtt_port), TOPIC_PREFIX + "#"]
        )
        subscriber.expect("ready", LIMIT)
        sender = self.child(["-m", "bench.e2e_sender", str(self.keys_file), str(ttl)])
        sender.expect("ready", LIMIT)
        for route, count in pools.items():
            sender.ask("encrypted", LIMIT, cmd="encrypt", route=route, count=count)
        return subscriber, sender

    def child(self, args: list[str]) -> Child:
        child = Child([sys.executable, *args], core=CORE_PEERS, stdin=True)
        self.children.append(child)
        return child

    def close(self) -> None:
        for child in self.children:
            child.send(cmd="quit")
            child.stop()
        for proc in reversed(self.procs):
            stop_process(proc)
