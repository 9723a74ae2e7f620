"""The gateway process: the store, the adapters, the router, the upstream side and the status
endpoint.

:class:`Gateway` wires the parts together and is the status endpoint's provider; ``fieldgate
run`` calls :func:`run_gateway`, which adds signals and systemd notification around it.
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TypeVar

import trio

from adapters.base import Adapter, Message
from adapters.registry import build_adapter
from fieldgate_common.logs import get_logger
from fieldgate_common.metrics import Metrics
from fieldgate_common.sdnotify import Notifier, Watchdog, watchdog_interval
from fieldgate_common.status_http import ListenError, serve_status
from gateway import __version__, statedir
from gateway.config import Config, ConfigError, load_config
from gateway.router import Router
from gateway.routes import CurrentRoutes, RouteTable
from gateway.statedir import REREAD_SIGNAL, acquire_run_lock
from gateway.status_model import (
    AdapterSnapshot,
    RouteDelivery,
    RouteSnapshot,
    StatusSnapshot,
    SubscriptionSnapshot,
)
from gateway.status_page import render_status_page
from gateway.status_schema import STATUS_SCHEMA_VERSION, status_document
from gateway.store import CarriedResolutions, Store
from gateway.upstream.journal import Observer
from gateway.upstream.supervisor import Upstream

log = get_logger("gateway")

_E = TypeVar("_E", bound=BaseException)


def build_adapters(config: Config, metrics: Metrics) -> dict[str, Adapter]:
    """One adapter instance per ``[adapters.NAME]`` table."""
    return {name: build_adapter(settings, metrics) for name, settings in config.adapters.items()}


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


class Gateway:
    """All the parts of one running gateway; also the status endpoint's provider."""

    schema_version = STATUS_SCHEMA_VERSION

    def __init__(
        self, config: Config, *, store: Store | None = None, observer: Observer | None = None
    ) -> None:
        self.config = config
        self.started_at = time.time()
        self.registry = Metrics()
        self.m_rss = self.registry.gauge("fieldgate_resident_memory_bytes", "Resident set size")
        self.store = store or Store.open(config.push.state_dir, journal=config.journal)
        self.routes = CurrentRoutes(RouteTable(config.routes))
        self.adapters = build_adapters(config, self.registry)
        self.upstream = Upstream(
            config,
            self.routes,
            self.store,
            self.registry,
            on_journalled=self._journalled,
            on_counted=self._counted,
            carry=self._carry,
            observer=observer,
        )
        self.router = self._new_router(self.routes.table, self.adapters)
        self.status_address: str | None = None
        self._router_scope: trio.CancelScope | None = None

    def _new_router(self, table: RouteTable, adapters: Mapping[str, Adapter]) -> Router:
        return Router(
            self.store,
            table,
            adapters,
            self.registry,
            on_ack=self.upstream.acknowledge,
            on_committed=self.upstream.committed_elsewhere,
            carry_acks=self.upstream.carry_acks,
        )

    def _journalled(self, messages: Sequence[Message]) -> None:
        self.router.journalled(messages)

    def _counted(self) -> None:
        self.router.refresh_counts()

    def _carry(self) -> CarriedResolutions | None:
        return self.router.carry()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run every part until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_router)
            await nursery.start(self.upstream.run)
            if self.config.status.listen:
                self.status_address = await nursery.start(
                    self._serve_status, self.config.status.listen
                )
            task_status.started()

    async def _run_router(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        # The router and its adapters run in a scope of their own, so that a reload can replace
        # them while the upstream connection stays up.
        while True:
            with trio.CancelScope() as scope:
                self._router_scope = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.router.run)
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    await trio.sleep_forever()

    def reload(self, new: Config) -> list[str]:
        """Apply a reloaded configuration's routes and adapters; returns what was not applied.

        The upstream connection stays: routes added are subscribed on it and routes removed
        unsubscribed. ``[push]``, ``[status]``, ``[journal]`` and ``[log]`` need a restart.
        Raises ``ValueError`` (nothing changed) when the new routes cannot be built.
        """
        old = self.config
        ignored = [
            f"[{name}] changed: restart the gateway to apply it"
            for name in ("push", "status", "journal", "log")
            if getattr(new, name) != getattr(old, name)
        ]
        config = replace(new, push=old.push, status=old.status, journal=old.journal, log=old.log)
        table = RouteTable(config.routes)
        adapters = build_adapters(config, self.registry)
        router = self._new_router(table, adapters)
        self.config, self.adapters, self.router = config, adapters, router
        self.routes.replace(table)
        self.upstream.reconfigure()
        if self._router_scope is not None:
            self._router_scope.cancel()  # _run_router starts the new router
        log.info("configuration reloaded: %d route(s)", len(config.routes))
        return ignored

    async def _serve_status(
        self, listen: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> None:
        await serve_status(
            listen, self, allow_remote=self.config.status.allow_remote, task_status=task_status
        )

    def close(self) -> None:
        """Close the store (after :meth:`run` ended)."""
        self.store.close()

    # ---------------------------------------------------------------- StatusProvider

    def snapshot(self) -> StatusSnapshot:
        """What every part reports now, typed (see :mod:`gateway.status_model`)."""
        now = time.time()
        deliveries = self.router.snapshot()
        idle = RouteDelivery(0, 0, None, None, None)
        routes = tuple(
            RouteSnapshot(
                route.name,
                route.ack,
                tuple(t.adapter for t in route.deliver),
                deliveries.get(route.name, idle),
            )
            for route in self.routes.table
        )
        subscriptions = tuple(
            SubscriptionSnapshot(
                rec.route, rec.push_url, rec.set_url or rec.subscription_url, rec.created_at
            )
            for rec in self.store.subscriptions()
        )
        adapters = tuple(
            AdapterSnapshot(name, self.config.adapters[name].type, adapter.health())
            for name, adapter in self.adapters.items()
        )
        counters: dict[str, float] = {}
        for metric_name in (
            "fieldgate_messages_received_total",
            "fieldgate_messages_acknowledged_total",
            "fieldgate_reconnects_total",
        ):
            metric = self.registry.get(metric_name)
            counters[metric_name.removeprefix("fieldgate_")] = sum(
                getattr(metric, "values", {}).values()
            )
        return StatusSnapshot(
            now=now,
            version=__version__,
            uptime=now - self.started_at,
            upstream=self.upstream.snapshot(),
            routes=routes,
            subscriptions=subscriptions,
            adapters=adapters,
            counters=counters,
        )

    def status(self) -> dict[str, object]:
        """The ``/status`` document (see ``gateway/status_schema.py``)."""
        return status_document(self.snapshot())

    def page(self, document: dict[str, object]) -> str:
        """The status page for a served /status document."""
        return render_status_page(document)

    def metrics(self) -> str:
        """Prometheus text."""
        self.m_rss.set(_resident_bytes())
        self.router.publish_gauges()
        return self.registry.render()

    def health(self) -> tuple[bool, str]:
        """Healthy when the journal is intact and commits, the push service is connected and
        every adapter is ok; otherwise the first reason."""
        journal = self.store.problem  # found by the store's own checks; never waits for a commit
        if journal is not None:
            return False, f"journal: {journal}"
        if self.store.disk_full:
            return (
                False,
                "journal: the disk is full: new messages are refused (left with the push service)",
            )
        problem = self.upstream.problem()
        if problem is not None:
            return False, problem
        sick = [name for name, a in self.adapters.items() if not a.health().ok]
        if sick:
            return False, "adapter(s) not ok: " + ", ".join(sorted(sick))
        return True, "ok"


class StartupError(Exception):
    """A fault found while the gateway starts, as one line naming the file and the key."""


# SIGTERM/SIGINT stop, SIGHUP reloads the configuration, REREAD_SIGNAL (SIGUSR1: a dead letter
# was replayed) makes the router read the journal again.
_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, REREAD_SIGNAL)


