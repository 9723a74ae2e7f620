"""The status endpoint: routing and rendering (pure), then a real server on 127.0.0.1 and a Unix
socket, hostile clients, ``fieldgate status`` and the page in headless Chromium."""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing

from fieldgate_common.metrics import Metrics
from fieldgate_common.status_http import (
    MAX_CONNECTIONS,
    MAX_REQUEST_HEAD_BYTES,
    REQUEST_READ_TIMEOUT,
    ListenError,
    TcpAddress,
    UnixAddress,
    client_allowed,
    host_header_allowed,
    parse_listen,
    respond,
    serve_status,
    status_document,
)
from gateway.commands.status import listen_from_config, render_status
from gateway.status_client import FetchError, endpoint_from_url, fetch
from gateway.status_format import format_ago, format_duration
from gateway.status_model import (
    RouteDelivery,
    RouteSnapshot,
    StatusSnapshot,
    SubscriptionSnapshot,
    UpstreamSnapshot,
)
from gateway.status_page import render_status_page
from gateway.status_schema import (
    STATUS_SCHEMA,
    STATUS_SCHEMA_VERSION,
    capability_id,
    provider_errors,
    status_errors,
)
from gateway.status_schema import status_document as build_status_document

# ---------------------------------------------------------------- helpers


def sample_document(now: float) -> dict[str, object]:
    """A provider document with one route of each kind and two adapters."""
    return {
        "upstream": {
            "state": "connected",
            "since": now - 330.0,
            "service": "https://push.example/subscribe",
        },
        "sets": [{"id": "5e0d3f1a", "routes": ["thermostats", "doors"]}],
        "routes": [
            {
                "name": "thermostats",
                "push_resource_id": "c0ffee12",
                "subscription_age": 7200.0,
                "queue_depth": 3,
                "last_message": now - 12.0,
                "last_delivery": now - 11.5,
                "last_error": None,
            },
            {
                "name": "doors",
                "push_resource_id": None,
                "subscription_age": None,
                "queue_depth": 0,
                "last_message": None,
                "last_delivery": None,
                "last_error": "serial link down",
            },
        ],
        "adapters": [
            {"name": "broker", "type": "mqtt", "ok": True, "state": "connected", "detail": ""},
            {
                "name": "uart0",
                "type": "serial",
                "ok": False,
                "state": "port missing",
                "detail": "/dev/ttyUSB0: no such device",
            },
        ],
        "counters": {"received": 42, "acknowledged": 42, "delivered": 40, "dead_lettered": 1},
        "version": "0.1.0",
        "uptime": 3725.0,
    }


@dataclass
class FakeGateway:
    """A StatusProvider whose answers the test changes."""

    ok: bool = True
    reason: str = ""
    fail: bool = False
    metrics_registry: Metrics = field(default_factory=Metrics)
    document: dict[str, object] = field(default_factory=lambda: sample_document(time.time()))

    def __post_init__(self) -> None:
        self.received = self.metrics_registry.counter(
            "fieldgate_messages_received_total", "Messages received.", ["route"]
        )

    def status(self) -> dict[str, object]:
        if self.fail:
            raise RuntimeError("provider broke")
        return self.document

    def metrics(self) -> str:
        return self.metrics_registry.render()

    def health(self) -> tuple[bool, str]:
        return self.ok, self.reason

    schema_version = STATUS_SCHEMA_VERSION

    def page(self, document: dict[str, object]) -> str:
        return render_status_page(document)


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes


def parse_response(data: bytes) -> RawResponse:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, body)


