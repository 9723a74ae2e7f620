"""``fieldgate`` as an operator meets it: start-up faults, two gateways on one state directory, a
journal deleted under a running gateway, the CLI beside a running gateway.

Real child processes (``python -m gateway ...``) against the reference push service on loopback;
each fault is the one the field test found, fed the same way.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio

from gateway import policy
from gateway.config import load_config
from gateway.routes import RouteTable
from gateway.store import Incoming, Store
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import wait_until
from tests.chaos_peers import fill_disk, tmpfs
from tests.gateway_process import (
    LOG_ROUTE,
    GatewayProcess,
    free_port,
    send_all,
    subscription_of,
    write_config,
)

NO_SERVICE = "http://127.0.0.1:9/subscribe"  # start-up faults end before any connection
RUN_LIMIT = 30.0


def fieldgate(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=RUN_LIMIT,
        input=stdin,
        check=False,
    )


def config_file(tmp_path: Path, service: str = NO_SERVICE, **replace: str) -> Path:
    """A valid configuration; ``replace`` swaps text in it (``listen=...``, ``path=...``)."""
    path = write_config(
        tmp_path / "config.toml",
        service,
        tmp_path / "state",
        status_port=free_port(),
        body=LOG_ROUTE.format(deliveries=tmp_path / "deliveries.jsonl"),
    )
    text = path.read_text()
    for old, new in replace.items():
        text = text.replace(old, new)
    path.write_text(text)
    return path


def assert_one_line(result: subprocess.CompletedProcess[str], *words: str) -> str:
    """Exit 2, one line on stderr naming what is given (besides the log's own lines), and no
    traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Exception" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if " fieldgate." not in line]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    """Gateways entered here are killed when the test ends, whatever happened."""
    with ExitStack() as exit_stack:
        yield exit_stack


async def _service(nursery: trio.Nursery) -> PushService:
    service = PushService(ServiceSettings(redelivery_after=0.5))
    await nursery.start(service.serve, "127.0.0.1", 0)
    return service


def _delivered(deliveries: Path) -> list[str]:
    if not deliveries.exists():
        return []
    return [json.loads(line)["body"] for line in deliveries.read_text().splitlines()]


# ------------------------------------------------------------------- one gateway per state dir


async def test_a_second_gateway_on_the_same_state_dir_exits_2(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service = await _service(nursery)
        config = config_file(tmp_path, service.subscribe_url)
        first = stack.enter_context(GatewayProcess(config, _port(config), tmp_path / "gateway.log"))
        await first.start()
        assert first.proc is not None
        # Another configuration (another client id, another status port), the same state dir.
        other = tmp_path / "other.toml"
        other.write_text(config.read_text().replace(f":{_port(config)}", f":{free_port()}"))
        second = await trio.to_thread.run_sync(fieldgate, "run", "--config", str(other))
        assert_one_line(second, f"already running (pid {first.proc.pid})", "push.state_dir")
        assert (await trio.to_thread.run_sync(first.get, "/healthz")) == b"ok\n"
        assert first.terminate() == 0
        nursery.cancel_scope.cancel()


def _port(config: Path) -> int:
    for line in config.read_text().splitlines():
        if line.startswith("listen = "):
            return int(line.rsplit(":", 1)[1].rstrip('"'))
    raise AssertionError("no listen line")


# ------------------------------------------------------------------- start-up faults


def test_the_status_port_in_use_is_one_line(tmp_path):
    config = config_file(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", _port(config)))
        taken.listen()
        result = fieldgate("run", "--config", str(config))
    assert_one_line(
        result, str(config), "status.listen", "cannot listen on", "Address already in use"
    )


@pytest.mark.parametrize("where", ["a directory", "in a missing directory"])
def test_a_log_adapter_path_that_cannot_be_a_file(tmp_path, where):
    target = tmp_path / "outdir" if where == "a directory" else tmp_path / "no" / "such" / "f"
    if where == "a directory":
        target.mkdir()
    config = config_file(tmp_path, **{str(tmp_path / "deliveries.jsonl"): str(target)})
    for command in ("run", "check-config"):
        args = ["--config", str(config)]
        result = fieldgate(command, *args)
        assert result.returncode == 2, result
        out = result.stderr if command == "run" else result.stdout
        assert "adapters.out.path" in out, out
        assert str(target.parent if "missing" in where else target) in out, out
        assert "Traceback" not in result.stderr
    assert_one_line(fieldgate("run", "--config", str(config)), "adapters.out.path")


def test_a_state_directory_that_cannot_be_written(tmp_path):
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as ro:
        config = config_file(tmp_path, **{str(tmp_path / "state"): str(ro / "state")})
        assert_one_line(fieldgate("run", "--config", str(config)), "push.state_dir", str(ro))
        checked = fieldgate("check-config", str(config))
        assert checked.returncode == 2 and "push.state_dir" in checked.stdout
        config = config_file(tmp_path, **{str(tmp_path / "state"): str(ro)})  # itself read-only
        assert_one_line(fieldgate("run", "--config", str(config)), "push.state_dir", str(ro))


def test_a_unix_socket_in_a_missing_directory(tmp_path):
    sock = tmp_path / "run" / "fieldgate" / "status.sock"
    config = config_file(tmp_path)
    tcp = f'listen = "127.0.0.1:{_port(config)}"'
    config.write_text(config.read_text().replace(tcp, f'listen = "unix:{sock}"'))
    assert_one_line(fieldgate("run", "--config", str(config)), "status.listen", str(sock.parent))
    checked = fieldgate("check-config", "--config", str(config))
    assert checked.returncode == 2 and "status.listen" in checked.stdout


def test_check_config_names_a_missing_or_non_certificate_ca_file(tmp_path):
    missing = tmp_path / "missing-ca.pem"
    not_a_cert = tmp_path / "not-a-cert.pem"
    not_a_cert.write_text("just some text\n")
    for ca_file in (missing, not_a_cert):
        config = config_file(tmp_path)
        text = config.read_text().replace("[status]", f'ca_file = "{ca_file}"\n\n[status]', 1)
        config.write_text(text)
        checked = fieldgate("check-config", "--config", str(config))
        assert checked.returncode == 2, checked
        assert "push.ca_file" in checked.stdout and str(ca_file) in checked.stdout
        assert_one_line(fieldgate("run", "--config", str(config)), "push.ca_file", str(ca_file))


# ------------------------------------------------------------------- a journal lost under it


async def test_a_journal_deleted_while_running_is_never_silently_recreated(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service = await _service(nursery)
        config = config_file(tmp_path, service.subscribe_url)
        log = tmp_path / "gateway.log"
        gateway = stack.enter_context(GatewayProcess(config, _port(config), log))
        await gateway.start()
        info = await subscription_of(gateway, config)
        old_id = gateway.status()["routes"][0]["push_resource_id"]  # type: ignore[index]
        journal = tmp_path / "state" / "journal.sqlite3"
        journal.unlink()  # rm journal.sqlite3
        await send_all(info, [b"msg-%d" % i for i in range(30)])
        await wait_until(
            lambda: gateway.metric("fieldgate_messages_received_total") >= 30, "30 received"
        )
        await wait_until(lambda: "was deleted while in use" in log.read_text(), "the report")
        await trio.sleep(1.0)  # time enough to acknowledge, were anything acknowledged
        assert service.pending_messages() == 30  # every one is still with the service
        assert gateway.terminate() == 0

        again = await trio.to_thread.run_sync(fieldgate, "run", "--config", str(config))
        line = assert_one_line(again, "push.state_dir", "is missing", "--reset")
        assert "fieldgate subscriptions" in line and "new push" in line
        assert not journal.exists()  # nothing created

        reset = stack.enter_context(GatewayProcess(config, _port(config), log, args=("--reset",)))
        await reset.start()
        await subscription_of(reset, config)
        assert reset.status()["routes"][0]["push_resource_id"] != old_id  # type: ignore[index]
        assert "--reset: created a new journal" in log.read_text()
        assert reset.terminate() == 0
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------- a full disk


def _healthz(gateway: GatewayProcess) -> tuple[int, str]:
    try:
        return 200, gateway.get("/healthz").decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_a_full_disk_refuses_says_so_and_recovers(tmp_path, stack):
    # The state directory on a 2 MiB partition that something else fills: the gateway leaves
    # new messages with the push service, /healthz says why, and once the filler is gone the
    # service's redeliveries are journalled and delivered.
    with tmpfs(tmp_path / "disk", "2m") as disk:
        async with trio.open_nursery() as nursery:
            service = await _service(nursery)
            state = str(tmp_path / "state")
            config = config_file(tmp_path, service.subscribe_url, **{state: str(disk / "state")})
            deliveries = tmp_path / "deliveries.jsonl"  # not on the small disk
            gateway = stack.enter_context(
                GatewayProcess(config, _port(config), tmp_path / "gateway.log")
            )
            await gateway.start()
            info = await subscription_of(gateway, config)
            await send_all(info, [b"before-%d" % i for i in range(5)])
            await wait_until(lambda: len(_delivered(deliveries)) == 5, "the first five")
            # Something else fills the disk to the last block: commits that write fail (or
            # find no room and refuse); nothing is acknowledged either way.
            filler = disk / "filler"
            size = await trio.to_thread.run_sync(fill_disk, filler)
            await send_all(info, [b"while-full-%d" % i for i in range(5)])
            await wait_until(lambda: _healthz(gateway)[0] == 503, "unhealthy")
            assert any(
                why in _healthz(gateway)[1] for why in ("journal commits fail", "the disk is full")
            )
            # Then leaves 400 KiB: less than the journal keeps for itself (its WAL's budget and
            # DISK_RESERVE), room enough to go on committing: it refuses, and says so.
            os.truncate(filler, size - 400 * 1024)
            refused = gateway.metric("fieldgate_messages_refused_total")
            await wait_until(
                lambda: gateway.metric("fieldgate_messages_refused_total") > refused + 5,
                "refusals while the disk has little room",
            )
            code, reason = _healthz(gateway)
            assert code == 503 and "the disk is full" in reason, (code, reason)
            assert service.pending_messages() == 5  # left with the service, none acknowledged
            assert len(_delivered(deliveries)) == 5
            filler.unlink()
            await wait_until(lambda: len(_delivered(deliveries)) == 10, "the five redelivered")
            await wait_until(lambda: _healthz(gateway)[0] == 200, "healthy again")
            assert sorted(_delivered(deliveries))[5:] == [f"while-full-{i}" for i in range(5)]
            assert gateway.terminate() == 0
            nursery.cancel_scope.cancel()


# ------------------------------------------------------------------- the CLI beside it


async def test_a_replayed_dead_letter_is_delivered_at_once(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service = await _service(nursery)
        config = config_file(tmp_path, service.subscribe_url)
        deliveries = tmp_path / "deliveries.jsonl"
        gateway = stack.enter_context(
            GatewayProcess(config, _port(config), tmp_path / "gateway.log")
        )
        await gateway.start()
        await subscription_of(gateway, config)
        _add_dead_letter(config, b"replay me")  # beside the running gateway, as the CLI does
        replay = await trio.to_thread.run_sync(
            fieldgate, "dead-letters", "replay", "1", "--config", str(config)
        )
        assert replay.returncode == 0, replay.stderr
        assert gateway.proc is not None
        assert f"woke the running gateway (pid {gateway.proc.pid})" in replay.stdout
        # No other message arrives: only the nudge can make the router read the journal.
        await wait_until(lambda: _delivered(deliveries) == ["replay me"], "the replay delivered")
        assert gateway.terminate() == 0
        nursery.cancel_scope.cancel()


def _add_dead_letter(config: Path, plaintext: bytes) -> None:
    loaded = load_config(config)
    store = Store.open(loaded.push.state_dir, journal=loaded.journal, create=False)
    try:
        dead = Incoming(
            "https://push.example/m/dead",
            "valves",
            plaintext,
            b"",
            (),
            time.time(),
            failure="rejected_by_device",
        )
        store.ingest([policy.admit(dead, RouteTable(loaded.routes), time.time())])
    finally:
        store.close()


async def test_status_finds_a_port_chosen_at_start(tmp_path, stack):
    async with trio.open_nursery() as nursery:
        service = await _service(nursery)
        config = config_file(tmp_path, service.subscribe_url)
        config.write_text(config.read_text().replace(f":{_port(config)}", ":0"))
        gateway = stack.enter_context(GatewayProcess(config, 0, tmp_path / "gateway.log"))
        await gateway.start()
        shown = await trio.to_thread.run_sync(fieldgate, "status", "--config", str(config))
        assert shown.returncode in (0, 1), shown.stderr  # reached it: healthy or not
        assert "push service" in shown.stdout and "valves" in shown.stdout
        assert gateway.terminate() == 0
        gone = await trio.to_thread.run_sync(fieldgate, "status", "--config", str(config))
        assert gone.returncode == 3 and "picks its port when the gateway starts" in gone.stderr
        nursery.cancel_scope.cancel()


def test_subscriptions_on_a_fresh_state_dir_creates_nothing(tmp_path):
    config = config_file(tmp_path)
    result = fieldgate("subscriptions", "--config", str(config))
    assert result.returncode == 1 and "not subscribed yet" in result.stderr
    assert not (tmp_path / "state").exists()
    (tmp_path / "state").mkdir(mode=0o700)
    assert fieldgate("subscriptions", "--config", str(config)).returncode == 1
    assert os.listdir(tmp_path / "state") == []


def test_check_config_takes_config_and_survives_a_closed_pipe(tmp_path):
    config = config_file(tmp_path)
    assert fieldgate("check-config", "--config", str(config)).stdout.strip() == "ok"
    assert fieldgate("check-config", str(config)).stdout.strip() == "ok"
    # `check-config --show | head`: the reader is gone before the output is written (buffered
    # or not, the write then fails with EPIPE).
    for unbuffered in ("", "1"):
        shown = subprocess.Popen(
            [sys.executable, "-m", "gateway", "check-config", "--show", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(os.environ, PYTHONUNBUFFERED=unbuffered),
        )
        assert shown.stdout is not None
        shown.stdout.close()
        _, err = shown.communicate(timeout=RUN_LIMIT)
        assert err == b"", err
        assert shown.returncode == 128 + signal.SIGPIPE


# ------------------------------------------------------------------- a full journal


async def test_a_full_journal_leaves_the_rest_with_the_service(tmp_path, stack):
    # The field test: journal.max_bytes = "200KiB", the broker down, 1,000 messages. Before,
    # 591 were acknowledged and lost, and the files were a 376 KB database and a 4.1 MB WAL.
    async with trio.open_nursery() as nursery:
        service = await _service(nursery)
        config = write_config(
            tmp_path / "config.toml",
            service.subscribe_url,
            tmp_path / "state",
            status_port=free_port(),
            body=BROKER_DOWN,
        )
        gateway = stack.enter_context(
            GatewayProcess(config, _port(config), tmp_path / "gateway.log")
        )
        await gateway.start()
        info = await subscription_of(gateway, config)
        await send_all(info, [b"m%04d:" % i + b"x" * 300 for i in range(MESSAGES_WHEN_FULL)])
        await wait_until(
            lambda: gateway.metric("fieldgate_messages_refused_total") > 0, "refusals", 60
        )
        journalled = gateway.metric("fieldgate_messages_journalled_total")
        await wait_until(
            lambda: service.pending_messages() == MESSAGES_WHEN_FULL - journalled,
            "every journalled message acknowledged, no other",
        )
        await trio.sleep(1.0)  # time enough to acknowledge more, were any acknowledged
        assert service.pending_messages() == MESSAGES_WHEN_FULL - journalled
        assert 50 < journalled < MESSAGES_WHEN_FULL
        state = tmp_path / "state"
        on_disk = sum((state / f"journal.sqlite3{x}").stat().st_size for x in ("", "-wal"))
        assert on_disk <= 1.05 * 200 * 1024, on_disk  # pages freed by nothing here: ~the limit
        assert gateway.terminate() == 0
        nursery.cancel_scope.cancel()


MESSAGES_WHEN_FULL = 1000
BROKER_DOWN = """
[journal]
max_bytes = "200KiB"

[adapters.broker]
type = "mqtt"
port = 9
reconnect_base = "1s"

[[routes]]
name = "valves"
queue_full = "refuse-newest"
deliver = [ { adapter = "broker", topic = "valves/{id}" } ]
"""