def _first_of(error: BaseException, kind: type[_E]) -> _E | None:
    """The first ``kind`` exception in ``error`` or its (nested) exception groups."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = _first_of(inner, kind)
            if found is not None:
                return found
    return None


async def run_gateway(config: Config, *, reset: bool = False) -> int:
    """Run until SIGTERM/SIGINT; systemd is told READY, STATUS, WATCHDOG and STOPPING.

    Holds the state directory's run lock for its whole life, taken before the journal is opened
    (a second gateway there raises :class:`~gateway.statedir.AlreadyRunning`); ``reset`` lets a
    lost journal be re-created. Raises :class:`StartupError` or
    :class:`~gateway.store.StoreError` for faults found while starting.
    """
    notifier = Notifier.from_environ()
    state_dir = config.push.state_dir
    source = config.source or Path("the configuration")
    # Signals are caught from before the lock is taken: its pid is what `dead-letters replay`
    # signals, and REREAD_SIGNAL's default action would end the process.
    with trio.open_signal_receiver(*_SIGNALS) as signals:
        lock = await trio.to_thread.run_sync(acquire_run_lock, state_dir)
        try:
            store = await trio.to_thread.run_sync(
                partial(Store.open, state_dir, journal=config.journal, reset=reset)
            )
            try:
                gateway = Gateway(config, store=store)
            except BaseException:
                store.close()
                raise
            try:
                await _run(gateway, notifier, signals, state_dir)
            except BaseException as error:
                listen = _first_of(error, ListenError)
                if listen is None:
                    raise
                raise StartupError(f"{source}: status.listen: {listen}") from None
            finally:
                statedir.remove_status_address(state_dir)
                gateway.close()
        finally:
            lock.release()
    return 0


async def _run(
    gateway: Gateway,
    notifier: Notifier,
    signals: AsyncIterator[int],
    state_dir: Path,
) -> None:
    config = gateway.config
    async with trio.open_nursery() as nursery:
        await nursery.start(gateway.run)
        if gateway.status_address is not None:
            try:
                statedir.write_status_address(state_dir, gateway.status_address)
            except OSError as exc:  # a full disk: `fieldgate status` with port 0 cannot find it
                log.warning("cannot record the status address: %s", exc.strerror or exc)
        notifier.ready(f"running {len(config.routes)} route(s)")
        log.info("fieldgate %s running: %d route(s)", __version__, len(config.routes))
        watchdog = Watchdog(notifier, watchdog_interval())
        if watchdog.enabled and watchdog.period:
            # Only under a systemd watchdog does the process wake up on a timer of its own:
            # idle, the keepalive is the only other wake-up.
            nursery.start_soon(_heartbeat, gateway, notifier, watchdog, watchdog.period)
        async for signum in signals:
            if signum == signal.SIGHUP:
                _reload(gateway, notifier)
                continue
            if signum == REREAD_SIGNAL:
                log.info("%s: reading the journal again", signal.Signals(signum).name)
                gateway.router.notify()
                continue
            log.info("%s: stopping", signal.Signals(signum).name)
            notifier.stopping()
            break
        # Everything stops at once; on the way out the router records the deliveries that were
        # confirmed and the journal the acknowledgements (both shielded). A delivery still
        # awaiting its confirmation is sent again after the restart (at least once).
        nursery.cancel_scope.cancel()


def _reload(gateway: Gateway, notifier: Notifier) -> None:
    """SIGHUP: read the configuration file again and apply what can be applied live."""
    source = gateway.config.source
    if source is None:
        log.warning("SIGHUP: no configuration file to reload")
        return
    notifier.reloading()
    try:
        new = load_config(source)
        for warning in new.warnings:
            log.warning("%s", warning)
        for note in gateway.reload(new):
            log.warning("reload: %s", note)
    except (ConfigError, ValueError) as exc:
        # A broken file never stops a running gateway: it keeps the configuration it has.
        for line in str(exc).splitlines():
            log.error("reload refused: %s", line)
    notifier.ready(f"running {len(gateway.config.routes)} route(s)")


async def _heartbeat(
    gateway: Gateway, notifier: Notifier, watchdog: Watchdog, period: float
) -> None:
    # Runs in the same trio loop as everything else: if the loop is stuck this task is too,
    # progress stops and the pings stop with it. STATUS= is refreshed on the same tick.
    last_status = ""
    while True:
        watchdog.progress()
        watchdog.tick()
        ok, reason = gateway.health()
        text = "ok" if ok else reason
        if text != last_status:
            notifier.status(text)
            last_status = text
        await trio.sleep(period)
