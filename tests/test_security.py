"""Security checks: private state, no way around TLS verification, nothing secret in the log.

Covered elsewhere (not repeated here):
* the status endpoint refuses non-loopback clients and foreign Host headers unless configured:
  tests/test_status.py (test_only_loopback_peers_unless_remote_is_allowed,
  test_host_header_must_name_loopback, test_foreign_host_header_is_refused,
  test_non_loopback_bind_needs_allow_remote);
* http:// is accepted for loopback only: tests/test_config.py
  (test_http_push_service_on_loopback_is_accepted, test_the_http_error_suggests_the_https_url);
* an https service whose certificate is from a CA other than the configured one is refused:
  tests/test_agent.py (test_tls_with_an_unknown_ca_fails_clearly).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import sqlite3
import ssl
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import trio
import trustme
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_private_key
from pywebpush import webpush

from gateway.config import ConfigError, PushConfig, parse_config
from gateway.http1 import client_ssl_context
from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.agent_harness import running, wait_until
from tests.gateway_process import GatewayProcess, free_port, write_config

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
EXIT_CONFIG = 2  # gateway/commands/run.py

ROUTES = """
[adapters.device]
type = "log"
path = "{deliveries}"

[adapters.logged]
type = "log"

[[routes]]
name = "valves"
deliver = [ {{ adapter = "device" }} ]

