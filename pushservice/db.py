"""Runs the blocking store in worker threads, from trio: a small pool, timed and counted.

psycopg 3's async API is asyncio-only, so its blocking API runs in ``trio.to_thread`` workers,
at most ``threads`` at once (one database connection each). SQLite on disk gets one thread: it
has one writer anyway. SQLite in memory runs on the trio thread: there is no disk to wait on,
and a call (~50-300 µs) is cheaper than the hop to a thread and back (100-700 µs measured
here, depending on load). A call is never abandoned half-way: cancelling waits for the thread, so a
transaction either happened or did not.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import ParamSpec, TypeVar

import trio

from pushservice.metrics import ServiceMetrics
from pushservice.store import Store, StoreUnavailable

P = ParamSpec("P")
T = TypeVar("T")


class Database:
    """The store as trio code sees it: ``await db.call(store.method, ...)``."""

    def __init__(self, store: Store, *, threads: int, metrics: ServiceMetrics) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(threads)
        self._metrics = metrics
        self.up = True
        self.last_error = ""

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run one store method (in a worker thread unless in memory); StoreUnavailable if down."""
        started = time.perf_counter()
        try:
            if self.store.blocking_io:
                result = await trio.to_thread.run_sync(
                    partial(fn, *args, **kwargs), limiter=self._limiter
                )
            else:
                await trio.lowlevel.checkpoint()  # a call is a checkpoint either way
                result = fn(*args, **kwargs)
        except StoreUnavailable as exc:
            self._failed(str(exc))
            raise
        finally:
            self._metrics.store_seconds.observe(
                time.perf_counter() - started, operation=getattr(fn, "__name__", "call")
            )
            self._metrics.round_trips.set(self.store.round_trips)
        if not self.up:
            self.up = True
            self._metrics.store_up.set(1)
        return result

    def _failed(self, reason: str) -> None:
        self.up = False
        self.last_error = reason
        self._metrics.store_errors.inc()
        self._metrics.store_up.set(0)

    def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store method on the calling thread (inspection from tests and tools only)."""
        return fn(*args, **kwargs)
