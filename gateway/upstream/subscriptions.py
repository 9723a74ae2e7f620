"""The one owner of subscriptions: one per route, created on the current connection, removed
when a reload drops the route, created again when the service drops them (an expired set, a
new uaid), and distributed to each route's ``distribute_url``.

The protocol part (a POST to the service, an autopush ``register``) is the connection's
(:meth:`~gateway.upstream.contract.Connection.subscribe`); the keys, the record in the journal,
the key index of the ingest path and the distribution are here.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import trio

from fieldgate_common.backoff import Backoff
from fieldgate_common.logs import get_logger
from gateway.config import RouteConfig
from gateway.http1 import HttpError, post_json
from gateway.ingest import Ingestor
from gateway.routes import CurrentRoutes
from gateway.store import Store, SubscriptionRecord
from gateway.upstream.contract import (
    SERVICE_KEY,
    SERVICE_STATE_KEYS,
    Connection,
    NewSubscription,
)
from gateway.upstream.instruments import UpstreamInstruments
from gateway.webpush.crypto import PushSubscriptionInfo, SubscriptionKeys

log = get_logger("subscriptions")

# Distribution of push resources: retried with backoff between these bounds until accepted.
DISTRIBUTE_BACKOFF_BASE = 5.0
DISTRIBUTE_BACKOFF_CAP = 3600.0
# A failed subscribe is retried no sooner than this (or the service's Retry-After).
SUBSCRIBE_RETRY_FLOOR = 1.0


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def info_of(record: SubscriptionRecord) -> PushSubscriptionInfo:
    """A subscription's W3C PushSubscription (what an application server is given)."""
    keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
    return PushSubscriptionInfo(record.push_url, keys.p256dh, keys.auth_secret)


