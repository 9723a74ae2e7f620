"""``fieldgate push-service --config FILE``: what a good file gives, and how mistakes are told."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fieldgate_common.config_problems import ConfigError
from pushservice.config import load_push_config, parse_push_config

GOOD = """
[service]
listen = "[::1]:9443"
public_url = "https://push.example.com"
tls_cert = "cert.pem"
tls_key = "key.pem"
proxy_protocol = true
redelivery_after = "45s"
drain_timeout = "10s"

[storage]
url = "postgresql://fieldgate@db.internal/push"
threads = 4

[limits]
max_body = "8KiB"
max_ttl = "7d"
messages_per_subscription = 500
subscriptions_per_connection = 50
requests_per_second_per_address = 20
pushes_per_second_per_resource = 5.5
require_vapid = true
max_concurrent_streams = 256

[status]
listen = "127.0.0.1:9101"

[log]
level = "warning"
"""


def _files(tmp_path: Path) -> Path:
    (tmp_path / "cert.pem").write_text("x")
    (tmp_path / "key.pem").write_text("x")
    return tmp_path / "push.toml"


def test_a_full_file(tmp_path: Path) -> None:
    config = parse_push_config(GOOD, _files(tmp_path))
    assert (config.host, config.port) == ("::1", 9443)
    assert config.tls_cert == tmp_path / "cert.pem" and config.proxy_protocol
    assert config.storage == "postgresql://fieldgate@db.internal/push"
    s = config.settings
    assert s.public_url == "https://push.example.com" and s.redelivery_after == 45
    assert (s.max_body, s.max_ttl, s.max_messages_per_subscription) == (8192, 7 * 86400, 500)
    assert (s.requests_per_address, s.pushes_per_resource, s.require_vapid) == (20, 5.5, True)
    assert (s.store_threads, s.max_concurrent_streams, s.drain_timeout) == (4, 256, 10)
    assert (config.status_listen, config.log_level) == ("127.0.0.1:9101", "warning")


def test_an_empty_file_is_a_development_node_on_sqlite_in_memory(tmp_path: Path) -> None:
    config = parse_push_config("", tmp_path / "push.toml")
    assert (config.host, config.port, config.storage) == ("127.0.0.1", 8443, None)
    text = '[storage]\nurl = "sqlite:///var/lib/fieldgate-push/push.sqlite3"\n'
    on_disk = parse_push_config(text, tmp_path / "p.toml")
    assert on_disk.storage == "sqlite:///var/lib/fieldgate-push/push.sqlite3"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[service]\nlisen = '1.2.3.4:5'\n",
            'push.toml:2: service.lisen: unknown key (did you mean "listen"?)',
        ),
        (
            "[service]\nlisten = 8443\n",
            "push.toml:2: service.listen: expected a string, found an integer (8443)",
        ),
        (
            "[service]\n\npublic_url = 'http://push.example.com'\n",
            "push.toml:3: service.public_url: http:// is allowed only",
        ),
        ("[limits]\nmax_body = 100\n", "push.toml:2: limits.max_body: must be at least 4096 bytes"),
        (
            "[limits]\nrequire_vapid = 'yes'\n",
            "push.toml:2: limits.require_vapid: expected true or false",
        ),
        ("[storage]\nurl = 'mysql://x'\n", "push.toml:2: storage.url: expected a URL starting"),
        (
            "[storage]\nurl = 'postgresql://db/push'\n",
            "push.toml:2: storage.url: several nodes on one database need [service] public_url",
        ),
        (
            "[service]\ntls_cert = 'cert.pem'\n",
            "push.toml:2: service.tls_cert: tls_cert needs tls_key",
        ),
        ("[service]\ntls_key = 'missing.pem'\n", "push.toml:2: service.tls_key: cannot read"),
        ("[servce]\n", 'push.toml:1: servce: unknown table (did you mean "service"?)'),
        ("[service\n", "push.toml:1: invalid TOML"),
        ("[status]\nlisten = '0.0.0.0'\n", 'push.toml:2: status.listen: expected "HOST:PORT"'),
    ],
)
def test_mistakes_name_file_line_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    (tmp_path / "cert.pem").write_text("x")
    with pytest.raises(ConfigError) as caught:
        parse_push_config(text, tmp_path / "push.toml")
    rendered = str(caught.value).replace(str(tmp_path) + "/", "")
    assert rendered.startswith(expected), rendered


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    text = "[limits]\nmax_body = 1\nrequire_vapid = 2\n[log]\nlevel = 'loud'\n"
    with pytest.raises(ConfigError) as caught:
        parse_push_config(text, tmp_path / "push.toml")
    assert [p.line for p in caught.value.problems] == [2, 3, 5]


def test_an_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_push_config(tmp_path / "absent.toml")


def test_the_command_prints_the_problems_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "push.toml"
    bad.write_text("[service]\nlisten = 'nowhere'\n")
    command = [sys.executable, "-m", "gateway", "push-service", "--config", str(bad)]
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 2
    assert result.stderr.startswith(f"{bad}:2: service.listen: expected"), result.stderr
    assert "Traceback" not in result.stderr
    flags = subprocess.run([*command, "--listen", "127.0.0.1:0"], capture_output=True, text=True)
    assert flags.returncode == 2 and "set these in" in flags.stderr
