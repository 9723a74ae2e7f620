"""``fieldgate dead-letters`` against a real journal written by the store."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import policy
from gateway.cli import main
from gateway.config import load_config
from gateway.routes import RouteTable
from gateway.store import Incoming, Resolution, Store

CONFIG = """\
[push]
service = "http://127.0.0.1:1/subscribe"
state_dir = "{state}"

[adapters.log]
type = "log"

[[routes]]
name = "r"
deliver = [{{ adapter = "log" }}]
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG.format(state=tmp_path / "state"))
    return path


def fill(config: Path) -> None:
    """Two dead letters: undecryptable (id 1), rejected by the target with plaintext (id 2)."""
    loaded = load_config(config)
    store = Store.open(loaded.push.state_dir, journal=loaded.journal)
    base = {"raw_body": b"\x01\x02", "received_at": time.time()}
    batch = [
        Incoming("https://p/m/1", "r", None, headers=(("ttl", "60"),), **base,  # type: ignore[arg-type]
                 failure="auth_tag_mismatch"),
        Incoming("https://p/m/2", "r", b"secret text", headers=(), **base),  # type: ignore[arg-type]
    ]  # fmt: skip
    routes = RouteTable(loaded.routes)
    store.ingest([policy.admit(incoming, routes, time.time()) for incoming in batch])
    [pending] = store.pending_deliveries("r", "0:log")
    store.resolve([Resolution(pending.message.id, "r", "0:log", "rejected", "device said no")])
    store.close()


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["dead-letters", *argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_list_show_replay_purge(config, capsys):
    fill(config)
    status, out, _ = cli(capsys, "--config", str(config), "list")
    assert status == 0
    assert "auth_tag_mismatch" in out and "device said no" in out
    assert "secret text" not in out

    status, out, _ = cli(capsys, "list", "--json", "--config", str(config))
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["id"], r["replayable"]) for r in rows] == [(1, False), (2, True)]

    status, out, _ = cli(capsys, "show", "1", "--config", str(config))
    assert status == 0
    assert "header: ttl: 60" in out and "raw_bytes: 2" in out
    status, out, _ = cli(capsys, "show", "2", "--body", "--config", str(config))
    assert "body: secret text" in out

    status, out, err = cli(capsys, "replay", "1", "--config", str(config))
    assert (status, out) == (1, "")
    assert "no plaintext" in err
    status, out, _ = cli(capsys, "replay", "2", "--config", str(config))
    assert status == 0 and "replayed as message" in out
    assert "no gateway is running" in out and "delivered when the gateway starts" in out

    loaded = load_config(config)
    store = Store.open(loaded.push.state_dir, journal=loaded.journal)
    assert [p.message.body for p in store.pending_deliveries("r", "0:log")] == [b"secret text"]
    assert [d.id for d in store.dead_letters()] == [1]
    store.close()

    # No ids: nothing is deleted without being told so.
    status, out, err = cli(capsys, "purge", "--config", str(config))
    assert (status, out) == (2, "") and "--all" in err
    status, out, err = cli(capsys, "purge", "--all", "--config", str(config))  # not a terminal
    assert (status, out.strip()) == (1, "nothing purged") and "--yes" in err
    assert cli(capsys, "list", "--config", str(config))[1].strip() != "no dead letters"
    status, out, _ = cli(capsys, "purge", "--all", "--yes", "--config", str(config))
    assert (status, out.strip()) == (0, "purged 1 dead letter")
    status, out, _ = cli(capsys, "list", "--config", str(config))
    assert out.strip() == "no dead letters"


def test_unknown_id_fails(config, capsys):
    fill(config)
    assert cli(capsys, "show", "99", "--config", str(config))[0] == 1
    status, _, err = cli(capsys, "replay", "99", "--config", str(config))
    assert status == 1 and "no dead letter 99" in err
    assert cli(capsys, "purge", "99", "--config", str(config))[0] == 1


def test_invalid_config_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[push]\n")
    status, _, err = cli(capsys, "--config", str(bad), "list")
    assert status == 2 and "invalid configuration" in err
    status, _, err = cli(capsys, "--config", str(tmp_path / "missing.toml"), "list")
    assert status == 2 and "cannot read" in err


def test_no_journal_yet(config, capsys):
    status, out, _ = cli(capsys, "list", "--config", str(config))
    assert status == 0 and "nothing dead yet" in out
    assert not (config.parent / "state").exists()  # listing creates nothing


def test_as_a_real_command(config):
    fill(config)
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "dead-letters", "list", "--config", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "device said no" in done.stdout
