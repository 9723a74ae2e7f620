"""The serial adapter: delivers messages to a microcontroller over the fieldgate serial link.

I/O choice: pyserial only opens and configures the port (baud, parity, RTS/CTS, RS-485); the
bytes then move through its file descriptor in non-blocking mode with
``trio.lowlevel.wait_readable``/``wait_writable``. No thread is involved, so cancellation is
immediate and a dead port (an unplugged USB adapter, a pty whose other end died) cannot hang
shutdown the way a worker thread stuck in a blocking ``read`` could; an unplug shows up as
``OSError``/EOF on the fd and the port is re-opened with backoff. This needs a POSIX fd, which
every gateway we target (Linux) has.
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import serial
import serial.rs485
import trio

from adapters import seriallink as sl
from adapters.base import (
    Adapter,
    Delivered,
    Expired,
    Health,
    Message,
    Outcome,
    Rejected,
    RetryLater,
    TargetConfig,
)
from adapters.envelope import payload_for
from adapters.serial_config import SerialAdapterConfig, SerialTarget
from fieldgate_common.backoff import full_jitter
from fieldgate_common.logs import get_logger
from fieldgate_common.metrics import Metrics

log = get_logger("serial")

READ_CHUNK = 4096
# The device's MCU budget for turning a frame round (ISR, CRC, callback): ecosystem.md §3.3.
MCU_BUDGET = 0.020
MIN_ACK_TIMEOUT = 0.050
BITS_PER_BYTE = {"none": 10, "even": 11, "odd": 11}  # start + 8 data + parity + stop


def derived_ack_timeout(config: SerialAdapterConfig) -> float:
    """RTO = max(50 ms, 3 x the time of a largest frame + the MCU budget) (ecosystem.md §3.3)."""
    if config.ack_timeout is not None:
        return config.ack_timeout
    bits = BITS_PER_BYTE[config.parity] + (config.stop_bits - 1)
    frame_time = sl.MAX_WIRE * bits / config.baud
    return max(MIN_ACK_TIMEOUT, 3 * frame_time + MCU_BUDGET)


@dataclass
class _Pending:
    """The one delivery in flight: its link message id and, once known, its outcome."""

    mid: int
    done: trio.Event = field(default_factory=trio.Event)
    outcome: Outcome | None = None


class PortGone(Exception):
    """The port stopped working (unplugged, device end closed)."""


def _reason(exc: BaseException) -> str:
    """An open failure in a few words: the OS's reason when there is one."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.errno:
        return os.strerror(exc.errno)  # pyserial's own text repeats the path twice
    return str(exc) or type(exc).__name__


