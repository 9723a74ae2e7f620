"""SerialAdapter against the C device simulator over real pseudo-terminals."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgpack
import pytest
import trio

from adapters.base import Delivered, Expired, Message, Rejected, RetryLater
from adapters.serial import SerialAdapter
from adapters.serial_config import SerialAdapterConfig, SerialTarget
from adapters.seriallink import message_id
from fieldgate_common.metrics import Metrics
from tests.serial_sim import Simulator, point_symlink, start_simulator

ENVELOPE = SerialTarget(adapter="dev", payload="envelope")
RAW = SerialTarget(adapter="dev", payload="raw")


def config(port: Path, **overrides: object) -> SerialAdapterConfig:
    values: dict[str, object] = {
        "name": "dev",
        "port": str(port),
        "ack_timeout": 0.15,  # generous for 2 shared cores; the derived RTO is ~87 ms
        "max_tries": 8,
        "reopen_base": 0.05,
        "reopen_cap": 0.2,
        "ping_interval": 0.5,
    }
    values.update(overrides)
    return SerialAdapterConfig(**values)  # type: ignore[arg-type]


def message(i: int, body: bytes | None = None) -> Message:
    return Message(f"msg-{i}", "door", body if body is not None else b"m%05d" % i, 1.0e9, None)


def stop(sim: Simulator) -> None:
    """SIGSTOP the simulator and wait until it is stopped: the signal is asynchronous, and a
    simulator still running reads bytes that were meant to fill its buffer."""
    sim.proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{sim.proc.pid}/stat")
    deadline = time.monotonic() + 5
    # The state field follows the parenthesised command name.
    while stat.read_text().rpartition(")")[2].split()[0] != "T":
        assert time.monotonic() < deadline, "the simulator did not stop"
        time.sleep(0.001)


@pytest.fixture
def sims() -> Iterator[list[Simulator]]:
    started: list[Simulator] = []
    yield started
    for sim in started:
        sim.kill()


@asynccontextmanager
async def running(adapter: SerialAdapter) -> AsyncIterator[SerialAdapter]:
    async with trio.open_nursery() as nursery:
        await nursery.start(adapter.run)
        yield adapter
        nursery.cancel_scope.cancel()


def bodies(sim: Simulator) -> list[bytes]:
    return [msgpack.unpackb(env)["body"] for _, env in sim.processed()]


async def deliver_all(adapter: SerialAdapter, msgs: list[Message]) -> None:
    """Deliver in order like the router: retry each until Delivered."""
    for m in msgs:
        while True:
            outcome = await adapter.deliver(m, ENVELOPE)
            if isinstance(outcome, Delivered):
                break
            assert isinstance(outcome, RetryLater), outcome
            await trio.sleep(0.05)


async def test_every_message_delivered_once_and_in_order(tmp_path, sims):
    sim = start_simulator(tmp_path / "record")
    sims.append(sim)
    metrics = Metrics()
    msgs = [message(i) for i in range(60)]
    async with running(SerialAdapter(config(Path(sim.pty)), metrics=metrics)) as adapter:
        await deliver_all(adapter, msgs)
        health = adapter.health()
    assert bodies(sim) == [m.body for m in msgs]
    assert [mid for mid, _ in sim.processed()] == [message_id(m.id) for m in msgs]
    assert health.ok and health.state == "connected" and "fbsim" in health.detail
    assert 'event="MessageAcknowledged"' in metrics.render()


async def test_raw_payload_and_fragmentation(tmp_path, sims):
    sim = start_simulator(tmp_path / "record", ["--max-payload", "32"])
    sims.append(sim)
    big = bytes(range(256)) * 3  # 768 bytes: 28 fragments of 28 bytes
    async with running(SerialAdapter(config(Path(sim.pty)))) as adapter:
        assert isinstance(await adapter.deliver(message(1, big), RAW), Delivered)
    assert sim.processed() == [(message_id("msg-1"), big)]


async def test_noisy_line_loses_and_duplicates_nothing(tmp_path, sims):
    sim = start_simulator(
        tmp_path / "record", ["--drop", "0.05", "--corrupt", "0.05", "--seed", "7"]
    )
    sims.append(sim)
    msgs = [message(i) for i in range(80)]
    async with running(SerialAdapter(config(Path(sim.pty)))) as adapter:
        await deliver_all(adapter, msgs)
        counters = adapter.health().counters
    assert bodies(sim) == [m.body for m in msgs]
    assert counters.get("tx_retransmits", 0) > 0  # the noise was real


async def test_device_reboot_mid_stream(tmp_path, sims):
    # reboots after every 7th message, before its ACK leaves: the host must resend it and the
    # device must recognise it by id
    sim = start_simulator(tmp_path / "record", ["--reboot-after", "7"])
    sims.append(sim)
    msgs = [message(i) for i in range(30)]
    async with running(SerialAdapter(config(Path(sim.pty)))) as adapter:
        await deliver_all(adapter, msgs)
        counters = adapter.health().counters
    assert bodies(sim) == [m.body for m in msgs]
    assert counters.get("DeviceRebooted", 0) >= 4


async def test_port_disappears_and_comes_back(tmp_path, sims):
    record = tmp_path / "record"
    by_id = tmp_path / "usb-fieldgate-sim-if00"
    sim = start_simulator(record)
    sims.append(sim)
    point_symlink(by_id, sim.pty)
    msgs = [message(i) for i in range(40)]
    async with running(SerialAdapter(config(by_id))) as adapter:
        await deliver_all(adapter, msgs[:15])
        sim.kill()  # unplug
        outcome = await adapter.deliver(msgs[15], ENVELOPE)
        assert isinstance(outcome, RetryLater)
        sim2 = start_simulator(record)  # replug: a new pty, the stable name re-pointed
        sims.append(sim2)
        point_symlink(by_id, sim2.pty)
        await deliver_all(adapter, msgs[15:])
    assert bodies(sim2) == [m.body for m in msgs]


async def test_unplug_during_a_delivery(tmp_path, sims):
    record = tmp_path / "record"
    by_id = tmp_path / "usb-fieldgate-sim-if00"
    sim = start_simulator(record, ["--delay", "300"])  # answers slowly: we kill it mid-wait
    sims.append(sim)
    point_symlink(by_id, sim.pty)
    async with running(SerialAdapter(config(by_id, ack_timeout=1.0))) as adapter:
        async with trio.open_nursery() as nursery:
            results: list[object] = []

            async def one() -> None:
                results.append(await adapter.deliver(message(1), ENVELOPE))

            nursery.start_soon(one)
            # the record file is written by another process: nothing to await but its content
            while not sim.processed():  # noqa: ASYNC110
                await trio.sleep(0.01)
            sim.kill()
        assert isinstance(results[0], RetryLater)
        sim2 = start_simulator(record)
        sims.append(sim2)
        point_symlink(by_id, sim2.pty)
        await deliver_all(adapter, [message(1), message(2)])
    # processed before the unplug, recognised by id after it: once
    assert bodies(sim2) == [b"m00001", b"m00002"]


async def test_device_refusal_is_rejected_with_its_code(tmp_path, sims):
    sim = start_simulator(tmp_path / "record", ["--refuse-containing", "poison"])
    sims.append(sim)
    async with running(SerialAdapter(config(Path(sim.pty)))) as adapter:
        outcome = await adapter.deliver(message(1, b"a poison pill"), RAW)
        assert isinstance(outcome, Rejected) and "0x81" in outcome.reason
        # truncated msgpack that looks like an envelope: BAD_MESSAGE from the device's parser
        outcome = await adapter.deliver(message(2, b"\x85\xa2id"), RAW)
        assert isinstance(outcome, Rejected) and "0x01" in outcome.reason
        assert isinstance(await adapter.deliver(message(3), RAW), Delivered)
    assert [body for _, body in sim.processed()] == [b"m00003"]


async def test_message_larger_than_the_device_buffer_is_rejected(tmp_path, sims):
    sim = start_simulator(tmp_path / "record", ["--max-payload", "32", "--max-message", "64"])
    sims.append(sim)
    async with running(SerialAdapter(config(Path(sim.pty)))) as adapter:
        outcome = await adapter.deliver(message(1, bytes(100)), RAW)
    assert isinstance(outcome, Rejected) and "64-byte" in outcome.reason
    assert sim.processed() == []


async def test_missing_port_is_retry_later_and_shutdown_is_prompt(tmp_path):
    adapter = SerialAdapter(config(tmp_path / "nothing-here", max_tries=2, ack_timeout=0.05))
    async with running(adapter):
        outcome = await adapter.deliver(message(1), ENVELOPE)
        assert isinstance(outcome, RetryLater)
        assert adapter.health().state == "port missing"
        assert not adapter.health().ok


async def test_silent_device_means_link_down(tmp_path, sims):
    # a pty nobody answers on: HELLO is never acknowledged
    sim = start_simulator(tmp_path / "record")
    sims.append(sim)
    stop(sim)  # the device hangs, the port stays
    try:
        adapter = SerialAdapter(config(Path(sim.pty), max_tries=2, ack_timeout=0.05))
        async with running(adapter):
            outcome = await adapter.deliver(message(1), ENVELOPE)
            assert isinstance(outcome, RetryLater)
    finally:
        sim.proc.send_signal(18)


async def test_no_frame_of_a_message_goes_out_after_its_deadline(tmp_path, sims):
    # A device that answers each frame 300 ms late and takes 28-byte fragments: a 100-byte
    # message needs four round trips, 1.2 s, and its deadline is 0.5 s away. The device acts on
    # the last fragment only, which must then never be sent.
    sim = start_simulator(tmp_path / "record", ["--max-payload", "32", "--delay", "300"])
    sims.append(sim)
    async with running(SerialAdapter(config(Path(sim.pty), ack_timeout=1.0))) as adapter:
        assert isinstance(await adapter.deliver(message(1), RAW), Delivered)  # the link is up
        late = Message("msg-2", "door", bytes(100), time.time(), time.time() + 0.5)
        outcome = await adapter.deliver(late, RAW)
        assert isinstance(outcome, Expired), outcome
        assert "deadline passed" in outcome.detail
        assert time.time() >= late.expires_at  # type: ignore[operator]
        assert isinstance(await adapter.deliver(message(3), RAW), Delivered)  # link still fine
        assert adapter.health().counters.get("tx_expired") == 1
    assert [body for _, body in sim.processed()] == [b"m00001", b"m00003"]


async def test_a_missing_port_is_logged_once_and_its_return_once(tmp_path, sims, caplog):
    caplog.set_level(logging.INFO, logger="fieldgate.serial")
    by_id = tmp_path / "usb-fieldgate-sim-if00"
    adapter = SerialAdapter(config(by_id, reopen_base=0.02, reopen_cap=0.05))
    async with running(adapter):
        await trio.sleep(0.5)  # a dozen attempts to open it
        missing = [r for r in caplog.records if "cannot be opened" in r.getMessage()]
        assert len(missing) == 1 and missing[0].levelno == logging.WARNING
        assert f"{by_id} cannot be opened (No such file or directory)" in missing[0].getMessage()
        sim = start_simulator(tmp_path / "record")
        sims.append(sim)
        point_symlink(by_id, sim.pty)
        assert isinstance(await adapter.deliver(message(1), RAW), Delivered)
    back = [r for r in caplog.records if r.getMessage().endswith(" is back")]
    assert len(back) == 1
    assert len([r for r in caplog.records if "cannot be opened" in r.getMessage()]) == 1


async def fill_until_it_stays_full(fd: int) -> None:
    """Write to ``fd`` until a write is refused, and still is a moment later: the tty layer
    moves written bytes on to the (stopped) device's side in a kernel worker, which can free
    room just after a write was refused."""
    while True:
        try:
            os.write(fd, b"\x00" * 4096)
            continue
        except BlockingIOError:
            pass
        await trio.sleep(0.05)
        try:
            os.write(fd, b"\x00")
        except BlockingIOError:
            return


async def test_a_port_that_takes_no_bytes_does_not_hold_a_delivery(tmp_path, sims):
    # The device stops reading and its buffer fills: a delivery waits for room (so that its
    # deadline is checked when the bytes can go), but not for ever.
    sim = start_simulator(tmp_path / "record")
    sims.append(sim)
    cfg = config(Path(sim.pty), ping_interval=30.0, ack_timeout=0.1, max_tries=3)
    async with running(SerialAdapter(cfg)) as adapter:
        assert isinstance(await adapter.deliver(message(1), RAW), Delivered)
        stop(sim)
        filler = os.open(sim.pty, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            await fill_until_it_stays_full(filler)
            with trio.fail_after(5):
                outcome = await adapter.deliver(message(2), RAW)
        finally:
            os.close(filler)
            sim.proc.send_signal(signal.SIGCONT)
        assert isinstance(outcome, RetryLater) and "takes no bytes" in outcome.reason