[[routes]]
name = "pumps"
deliver = [ {{ adapter = "logged" }} ]
"""


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as exit_stack:
        yield exit_stack


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def start_gateway(
    tmp_path: Path, stack: ExitStack, nursery: trio.Nursery
) -> tuple[PushService, GatewayProcess, Path]:
    service = PushService(ServiceSettings(redelivery_after=0.5))
    await nursery.start(service.serve, "127.0.0.1", 0)
    status_port = free_port()
    config = write_config(
        tmp_path / "config.toml",
        service.subscribe_url,
        tmp_path / "state",
        status_port=status_port,
        body=ROUTES.format(deliveries=tmp_path / "deliveries.jsonl"),
    )
    gateway = stack.enter_context(GatewayProcess(config, status_port, tmp_path / "gateway.log"))
    await gateway.start()
    await wait_until(lambda: len(service.subscriptions()) == 2, "both routes subscribed")
    return service, gateway, config


# ------------------------------------------------------------------------- private state


async def test_fieldgate_run_creates_private_state_even_with_umask_0(
    tmp_path: Path, stack: ExitStack
) -> None:
    old = os.umask(0)  # the child inherits it: the modes must not depend on the umask
    try:
        async with trio.open_nursery() as nursery:
            _service, gateway, _ = await start_gateway(tmp_path, stack, nursery)
            state = tmp_path / "state"
            assert mode(state) == PRIVATE_DIR
            files = sorted(state.iterdir())
            assert files, "no journal files"
            for path in files:
                assert mode(path) == PRIVATE_FILE, f"{path.name}: {mode(path):o}"
            assert mode(tmp_path / "deliveries.jsonl") == PRIVATE_FILE  # holds plaintext
            assert gateway.terminate() == 0
            nursery.cancel_scope.cancel()
    finally:
        os.umask(old)


def run_gateway_once(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )


@pytest.mark.parametrize(
    ("what", "wide"),
    [("state", 0o755), ("state", 0o770), ("journal", 0o644), ("journal", 0o660)],
)
def test_fieldgate_run_refuses_state_open_to_others(tmp_path: Path, what: str, wide: int) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=PRIVATE_DIR)
    journal = state / "journal.sqlite3"
    sqlite3.connect(journal).close()
    journal.chmod(PRIVATE_FILE)
    (state if what == "state" else journal).chmod(wide)
    config = write_config(
        tmp_path / "config.toml",
        "http://127.0.0.1:9/subscribe",
        state,
        status_port=free_port(),
        body=ROUTES.format(deliveries=tmp_path / "deliveries.jsonl"),
    )
    result = run_gateway_once(config)
    assert result.returncode == EXIT_CONFIG, result.stderr
    fix = "700" if what == "state" else "600"
    assert "accessible by group or others" in result.stderr
    assert f"chmod {fix}" in result.stderr


# ---------------------------------------------------------------------- TLS verification


def test_there_is_no_option_to_turn_verification_off() -> None:
    names = {f.name for f in dataclasses.fields(PushConfig)}
    assert not {n for n in names if any(w in n for w in ("verify", "insecure", "skip"))}
    for option in ("tls_verify = false", "insecure = true", "verify = false"):
        text = f'[push]\nservice = "https://push.example.net/subscribe"\n{option}\n'
        with pytest.raises(ConfigError):
            parse_config(text, Path("/etc/fieldgate/config.toml"), {})


def test_http_to_a_non_loopback_service_is_rejected() -> None:
    for host in ("push.example.net", "10.0.0.1", "[2001:db8::1]"):
        text = f'[push]\nservice = "http://{host}/subscribe"\n'
        with pytest.raises(ConfigError):
            parse_config(text, Path("/etc/fieldgate/config.toml"), {})


def test_the_client_context_always_verifies(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    for context in (client_ssl_context(None), client_ssl_context(ca_file, alpn=["h2"])):
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname


async def test_https_service_with_an_unknown_ca_and_no_ca_file_is_refused(tmp_path: Path) -> None:
    ca = trustme.CA()  # in no trust store
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    async with running(tmp_path, ssl_context=server_context, connected=False) as run:
        assert run.service.subscribe_url.startswith("https://")
        await wait_until(lambda: run.upstream.status.last_error is not None, "an error")
        assert "CERTIFICATE_VERIFY_FAILED" in (run.upstream.status.last_error or "")
        assert run.upstream.subscription_infos() == {}
        assert run.service.subscriptions() == []


# -------------------------------------------------------------------- nothing in the log

PLAINTEXT = "zebra-okapi-{n}-plaintext-7f3a"


def secret_forms(raw: bytes) -> set[str]:
    """Text forms a secret could take in a log line."""
    return {
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }


async def test_no_key_material_or_plaintext_in_a_debug_log(
    tmp_path: Path, stack: ExitStack
) -> None:
    async with trio.open_nursery() as nursery:
        service, gateway, config = await start_gateway(tmp_path, stack, nursery)
        infos = {}
        for route in ("valves", "pumps"):
            out = await trio.run_process(
                [sys.executable, "-m", "gateway", "subscriptions", "--config", str(config), route],
                capture_stdout=True,
            )
            infos[route] = json.loads(out.stdout)
        bodies = [PLAINTEXT.format(n=n) for n in range(4)]

        def send_all() -> list[str]:
            locations = []
            for n, body in enumerate(bodies):
                response = webpush(infos["valves" if n % 2 else "pumps"], body.encode(), ttl=600)
                assert response.status_code == 201
                locations.append(response.headers["location"])
            return locations

        locations = await trio.to_thread.run_sync(send_all)
        await wait_until(lambda: service.pending_messages() == 0, "all acknowledged")
        log_path = tmp_path / "gateway.log"
        deliveries = tmp_path / "deliveries.jsonl"
        await wait_until(
            lambda: deliveries.exists() and len(deliveries.read_text().splitlines()) == 2,
            "the device route's deliveries",
        )
        await wait_until(
            lambda: log_path.read_text().count("route pumps message") == 2,
            "the logged route's deliveries",
        )
        assert gateway.terminate() == 0
        nursery.cancel_scope.cancel()

    log_text = (tmp_path / "gateway.log").read_text()
    assert 'level = "debug"' in config.read_text()  # every line the gateway logs at all
    forbidden: dict[str, str] = {}
    for body in bodies:
        forbidden[body] = "plaintext"
        forbidden.update(dict.fromkeys(secret_forms(body.encode()), "plaintext (encoded)"))
    conn = sqlite3.connect(tmp_path / "state" / "journal.sqlite3")
    rows = conn.execute("SELECT private_key_der, auth_secret, push_url FROM subscriptions")
    for der, auth, push_url in rows.fetchall():
        key = load_der_private_key(der, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        forbidden.update(dict.fromkeys(secret_forms(scalar), "p256dh private key"))
        forbidden.update(dict.fromkeys(secret_forms(der), "private key (DER)"))
        forbidden.update(dict.fromkeys(secret_forms(auth), "auth secret"))
        # The push resource is a capability (RFC 8030 §8.3): whoever has it can send.
        forbidden[push_url.rstrip("/").rsplit("/", 1)[-1]] = "push resource id"
    conn.close()
    for location in locations:
        forbidden[location.rstrip("/").rsplit("/", 1)[-1]] = "push message id"
    leaks = sorted({what for text, what in forbidden.items() if text in log_text})
    assert not leaks, f"the debug log contains: {leaks}"


@pytest.mark.parametrize(
    ("url", "secure", "plain"),
    [
        ("http://push.example.com/", "https", "http"),
        ("ws://push.example.com/", "wss", "ws"),
        ("ftp://127.0.0.1/", "https", "http"),
    ],
)
async def test_cleartext_to_the_push_service_only_on_loopback(url, secure, plain):
    """Both upstreams open their connection through one rule: TLS, or cleartext to loopback."""
    from gateway.http1 import open_service_stream

    with pytest.raises(ValueError, match=f"only {secure}, or {plain} on loopback"):
        await open_service_stream(
            url, None, secure=secure, plain=plain, alpn=["h2"], refuse=ValueError
        )