class Subscriptions:
    """Creates, removes, re-creates and distributes the routes' subscriptions."""

    def __init__(
        self,
        store: Store,
        routes: CurrentRoutes,
        ingestor: Ingestor,
        instruments: UpstreamInstruments,
        *,
        ca_file: Path | None,
        backoff_base: float,
        backoff_cap: float,
        healthy_after: float,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._routes = routes
        self._ingestor = ingestor
        self._m = instruments
        self._ca_file = ca_file
        self._rng = rng or random.Random()
        self._healthy_after = healthy_after
        self._lock = trio.Lock()
        self._retry_wanted = trio.Event()
        self._retry_after = 0.0
        self._connection: Connection | None = None
        self._distribute_wanted = trio.Event()
        self._last_loss: float | None = None
        self._loss_backoff = Backoff(backoff_base, backoff_cap, rng=self._rng)
        self.last_error: str | None = None
        # Subscribed on a previous run and never distributed: try again now.
        if any(rec.distributed_at is None for rec in store.subscriptions()):
            self._distribute_wanted.set()

    # -- what there is

    def records(self) -> list[SubscriptionRecord]:
        """Every subscription, by route name (from memory)."""
        return self._store.subscriptions()

    def record(self, route: str) -> SubscriptionRecord | None:
        """The subscription of ``route``, if it has one."""
        return self._ingestor.record(route)

    def infos(self) -> dict[str, PushSubscriptionInfo]:
        """Each subscribed route's W3C PushSubscription."""
        return {record.route: info_of(record) for record in self.records()}

    # -- keeping them in step with the route table

    async def adopt_service(self, service: str) -> None:
        """Subscriptions belong to the push service that made them: when ``[push] service``
        names another one, forget them (and the service's other state) so that every route is
        subscribed anew there."""
        stored = self._store.upstream_value(SERVICE_KEY)
        if stored == service:
            return
        records = self.records()
        if stored is not None and records:
            log.warning(
                "the push service changed (%s -> %s): subscribing every route again; "
                "application servers need the new push resources",
                _origin(stored),
                _origin(service),
            )
            for record in records:
                await trio.to_thread.run_sync(self._store.delete_subscription, record.route)
                self._ingestor.remove(record.route)
        forget: dict[str, str | None] = {key: None for key in SERVICE_STATE_KEYS}
        await trio.to_thread.run_sync(
            self._store.set_upstream_values, {**forget, SERVICE_KEY: service}
        )

    async def sync(self, connection: Connection) -> None:
        """Make the subscriptions match the route table, on ``connection``: unsubscribe the
        routes that are gone, subscribe the new ones. Failures are retried by :meth:`run`."""
        self._connection = connection
        async with self._lock:
            if not connection.usable:
                return
            wanted = {route.name: route for route in self._routes.table}
            for record in self.records():
                if record.route not in wanted:
                    await self._unsubscribe(connection, record)
            retry: float | None = None
            for name, route in wanted.items():
                if self._ingestor.record(name) is None and connection.usable:
                    delay = await self._subscribe(connection, route)
                    if delay is not None:
                        retry = delay if retry is None else min(retry, delay)
        if retry is not None:
            self._retry_after = retry
            self._retry_wanted.set()

    def detach(self, connection: Connection) -> None:
        """``connection`` is gone: nothing more is subscribed on it."""
        if self._connection is connection:
            self._connection = None

    def reconfigured(self) -> None:
        """The route table was replaced: sync on the current connection, distribute."""
        self._retry_after = 0.0
        self._retry_wanted.set()
        self._distribute_wanted.set()

    async def lost(self, which: Callable[[SubscriptionRecord], bool], reason: str) -> None:
        """The service dropped these subscriptions: forget them, create new ones."""
        # A service whose subscriptions keep disappearing must not make us re-subscribe in a
        # tight loop: back off unless the previous ones lived a healthy while.
        now = time.monotonic()
        if self._last_loss is not None and now - self._last_loss < self._healthy_after:
            delay = self._loss_backoff.next_delay()
            log.warning(
                "subscriptions keep being lost (%s): re-subscribing in %.1f s", reason, delay
            )
            await trio.sleep(delay)
        else:
            self._loss_backoff.reset()
        self._last_loss = time.monotonic()
        async with self._lock:
            gone = [record for record in self.records() if which(record)]
            for record in gone:
                await trio.to_thread.run_sync(self._store.delete_subscription, record.route)
                self._ingestor.remove(record.route)
            if gone:
                log.warning("%s: %d subscription(s) to create again", reason, len(gone))
        connection = self._connection
        if connection is not None:
            await self.sync(connection)

    async def run(self) -> None:
        """Retry failed subscribes (and syncs after a reload) until cancelled."""
        while True:
            await self._retry_wanted.wait()
            self._retry_wanted = trio.Event()
            delay = self._retry_after
            if delay > 0:
                await trio.sleep(delay * (1 + self._rng.random()))  # jitter: not in step
            connection = self._connection
            if connection is not None and connection.usable:
                await self.sync(connection)

    # -- one subscription

    async def _subscribe(self, connection: Connection, route: RouteConfig) -> float | None:
        """Create ``route``'s subscription; None when done, else the delay before a retry."""
        result = await connection.subscribe(route, self.records())
        if not isinstance(result, NewSubscription):
            log.warning("route %s: subscribing failed: %s", route.name, result.reason)
            self.last_error = f"subscribe {route.name}: {result.reason}"
            return max(SUBSCRIBE_RETRY_FLOOR, result.retry_after or 0.0)
        keys = SubscriptionKeys.generate()
        record = SubscriptionRecord(
            route=route.name,
            subscription_url=result.subscription_url,
            push_url=result.push_url,
            set_url=result.set_url,
            private_key_der=keys.private_bytes(),
            auth_secret=keys.auth_secret,
            created_at=time.time(),
        )
        await trio.to_thread.run_sync(self._store.save_subscription, record)
        self._ingestor.add(record)
        self._m.subscribes.inc(route=route.name)
        self._distribute_wanted.set()
        log.info("route %s subscribed", route.name)
        return None

    async def _unsubscribe(self, connection: Connection, record: SubscriptionRecord) -> None:
        if await connection.unsubscribe(record):
            await trio.to_thread.run_sync(self._store.delete_subscription, record.route)
            self._ingestor.remove(record.route)
            log.info("route %s removed from the configuration: unsubscribed", record.route)

    # -- distribution

    async def run_distributor(self) -> None:
        """POST each new push resource to its route's ``distribute_url``, with retries."""
        backoff = Backoff(DISTRIBUTE_BACKOFF_BASE, DISTRIBUTE_BACKOFF_CAP, rng=self._rng)
        while True:
            await self._distribute_wanted.wait()
            self._distribute_wanted = trio.Event()
            routes = {route.name: route for route in self._routes.table}
            pending = [
                (routes[record.route], record)
                for record in self.records()
                if record.distributed_at is None
                and record.route in routes
                and routes[record.route].distribute_url
            ]
            failed = False
            for route, record in pending:
                if not await self._distribute(route, record):
                    failed = True
            if failed:
                await trio.sleep(backoff.next_delay())
                self._distribute_wanted.set()
            else:
                backoff.reset()

    async def _distribute(self, route: RouteConfig, record: SubscriptionRecord) -> bool:
        assert route.distribute_url
        body = json.dumps(info_of(record).to_json()).encode()
        try:
            response = await post_json(route.distribute_url, body, ca_file=self._ca_file)
        except HttpError as exc:
            log.warning("route %s: distributing its push resource failed: %s", route.name, exc)
            return False
        if not 200 <= response.status < 300:
            log.warning(
                "route %s: %s answered %d to its push resource",
                route.name,
                urlsplit(route.distribute_url).netloc,
                response.status,
            )
            return False
        current = self._ingestor.record(route.name)
        if current is not None and current.push_url == record.push_url:
            updated = replace(current, distributed_at=time.time())
            await trio.to_thread.run_sync(self._store.save_subscription, updated)
            self._ingestor.add(updated)
        log.info("route %s: push resource distributed", route.name)
        return True