async def read_all(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def connect(address: str) -> trio.SocketStream:
    if address.startswith("unix:"):
        return await trio.open_unix_socket(address.removeprefix("unix:"))
    host, _, port = address.rpartition(":")
    return await trio.open_tcp_stream(host.strip("[]"), int(port))


async def exchange(address: str, request: bytes) -> RawResponse:
    """Send raw request bytes, read until the server closes, parse."""
    stream = await connect(address)
    async with stream:
        await stream.send_all(request)
        return parse_response(await read_all(stream))


async def get(address: str, path: str, host: str = "localhost", method: str = "GET") -> RawResponse:
    request = f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    return await exchange(address, request)


async def start(nursery: trio.Nursery, provider: FakeGateway, listen: str = "127.0.0.1:0") -> str:
    address: str = await nursery.start(serve_status, listen, provider)
    return address


# ---------------------------------------------------------------- pure logic


def test_parse_listen_accepts_the_documented_forms():
    assert parse_listen("127.0.0.1:8088") == TcpAddress("127.0.0.1", 8088)
    assert parse_listen("[::1]:0") == TcpAddress("::1", 0)
    assert parse_listen("localhost:9") == TcpAddress("localhost", 9)
    assert parse_listen("unix:/run/fieldgate/status.sock") == UnixAddress(
        Path("/run/fieldgate/status.sock")
    )


@pytest.mark.parametrize(
    "bad", ["", "8088", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", "::1:80", "unix:rel"]
)
def test_parse_listen_rejects_malformed_addresses(bad):
    with pytest.raises(ValueError):
        parse_listen(bad)


def test_only_loopback_peers_unless_remote_is_allowed():
    assert client_allowed(("127.0.0.1", 5000), allow_remote=False)
    assert client_allowed(("127.8.9.10", 5000), allow_remote=False)
    assert client_allowed(("::1", 5000, 0, 0), allow_remote=False)
    assert client_allowed(("::ffff:127.0.0.1", 5000, 0, 0), allow_remote=False)
    assert client_allowed("", allow_remote=False)  # a Unix socket peer
    assert not client_allowed(("192.168.1.20", 5000), allow_remote=False)
    assert not client_allowed(("::ffff:10.0.0.1", 5000, 0, 0), allow_remote=False)
    assert client_allowed(("192.168.1.20", 5000), allow_remote=True)


@pytest.mark.parametrize(
    ("host", "ok"),
    [
        ("localhost", True),
        ("localhost:8088", True),
        ("LOCALHOST.", True),
        ("127.0.0.1:8088", True),
        ("[::1]:8088", True),
        ("[::1]", True),
        ("evil.example", False),
        ("evil.example:8088", False),
        ("localhost.evil.example", False),
        ("192.168.1.2:8088", False),
        ("", False),
    ],
)
def test_host_header_must_name_loopback(host, ok):
    assert host_header_allowed(host) is ok


def test_status_document_follows_the_schema():
    provider = FakeGateway(ok=False, reason="push service unreachable")
    assert provider_errors(provider.status()) == []
    document = status_document(provider)
    assert status_errors(document) == []
    assert document["health"] == {"ok": False, "reason": "push service unreachable"}
    assert document["schema"] == STATUS_SCHEMA_VERSION
    # The served document survives JSON round trip unchanged (no Python-only types).
    assert json.loads(json.dumps(document)) == document


def test_schema_checker_reports_each_problem():
    document = status_document(FakeGateway())
    document["upstream"] = {"state": "sleeping", "since": "yesterday", "service": "x"}
    document["routes"][0].pop("queue_depth")
    document["adapters"][1]["ok"] = "no"
    document["counters"]["received"] = True
    errors = status_errors(document)
    assert "$.upstream.state: 'sleeping' is not one of" in errors[0]
    assert any(e.startswith("$.upstream.since: expected number or null") for e in errors)
    assert "$.routes[0]: missing 'queue_depth'" in errors
    assert any(e.startswith("$.adapters[1].ok: expected boolean") for e in errors)
    assert any(e.startswith("$.counters.received: expected number") for e in errors)
    assert status_errors([]) == ["$: expected object, found list"]


def test_schema_is_documented_field_by_field():
    doc = (Path(__file__).parent.parent / "docs" / "status-schema.md").read_text()

    def names(schema, prefix=""):
        for key, sub in schema.get("properties", {}).items():
            yield prefix + key
            yield from names(sub, prefix + key + ".")
            if "items" in sub:
                yield from names(sub["items"], prefix + key + "[].")

    for name in names(STATUS_SCHEMA):
        assert f"`{name}`" in doc, f"{name} is not described in docs/status-schema.md"


def test_requests_are_routed():
    provider = FakeGateway()
    assert respond("GET", "/status", provider).status == 200
    assert respond("GET", "/status?pretty=1", provider).status == 200
    assert respond("HEAD", "/healthz", provider).status == 200
    metrics = respond("GET", "/metrics", provider)
    assert metrics.content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert respond("GET", "/", provider).content_type.startswith("text/html")
    assert respond("GET", "/nope", provider).status == 404
    assert respond("GET", "/../etc/passwd", provider).status == 404
    post = respond("POST", "/status", provider)
    assert post.status == 405
    assert ("Allow", "GET, HEAD") in post.headers


def test_a_failing_provider_costs_a_500_not_the_server():
    provider = FakeGateway(fail=True)
    assert respond("GET", "/status", provider).status == 500
    assert respond("GET", "/", provider).status == 500
    assert respond("GET", "/healthz", provider).status == 200  # health() still works


def test_healthz_carries_the_reason():
    response = respond("GET", "/healthz", FakeGateway(ok=False, reason="upstream: backoff 30s"))
    assert (response.status, response.body) == (503, b"upstream: backoff 30s\n")


def test_page_escapes_everything_from_configuration_and_network():
    provider = FakeGateway()
    provider.document["routes"][0]["name"] = "<script>alert(1)</script>"
    provider.document["routes"][1]["last_error"] = '"><img src=x onerror=alert(2)>'
    page = render_status_page(status_document(provider))
    assert "<script>" not in page
    assert "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    for forbidden in ("<script", "<link", "<img", "@import", "url("):
        assert forbidden not in page


def test_page_survives_a_document_from_another_version():
    page = render_status_page({"routes": "weird", "adapters": [1, None], "health": None})
    assert "Not working" in page
    assert "No routes configured." in page


def test_page_says_at_a_glance_whether_it_works():
    now = time.time()
    provider = FakeGateway(document=sample_document(now))
    page = render_status_page(status_document(provider), now=now)
    assert '<header class="ok"><h1>fieldgate &mdash; Working</h1>' in page
    assert "connected</span> for 5m 30s" in page  # upstream since
    assert "serial link down" in page
    provider.ok, provider.reason = False, "push service unreachable"
    page = render_status_page(status_document(provider), now=now)
    assert '<header class="bad">' in page
    assert "push service unreachable" in page


def test_durations_read_like_a_person_would_write_them():
    assert format_duration(0) == "0s"
    assert format_duration(0.25) == "0.2s"
    assert format_duration(59) == "59s"
    assert format_duration(330) == "5m 30s"
    assert format_duration(3725) == "1h 2m"
    assert format_duration(90000) == "1d 1h"
    assert format_duration(None) == "-"
    assert format_duration(float("nan")) == "-"
    assert format_duration(True) == "-"
    assert format_ago(None, 100.0) == "never"
    assert format_ago(40.0, 100.0) == "1m ago"
    assert format_ago(30.0, 100.0) == "1m 10s ago"


def test_terminal_table_shows_routes_adapters_and_counters():
    now = time.time()
    text = render_status(status_document(FakeGateway(document=sample_document(now))), now)
    lines = text.splitlines()
    assert lines[0] == "fieldgate 0.1.0: WORKING"
    assert "connection    connected for 5m 30s" in text
    route_header = next(line for line in lines if line.startswith("ROUTE"))
    thermo = next(line for line in lines if line.startswith("thermostats"))
    # Columns line up: the queue depth sits under its heading.
    assert thermo[route_header.index("QUEUED")] == "3"
    assert any(line.startswith("uart0") and "BAD port missing" in line for line in lines)
    assert any(line.startswith("dead_lettered") for line in lines)


def test_listen_address_comes_from_the_configuration(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text('[push]\nservice = "https://x"\n[status]\nlisten = "unix:/run/x.sock"\n')
    assert listen_from_config(config, explicit=True) == "unix:/run/x.sock"
    config.write_text('[push]\nservice = "https://x"\n')
    assert listen_from_config(config, explicit=True) == "127.0.0.1:8088"
    assert listen_from_config(tmp_path / "missing.toml", explicit=False) == "127.0.0.1:8088"
    with pytest.raises(FileNotFoundError):
        listen_from_config(tmp_path / "missing.toml", explicit=True)


def test_status_urls_map_to_addresses():
    assert endpoint_from_url("http://127.0.0.1:8088/") == TcpAddress("127.0.0.1", 8088)
    assert endpoint_from_url("http://localhost") == TcpAddress("localhost", 80)
    assert endpoint_from_url("0.0.0.0:8088") == TcpAddress("127.0.0.1", 8088)
    assert endpoint_from_url("[::]:8088") == TcpAddress("::1", 8088)
    assert endpoint_from_url("unix:/run/f.sock") == UnixAddress(Path("/run/f.sock"))
    with pytest.raises(ValueError):
        endpoint_from_url("https://127.0.0.1:8088")


# ---------------------------------------------------------------- a real server


async def test_endpoints_over_tcp(nursery):
    provider = FakeGateway()
    address = await start(nursery, provider)
    assert address.startswith("127.0.0.1:")

    response = await get(address, "/status")
    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["connection"] == "close"
    assert status_errors(json.loads(response.body)) == []

    provider.received.inc(route="thermostats")
    response = await get(address, "/metrics")
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert b'fieldgate_messages_received_total{route="thermostats"} 1' in response.body

    page = await get(address, "/")
    assert page.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.body.startswith(b"<!DOCTYPE html>")

    head = await get(address, "/status", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert int(head.headers["content-length"]) > 0


async def test_healthz_flips_to_503_and_back(nursery):
    provider = FakeGateway()
    address = await start(nursery, provider)
    assert (await get(address, "/healthz")).body == b"ok\n"
    provider.ok, provider.reason = False, "push service unreachable since 12:00:01"
    response = await get(address, "/healthz")
    assert (response.status, response.body) == (503, b"push service unreachable since 12:00:01\n")
    provider.ok = True
    assert (await get(address, "/healthz")).status == 200


async def test_bad_requests_leave_the_server_serving(nursery):
    provider = FakeGateway()
    address = await start(nursery, provider)
    assert (await get(address, "/nope")).status == 404
    huge = b"GET /status HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 2 * MAX_REQUEST_HEAD_BYTES
    response = await exchange(address, huge + b"\r\n\r\n")
    assert response.status == 431
    garbage = await exchange(address, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
    assert garbage.status == 400  # e.g. a TLS ClientHello
    assert (await exchange(address, b"GET /status HTTP/1.1\r\n\r\n")).status == 400  # no Host
    post = await exchange(address, b"POST /status HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert post.status == 405
    provider.fail = True
    assert (await get(address, "/status")).status == 500
    provider.fail = False
    stream = await connect(address)
    await stream.aclose()  # connect and leave at once
    assert (await get(address, "/status")).status == 200


async def test_foreign_host_header_is_refused(nursery):
    address = await start(nursery, FakeGateway())
    assert (await get(address, "/status", host="attacker.example")).status == 403
    assert (await get(address, "/status", host=address)).status == 200


async def test_non_loopback_bind_needs_allow_remote():
    with pytest.raises(ListenError, match="not a loopback address"):
        await serve_status("0.0.0.0:0", FakeGateway())
    with pytest.raises(ListenError):
        await serve_status("nonsense", FakeGateway())


async def test_a_port_in_use_is_one_clear_error(nursery):
    address = await start(nursery, FakeGateway())
    with pytest.raises(ListenError, match=f"cannot listen on {address}: Address already in use"):
        await serve_status(address, FakeGateway())


async def test_a_socket_in_a_missing_directory_is_one_clear_error(tmp_path):
    with pytest.raises(ListenError, match="No such file or directory"):
        await serve_status(f"unix:{tmp_path}/missing/status.sock", FakeGateway())


async def test_slowloris_is_cut_off_and_the_server_carries_on(nursery, autojump_clock):
    address = await start(nursery, FakeGateway())
    slow = await connect(address)
    await slow.send_all(b"GET /status HTTP/1.1\r\nHost: local")
    start_time = trio.current_time()
    assert await read_all(slow) == b""  # the server hung up without an answer
    assert trio.current_time() - start_time == pytest.approx(REQUEST_READ_TIMEOUT)
    await slow.aclose()
    assert (await get(address, "/healthz")).status == 200


async def test_connections_beyond_the_cap_get_503(nursery, autojump_clock):
    address = await start(nursery, FakeGateway())
    held = []
    for _ in range(MAX_CONNECTIONS):
        stream = await connect(address)
        await stream.send_all(b"GET /status HTTP/1.1\r\n")  # and never finish
        held.append(stream)
    await trio.testing.wait_all_tasks_blocked()
    response = await get(address, "/status")
    assert (response.status, response.body) == (503, b"busy\n")
    for stream in held:
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert (await get(address, "/status")).status == 200


async def test_unix_socket_is_private_and_removed_on_exit(tmp_path):
    path = tmp_path / "status.sock"
    path.write_text("")  # a regular file is never replaced
    with pytest.raises(ListenError, match="exists and is not a socket"):
        await serve_status(f"unix:{path}", FakeGateway())
    path.unlink()
    async with trio.open_nursery() as nursery:
        address = await start(nursery, FakeGateway(), f"unix:{path}")
        assert address == f"unix:{path}"
        mode = path.lstat().st_mode
        assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
        response = await get(address, "/status", host="anything")  # no Host check on a socket
        assert response.status == 200
        nursery.cancel_scope.cancel()
    assert not path.exists()
    # A stale socket left by a crash is replaced.
    async with trio.open_nursery() as nursery:
        stale = trio.socket.socket(trio.socket.AF_UNIX)
        await stale.bind(str(path))
        stale.close()
        address = await start(nursery, FakeGateway(), f"unix:{path}")
        assert (await get(address, "/healthz")).status == 200
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- fieldgate status


async def _cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    command = [sys.executable, "-m", "gateway", "status", *args]
    return await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)


async def test_cli_prints_a_table_and_exits_by_health(nursery):
    provider = FakeGateway()
    address = await start(nursery, provider)
    result = await _cli("--url", f"http://{address}")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert out.startswith("fieldgate 0.1.0: WORKING")
    assert "thermostats" in out and "uart0" in out

    provider.ok, provider.reason = False, "push service unreachable"
    result = await _cli("--url", address, "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["health"] == {"ok": False, "reason": "push service unreachable"}
    assert status_errors(document) == []


async def test_cli_finds_the_endpoint_through_the_configuration(nursery, tmp_path):
    sock = tmp_path / "s.sock"
    await start(nursery, FakeGateway(), f"unix:{sock}")
    config = tmp_path / "config.toml"
    config.write_text(f'[push]\nservice = "https://x"\n[status]\nlisten = "unix:{sock}"\n')
    result = await _cli("--config", str(config))
    assert result.returncode == 0, result.stderr
    assert b"thermostats" in result.stdout


async def test_cli_reports_an_unreachable_gateway(tmp_path):
    result = await _cli("--url", f"unix:{tmp_path}/nobody-listens.sock")
    assert result.returncode == 3
    assert b"cannot read the gateway's status" in result.stderr
    result = await _cli("--config", str(tmp_path / "missing.toml"))
    assert result.returncode == 3
    config = tmp_path / "off.toml"
    config.write_text('[status]\nlisten = ""\n')
    result = await _cli("--config", str(config))
    assert result.returncode == 3
    assert b"disabled" in result.stderr


async def test_client_refuses_a_non_http_peer(nursery):
    async def babble(stream: trio.SocketStream) -> None:
        await stream.send_all(b"SSH-2.0-OpenSSH_9.2\r\n")
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, babble, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    with pytest.raises(FetchError):
        await trio.to_thread.run_sync(fetch, TcpAddress("127.0.0.1", port), "/status")


# ---------------------------------------------------------------- headless Chromium


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB or RGBA, non-interlaced PNG into rows of pixel bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, chunk = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0
    bpp = 3 if colour == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), width * bpp, [], bytearray(width * bpp)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        rows.append(bytes(line))
        prev = line
    return width, bpp, rows


async def test_page_renders_in_headless_chromium(nursery, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "install Debian's chromium package (scripts/system-deps.sh test)"
    address = await start(nursery, FakeGateway())
    shot = tmp_path / "page.png"
    profile = tempfile.mkdtemp(dir=tmp_path)
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,900",
        f"http://{address}/",
    ]  # fmt: skip
    result = await trio.run_process(command, capture_stdout=True, capture_stderr=True, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    data = shot.read_bytes()
    assert len(data) > 1000
    width, bpp, rows = _png_pixels(data)
    assert width == 1200
    colours = {row[i : i + 3] for row in rows[::7] for i in range(0, len(row), bpp * 5)}
    assert len(colours) > 10, "the screenshot is (almost) one flat colour"
    # The green "Working" banner is at the top of the page.
    assert bytes((0x1E, 0x7D, 0x3A)) in {rows[5][i : i + 3] for i in range(0, len(rows[5]), bpp)}


# ---------------------------------------------------------------- no capabilities


def test_the_document_names_capabilities_by_identifier_only():
    push_url = "https://push.example/p/3f9a-secret-push-resource"
    set_url = "https://push.example/s/77aa-secret-set"
    snapshot = StatusSnapshot(
        now=1000.0,
        version="0.1.0",
        uptime=5.0,
        upstream=UpstreamSnapshot(
            "connected",
            990.0,
            "https://user:pw@push.example/subscribe?token=t0ken",
            f"DELETE {push_url}/m/1 answered 500",
            None,
        ),
        routes=(RouteSnapshot("r", "stored", ("log",), RouteDelivery(0, 0, None, None, None)),),
        subscriptions=(SubscriptionSnapshot("r", push_url, set_url, 900.0),),
        adapters=(),
    )
    document = build_status_document(snapshot)
    assert provider_errors(document) == []
    text = json.dumps(document)
    for secret in ("secret", "t0ken", "user:pw"):
        assert secret not in text
    assert document["routes"][0]["push_resource_id"] == capability_id(push_url)  # type: ignore[index]
    assert document["sets"] == [{"id": capability_id(set_url), "routes": ["r"]}]
    assert document["upstream"]["service"] == "https://push.example/subscribe"  # type: ignore[index]
    assert capability_id(push_url) == hashlib.sha256(push_url.encode()).hexdigest()[:8]
    assert STATUS_SCHEMA_VERSION == 2
