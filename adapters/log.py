"""The ``log`` adapter: each delivery becomes one line in the gateway's log or in a file.

It needs no hardware and no broker, so the demo and the tests use it. The gateway's log gets
only the message id, route and size (payloads never go to a log); a file, which stands in for a
device, gets one JSON object per line with the payload (UTF-8 text as ``body``, anything else as
``body_b64``). The file is created 0600: it holds plaintext.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import IO

import trio

from adapters.base import (
    Adapter,
    Delivered,
    Health,
    Message,
    Outcome,
    Rejected,
    RetryLater,
    TargetConfig,
)
from adapters.envelope import payload_for
from adapters.log_config import LogAdapterConfig, LogTarget
from fieldgate_common.logs import get_logger
from fieldgate_common.metrics import Metrics

log = get_logger("adapter.log")

# A file that cannot be opened is tried again after 1 s, doubling up to a minute.
REOPEN_BASE = 0.5
REOPEN_CAP = 60.0


def delivery_line(message: Message, payload: bytes) -> str:
    """The JSON line a file target receives for one message (newline included)."""
    record: dict[str, object] = {
        "id": message.id,
        "route": message.route,
        "received_at": message.received_at,
        "expires_at": message.expires_at,
        "bytes": len(payload),
    }
    try:
        record["body"] = payload.decode("utf-8")
    except UnicodeDecodeError:
        record["body_b64"] = base64.b64encode(payload).decode("ascii")
    return json.dumps(record, separators=(",", ":")) + "\n"


class LogAdapter(Adapter):
    """Writes deliveries to the log (``path`` unset) or appends them to a file."""

    def __init__(self, config: LogAdapterConfig, *, metrics: Metrics | None = None) -> None:
        self.name = config.name
        self._path = config.path
        self._file: IO[str] | None = None
        self._delivered = 0
        self._health = Health(ok=False, state="starting")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the file (if any) and hold it until cancelled.

        A file that cannot be opened (a directory, a missing directory: ``check-config`` and the
        start-up preflight catch these first) never stops the gateway: the adapter reports it in
        its health and the log, deliveries wait, and it tries again now and then.
        """
        try:
            if self._path is None:
                self._health = Health(ok=True, state="logging")
                task_status.started()
                await trio.sleep_forever()
            failures = 0
            while self._file is None:
                try:
                    self._file = await trio.to_thread.run_sync(_open_private, self._path)
                except OSError as exc:
                    reason = exc.strerror or str(exc)
                    if failures == 0:
                        log.error("%s: cannot open %s: %s", self.name, self._path, reason)
                        task_status.started()  # the gateway runs on; deliveries wait
                    self._health = Health(ok=False, state="cannot open", detail=reason)
                    failures += 1
                    await trio.sleep(min(REOPEN_CAP, REOPEN_BASE * 2 ** min(failures, 10)))
            if failures:
                log.info("%s: %s opened", self.name, self._path)
            self._health = Health(ok=True, state="appending", detail=str(self._path))
            if not failures:
                task_status.started()
            await trio.sleep_forever()
        finally:
            if self._file is not None:
                self._file.close()
                self._file = None

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        """Write one line; a file that cannot be written asks for a retry."""
        if not isinstance(target, LogTarget):
            return Rejected(f"log adapter {self.name} cannot deliver to {type(target).__name__}")
        payload = payload_for(message, target.payload)
        if self._path is None:
            log.info("route %s message %s: %d bytes", message.route, message.id, len(payload))
        else:
            if self._file is None:
                return RetryLater("file not open")
            try:
                # A line is a few hundred bytes into the page cache: cheaper than a thread hop.
                self._file.write(delivery_line(message, payload))
                self._file.flush()
            except OSError as exc:
                self._health = Health(ok=False, state="write failed", detail=exc.strerror or "")
                return RetryLater(f"write failed: {exc.strerror}")
        self._delivered += 1
        return Delivered()

    def health(self) -> Health:
        """State plus the number of deliveries."""
        h = self._health
        return Health(h.ok, h.state, h.detail, h.since, {"delivered": self._delivered})


def _open_private(path: Path) -> IO[str]:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    return os.fdopen(fd, "a", encoding="utf-8")


__all__ = ["LogAdapter", "delivery_line"]