class SerialAdapter(Adapter):
    """One serial port with one device on it; deliveries are serialised (stop-and-wait)."""

    def __init__(self, config: SerialAdapterConfig, *, metrics: Metrics | None = None) -> None:
        self.name = config.name
        self.config = config
        self.ack_timeout = derived_ack_timeout(config)
        self._link: sl.LinkEndpoint | None = None
        self._fd: int | None = None
        self._lock = trio.Lock()  # one delivery at a time (stop-and-wait)
        self._write_lock = trio.Lock()
        self._link_up = trio.Event()
        self._wake_timer = trio.Event()
        self._pending: _Pending | None = None
        self._state = "starting"
        self._detail = ""
        self._since = time.time()
        self._counters: dict[str, int] = {}
        self._metrics = metrics
        if metrics is not None:
            self._m_frames = metrics.counter(
                "fieldgate_serial_events_total",
                "Serial link events by adapter and kind.",
                ("adapter", "event"),
            )

    # -- Adapter interface ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open, serve and re-open the port until cancelled."""
        task_status.started()
        failures = 0
        while True:
            try:
                port = self._open_port()
            except (OSError, serial.SerialException, ValueError) as exc:
                if self._state != "port missing":
                    # Once when it goes missing (every retry would flood the log), once more
                    # when it comes back.
                    log.warning(
                        "%s: serial port %s cannot be opened (%s); retrying until it can",
                        self.name,
                        self.config.port,
                        _reason(exc),
                    )
                self._set_state("port missing", str(exc))
                failures += 1
            else:
                if self._state in ("port missing", "port lost"):
                    log.info("%s: serial port %s is back", self.name, self.config.port)
                try:
                    await self._serve(port)
                    failures = 0
                except* PortGone as group:  # raised inside _serve's nursery
                    reason = str(group.exceptions[0])
                    log.warning(
                        "%s: serial port %s lost (%s); re-opening",
                        self.name,
                        self.config.port,
                        reason,
                    )
                    self._set_state("port lost", reason)
                    failures = 1
                finally:
                    self._close(port)
            # full jitter: a fleet of gateways must not hammer re-enumerating ports in step
            cfg = self.config
            delay = full_jitter(failures, cfg.reopen_base, cfg.reopen_cap, random.random)
            await trio.sleep(delay if failures else cfg.reopen_base)

    async def deliver(self, message: Message, target: TargetConfig) -> Outcome:
        """Send one message and wait for the device's application acknowledgement."""
        form = target.payload if isinstance(target, SerialTarget) else "envelope"
        payload = payload_for(message, form)
        mid = sl.message_id(message.id)
        async with self._lock:
            wait_for_link = self.ack_timeout * self.config.max_tries
            with trio.move_on_after(wait_for_link):
                await self._link_up.wait()
            link = self._link
            if link is None or not self._link_up.is_set() or link.device is None:
                return RetryLater(f"serial link {self.name} is {self._state}")
            if not link.device.accepts(len(payload)):
                return Rejected(
                    f"{len(payload)} bytes exceed device {link.device.device_id!r}'s "
                    f"{link.device.max_message}-byte message buffer"
                )
            pending = self._pending = _Pending(mid)
            try:
                async with self._write_lock:
                    # A port that does not take bytes now (a device that stopped reading) would
                    # hold the frame in its buffer past the deadline: wait for room first, so
                    # that the deadline is the last thing checked before the bytes go out; and
                    # not for ever, the link's own frames need the port too.
                    with trio.move_on_after(wait_for_link) as waited:
                        await self._until_writable()
                    if waited.cancelled_caught:
                        return RetryLater(f"serial port {self.config.port} takes no bytes")
                    now = time.time()
                    if message.expired(now):
                        return Expired("expired before it reached the device")
                    clock = trio.current_time()
                    deadline = None
                    if message.expires_at is not None:
                        deadline = clock + (message.expires_at - now)  # on the link's clock
                    events = link.send_message(mid, payload, clock, deadline=deadline)
                    await self._write_out()
                if self._handle(link, events):
                    raise PortGone("link down")
                self._poke_timer()
                await pending.done.wait()
            except (sl.LinkError, PortGone) as exc:
                return RetryLater(f"serial link {self.name}: {exc}")
            finally:
                self._pending = None
            assert pending.outcome is not None
            return pending.outcome

    def health(self) -> Health:
        """The link state, the device's identity and the link counters."""
        counters = dict(self._counters)
        if self._link is not None:
            counters.update(self._link.counters)
        device = self._link.device if self._link is not None else None
        detail = self._detail
        if device is not None and self._state == "connected":
            detail = f"device {device.device_id} firmware {device.firmware}"
        return Health(self._state == "connected", self._state, detail, self._since, counters)

    # -- the port -------------------------------------------------------------------------------

    def _open_port(self) -> Any:
        cfg = self.config
        port = serial.Serial()
        port.port = cfg.port
        port.baudrate = cfg.baud
        port.parity = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN}.get(
            cfg.parity, serial.PARITY_ODD
        )
        port.stopbits = serial.STOPBITS_ONE if cfg.stop_bits == 1 else serial.STOPBITS_TWO
        port.rtscts = cfg.rtscts
        port.xonxoff = False  # never with binary frames (ecosystem.md §3.1)
        if cfg.rs485:
            port.rs485_mode = serial.rs485.RS485Settings(
                rts_level_for_tx=cfg.rs485_rts_level_for_tx,
                rts_level_for_rx=not cfg.rs485_rts_level_for_tx,
                delay_before_tx=cfg.rs485_delay_before_tx,
                delay_before_rx=cfg.rs485_delay_before_rx,
            )
        port.open()
        os.set_blocking(port.fileno(), False)
        return port

    def _close(self, port: Any) -> None:
        fd, self._fd = self._fd, None
        self._link = None
        self._link_up = trio.Event()
        self._fail_pending(RetryLater(f"serial port {self.config.port} closed"))
        if fd is not None:
            # A delivery waiting for the port to take bytes would wait for ever on a closed fd
            # (epoll forgets it): wake it first (ClosedResourceError, a lost port).
            trio.lowlevel.notify_closing(fd)
        with contextlib.suppress(OSError, serial.SerialException):
            port.close()  # the port may already be gone; nothing left to release

    async def _serve(self, port: Any) -> None:
        self._fd = port.fileno()
        link = sl.LinkEndpoint(
            ack_timeout=self.ack_timeout,
            max_tries=self.config.max_tries,
            ping_interval=self.config.ping_interval,
        )
        self._link = link
        self._set_state("handshake", f"HELLO sent on {self.config.port}")
        link.open(trio.current_time())
        await self._flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._timer_loop, link)
            await self._read_loop(link)
            nursery.cancel_scope.cancel()

    async def _read_loop(self, link: sl.LinkEndpoint) -> None:
        fd = self._fd
        assert fd is not None
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            except OSError as exc:
                raise PortGone(f"read failed: {exc}") from exc
            if not data:
                raise PortGone("end of file on the port")
            if self._handle(link, link.receive_data(data, trio.current_time())):
                return
            await self._flush()
            self._poke_timer()

    async def _timer_loop(self, link: sl.LinkEndpoint) -> None:
        while True:
            deadline = link.next_deadline()
            wake = self._wake_timer
            with trio.move_on_at(deadline if deadline is not None else float("inf")):
                await wake.wait()
            if wake.is_set():
                self._wake_timer = trio.Event()
                continue
            if self._handle(link, link.timer_expired(trio.current_time())):
                raise PortGone("link down")
            await self._flush()

    def _poke_timer(self) -> None:
        self._wake_timer.set()

    async def _flush(self) -> None:
        async with self._write_lock:
            await self._write_out()

    async def _until_writable(self) -> None:
        if self._fd is None:
            raise PortGone("port closed")
        try:
            await trio.lowlevel.wait_writable(self._fd)
        except trio.ClosedResourceError:
            raise PortGone("port closed") from None

    async def _write_out(self) -> None:
        # Under _write_lock: one task at a time writes (frames never interleave) and waits on
        # the fd (trio allows one waiter per fd).
        link, fd = self._link, self._fd
        if link is None or fd is None:
            raise PortGone("port closed")
        data = memoryview(link.data_to_send())
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(fd)
                except trio.ClosedResourceError:
                    raise PortGone("port closed") from None
                continue
            except OSError as exc:
                raise PortGone(f"write failed: {exc}") from exc
            data = data[n:]

    # -- events -> outcomes ---------------------------------------------------------------------

    def _handle(self, link: sl.LinkEndpoint, events: list[sl.Event]) -> bool:
        """Apply link events; True when the link went down and the port should be re-opened."""
        down = False
        for event in events:
            self._count(type(event).__name__)
            if isinstance(event, sl.LinkUp):
                self._set_state("connected", "")
                log.info(
                    "%s: link up, device %s firmware %s, frame %d, message %d bytes",
                    self.name,
                    event.device.device_id,
                    event.device.firmware,
                    event.device.max_payload,
                    event.device.max_message,
                )
                self._link_up.set()
            elif isinstance(event, sl.DeviceRebooted):
                log.warning("%s: device rebooted; link re-handshaking", self.name)
                self._link_up = trio.Event()
                self._set_state("handshake", "device rebooted")
            elif isinstance(event, sl.MessageAcknowledged):
                self._resolve(event.mid, Delivered("device acknowledged"))
            elif isinstance(event, sl.MessageRefused):
                reason = f"device refused: code {event.code:#04x} {event.reason}".rstrip()
                transient = event.code == sl.RefuseCode.BUSY
                self._resolve(event.mid, RetryLater(reason) if transient else Rejected(reason))
            elif isinstance(event, sl.MessageFailed):
                self._resolve(event.mid, RetryLater(event.reason))
            elif isinstance(event, sl.MessageExpired):
                self._resolve(
                    event.mid,
                    Expired(
                        "its deadline passed before the device acknowledged it (no frame is "
                        f"sent after it; {event.sent_fragments} fragment(s) went out before)"
                    ),
                )
            elif isinstance(event, sl.LinkDown):
                log.warning("%s: link down: %s", self.name, event.reason)
                self._set_state("link down", event.reason)
                down = True
        return down

    def _resolve(self, mid: int, outcome: Outcome) -> None:
        pending = self._pending
        if pending is not None and pending.mid == mid and not pending.done.is_set():
            pending.outcome = outcome
            pending.done.set()

    def _fail_pending(self, outcome: Outcome) -> None:
        pending = self._pending
        if pending is not None and not pending.done.is_set():
            pending.outcome = outcome
            pending.done.set()

    def _set_state(self, state: str, detail: str) -> None:
        if state != self._state:
            self._since = time.time()
        self._state, self._detail = state, detail

    def _count(self, event: str) -> None:
        self._counters[event] = self._counters.get(event, 0) + 1
        if self._metrics is not None:
            self._m_frames.inc(adapter=self.name, event=event)
