"""systemd notifications (sd_notify(3)) written against the protocol, without libsystemd.

A notification is one datagram of ``KEY=VALUE`` lines sent to the ``AF_UNIX`` socket named by
``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). Outside systemd the
variable is unset and every call is a no-op. Sending never raises: a lost notification must not
take the gateway down (systemd notices missing READY or WATCHDOG by itself).

:class:`Watchdog` pings ``WATCHDOG=1`` only while the main loop reports progress, so a stuck loop
lets ``WatchdogSec=`` expire and systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import trio

from fieldgate_common.logs import get_logger

log = get_logger("sdnotify")

# systemd accepts STATUS= lines of any length, but `systemctl status` shows one terminal line;
# longer texts only cost journal space.
MAX_STATUS_CHARS = 200
# Ping at half the watchdog interval, as sd_watchdog_enabled(3) recommends, so one late
# wake-up does not kill the service.
WATCHDOG_PING_FRACTION = 0.5


def _socket_address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # abstract namespace
    if value.startswith("/"):
        return value
    return None  # systemd only ever sets these two forms (vsock: is not used here)


class Notifier:
    """Sends notifications to one socket; a no-op when ``address`` is None."""

    def __init__(self, address: str | None) -> None:
        self._address = _socket_address(address) if address else None
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier for ``$NOTIFY_SOCKET`` (a no-op one when unset)."""
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        """Whether notifications go anywhere."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; True when it was sent."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                # Never block the event loop: a full receive queue means systemd is overloaded,
                # and dropping one notification is the right answer.
                sock.sendto(message, socket.MSG_DONTWAIT, self._address)
        except OSError as exc:
            if not self._warned:  # once: a broken socket would otherwise flood the log
                log.warning("cannot notify systemd: %s", exc.strerror or type(exc).__name__)
                self._warned = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: configuration valid, store open, serving."""
        return self.notify("READY=1", *([_status_line(status)] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=``: one line for ``systemctl status``."""
        return self.notify(_status_line(text))

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: the service is alive."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """``STOPPING=1``: shutting down (draining)."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """``RELOADING=1`` with ``MONOTONIC_USEC`` (required by ``Type=notify-reload``); send
        :meth:`ready` when the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def extend_timeout(self, seconds: float) -> bool:
        """``EXTEND_TIMEOUT_USEC``: ask for more time to start or stop."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")


def _status_line(text: str) -> str:
    line = " ".join(text.split())  # one line: a newline would start a new assignment
    return "STATUS=" + line[:MAX_STATUS_CHARS]


def watchdog_interval(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """``WatchdogSec=`` in seconds when it applies to this process, else None.

    Mirrors sd_watchdog_enabled(3): ``WATCHDOG_USEC`` must be a positive integer, and when
    ``WATCHDOG_PID`` is set it must be this process.
    """
    env = os.environ if environ is None else environ
    usec_text = env.get("WATCHDOG_USEC", "")
    if not usec_text.isdigit() or int(usec_text) == 0:
        return None
    pid_text = env.get("WATCHDOG_PID")
    if pid_text is not None and pid_text != str(os.getpid() if pid is None else pid):
        return None
    return int(usec_text) / 1_000_000


class Watchdog:
    """Pings ``WATCHDOG=1`` every ``interval * WATCHDOG_PING_FRACTION`` seconds, but only when
    :meth:`progress` was called since the previous ping.

    The main loop calls :meth:`progress` each time it completes a pass (it must wake at least
    once per :attr:`period`, e.g. with a timer); if it gets stuck the pings stop and systemd
    kills and restarts the service after ``WatchdogSec=``.
    """

    def __init__(self, notifier: Notifier, interval: float | None) -> None:
        self._notifier = notifier
        self._interval = interval
        self._progress = 0
        self._seen = 0
        self._withheld = False

    @classmethod
    def from_environ(cls, notifier: Notifier, environ: Mapping[str, str] | None = None) -> Watchdog:
        """A watchdog for this process's ``WATCHDOG_USEC`` (inactive when unset)."""
        return cls(notifier, watchdog_interval(environ))

    @property
    def enabled(self) -> bool:
        """Whether systemd expects pings."""
        return self._interval is not None and self._notifier.enabled

    @property
    def period(self) -> float | None:
        """Seconds between pings; the main loop must call :meth:`progress` more often."""
        return None if self._interval is None else self._interval * WATCHDOG_PING_FRACTION

    def progress(self) -> None:
        """The main loop made progress (cheap: call it on every pass)."""
        self._progress += 1

    def tick(self) -> bool:
        """Ping if progress was made since the last tick; True when it pinged (no waiting)."""
        if self._progress == self._seen:
            if not self._withheld:
                log.warning("main loop made no progress; withholding the watchdog ping")
                self._withheld = True
            return False
        self._seen = self._progress
        self._withheld = False
        return self._notifier.watchdog()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick every :attr:`period` until cancelled; returns at once when not enabled."""
        task_status.started()
        period = self.period
        if period is None or not self._notifier.enabled:
            return
        while True:
            await trio.sleep(period)
            self.tick()
