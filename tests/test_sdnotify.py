"""sd_notify against a real AF_UNIX datagram socket (path and abstract), and the progress-gated
watchdog."""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from fieldgate_common.sdnotify import MAX_STATUS_CHARS, Notifier, Watchdog, watchdog_interval


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """The receiving end systemd would hold, bound to a path."""
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    yield sock, path
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket."""
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_each_notification_is_one_datagram(systemd_socket):
    sock, path = systemd_socket
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("serving 3 routes")
    assert notifier.status("reconnecting in 4s")
    assert notifier.watchdog()
    assert notifier.stopping()
    assert notifier.reloading()
    assert notifier.extend_timeout(12.5)
    messages = received(sock)
    assert messages[:5] == [
        "READY=1\nSTATUS=serving 3 routes",
        "STATUS=reconnecting in 4s",
        "WATCHDOG=1",
        "STOPPING=1",
        messages[4],
    ]
    reloading, usec = messages[4].split("\n")
    assert reloading == "RELOADING=1"
    monotonic_usec = int(usec.removeprefix("MONOTONIC_USEC="))
    assert 0 < monotonic_usec <= time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert messages[5] == "EXTEND_TIMEOUT_USEC=12500000"


def test_status_is_one_bounded_line(systemd_socket):
    sock, path = systemd_socket
    notifier = Notifier(path)
    notifier.status("first line\nREADY=1\n" + "x" * 1000)
    (message,) = received(sock)
    assert "\n" not in message  # a newline would smuggle in a READY=1
    assert message.startswith("STATUS=first line READY=1 xxx")
    assert len(message) == len("STATUS=") + MAX_STATUS_CHARS


def test_abstract_namespace_socket():
    name = f"fieldgate-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert Notifier("@" + name).ready()
        assert sock.recv(100) == b"READY=1"


def test_outside_systemd_everything_is_a_no_op():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert not notifier.watchdog()
    assert not Notifier.from_environ({"NOTIFY_SOCKET": "relative/path"}).enabled


def test_a_vanished_socket_is_reported_not_raised(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    assert not notifier.ready()
    assert not notifier.watchdog()
    warnings = [r for r in caplog.records if "cannot notify systemd" in r.getMessage()]
    assert len(warnings) == 1  # once, not once per ping


def test_watchdog_interval_follows_sd_watchdog_enabled():
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "77"}, pid=77) == 30.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "78"}, pid=77) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "-5"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_tick_pings_only_after_progress(systemd_socket):
    sock, path = systemd_socket
    watchdog = Watchdog(Notifier(path), interval=30.0)
    assert watchdog.enabled and watchdog.period == 15.0
    assert not watchdog.tick()  # no progress yet
    watchdog.progress()
    watchdog.progress()
    assert watchdog.tick()
    assert not watchdog.tick()  # nothing new since the last ping
    watchdog.progress()
    assert watchdog.tick()
    assert received(sock) == ["WATCHDOG=1", "WATCHDOG=1"]


async def test_pings_stop_when_the_main_loop_is_stuck(systemd_socket, autojump_clock):
    sock, path = systemd_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    watchdog = Watchdog.from_environ(Notifier.from_environ(env), env)
    assert watchdog.period == 1.0
    stuck = trio.Event()
    trio_sock = trio.socket.from_stdlib_socket(sock)
    pings: list[float] = []

    async def main_loop() -> None:
        for _ in range(20):  # healthy for 5 s: a pass every 0.25 s
            watchdog.progress()
            await trio.sleep(0.25)
        stuck.set()
        await trio.sleep_forever()  # e.g. blocked on a lock that is never released

    async def systemd() -> None:
        while True:
            assert await trio_sock.recv(100) == b"WATCHDOG=1"
            pings.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
        nursery.start_soon(main_loop)
        nursery.start_soon(systemd)
        await stuck.wait()
        stuck_at = trio.current_time()
        await trio.sleep(10 * watchdog.period)
        nursery.cancel_scope.cancel()
    assert len(pings) >= 4
    # Pinged every period while healthy ...
    assert all(b - a == pytest.approx(watchdog.period) for a, b in itertools.pairwise(pings))
    # ... and never more than one period after the last progress.
    assert pings[-1] <= stuck_at + watchdog.period


async def test_watchdog_without_systemd_returns_at_once(autojump_clock):
    watchdog = Watchdog.from_environ(Notifier.from_environ({}), {})
    assert not watchdog.enabled and watchdog.period is None
    before = trio.current_time()
    async with trio.open_nursery() as nursery:
        await nursery.start(watchdog.run)
    assert trio.current_time() == before  # returned without sleeping
