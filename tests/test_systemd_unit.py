"""systemd/fieldgate.service passes systemd-analyze verify and security (exposure <= 2.0), and
its W^X setting holds for the real dependency set."""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).parent.parent / "systemd"
UNIT = SYSTEMD / "fieldgate.service"
EXEC_START = "/opt/fieldgate/venv/bin/fieldgate"
# The goal; --threshold takes the 0-100 scale (20 means 2.0).
MAX_EXPOSURE = 2.0


def unit_settings() -> dict[str, list[str]]:
    """Every key of [Service] with all its values (repeated keys accumulate)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


PUSH_UNIT = SYSTEMD / "fieldgate-push.service"


def verifiable_copy(tmp_path: Path, original: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at a binary that exists here (verify checks it)."""
    text = original.read_text()
    assert EXEC_START in text
    copy = tmp_path / original.name
    copy.write_text(text.replace(EXEC_START, sys.executable))
    return copy


@pytest.mark.parametrize("original", [UNIT, PUSH_UNIT], ids=["gateway", "push-service"])
def test_unit_passes_systemd_analyze_verify(tmp_path, original):
    unit = verifiable_copy(tmp_path, original)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    # Unknown keys or bad values are only warnings: none is allowed either.
    assert original.name not in result.stderr, result.stderr


@pytest.mark.parametrize("original", [UNIT, PUSH_UNIT], ids=["gateway", "push-service"])
def test_unit_exposure_is_at_most_two(tmp_path, original):
    unit = verifiable_copy(tmp_path, original)
    command = ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(unit)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout[-500:]
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_a_weak_unit_fails_the_same_check(tmp_path):
    # The check can fail: a unit with no hardening is far above the threshold.
    weak = tmp_path / "weak.service"
    weak.write_text(f"[Service]\nType=notify\nExecStart={sys.executable}\n")
    command = ["systemd-analyze", "security", "--offline=yes", "--threshold=20", str(weak)]
    assert subprocess.run(command, capture_output=True, check=False).returncode != 0


def test_unit_runs_the_installed_gateway_as_a_notify_service():
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == [f"{EXEC_START} run --config /etc/fieldgate/config.toml"]
    assert s["ExecReload"] == ["kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert "WatchdogSec" in s
    assert s["User"] == ["fieldgate"]
    assert s["SupplementaryGroups"] == ["dialout"]
    assert s["StateDirectory"] == ["fieldgate"] and s["StateDirectoryMode"] == ["0700"]
    assert s["ConfigurationDirectory"] == ["fieldgate"]
    assert s["RuntimeDirectory"] == ["fieldgate"]
    assert s["DevicePolicy"] == ["closed"]
    assert all(rule.startswith("char-tty") for rule in s["DeviceAllow"])
    assert "PrivateDevices" not in s  # would hide the serial devices
    assert s["CapabilityBoundingSet"] == [""]
    assert s["MemoryDenyWriteExecute"] == ["yes"]


def test_sysusers_declares_the_units_user():
    lines = [
        line.split()
        for line in (SYSTEMD / "fieldgate.sysusers").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0][:2] == ["u", "fieldgate"]


def test_dependencies_work_with_memory_deny_write_execute(tmp_path):
    # PR_SET_MDWE (Linux >= 6.3) applies the same W^X rule as MemoryDenyWriteExecute=yes.
    program = textwrap.dedent(
        """
        import ctypes, mmap
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1
        if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            raise SystemExit(f"PR_SET_MDWE unsupported (errno {ctypes.get_errno()})")
        try:
            mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        except PermissionError:
            pass
        else:
            raise SystemExit("W^X is not in force")
        import sqlite3, ssl, h2.connection, h11, msgpack, serial, paho.mqtt.client, trio
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF
        a, b = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        key = HKDF(hashes.SHA256(), 16, None, b"info").derive(a.exchange(ec.ECDH(), b.public_key()))
        box = AESGCM(key)
        assert box.decrypt(b"n" * 12, box.encrypt(b"n" * 12, b"hi", None), None) == b"hi"
        db = sqlite3.connect(":memory:")
        db.create_function("twice", 1, lambda x: 2 * x)
        assert db.execute("select twice(21)").fetchone() == (42,)
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
        assert callback(1) == 2
        import gateway.cli
        assert gateway.cli.main(["version"]) == 0
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("fieldgate ")


def test_unit_file_is_plain_ini():
    # systemd's parser is not configparser, but a file configparser cannot read usually has a
    # typo (a stray line outside any section).
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Install"]["WantedBy"] == "multi-user.target"


# -- the push service's unit (verify and exposure: parametrized above) --------------------------
def test_push_unit_runs_a_config_file_node_that_drains_and_reloads_tls():
    parser = configparser.RawConfigParser(strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(PUSH_UNIT.read_text())
    s = parser["Service"]
    assert s["Type"] == "notify"
    assert s["ExecStart"].endswith("push-service --config /etc/fieldgate-push/push-service.toml")
    assert s["ExecReload"] == "kill -HUP $MAINPID"  # SIGHUP: TLS reload
    assert float(s["TimeoutStopSec"].rstrip("s")) > 30  # room for the 30 s SIGTERM drain
    assert s["User"] == "fieldgate-push" and s["CapabilityBoundingSet"] == ""
    assert s["PrivateDevices"] == "yes" and s["MemoryDenyWriteExecute"] == "yes"
    users = (SYSTEMD / "fieldgate-push.sysusers").read_text().split()
    assert users[users.index("u") + 1] == "fieldgate-push"


def test_psycopg_works_with_memory_deny_write_execute():
    program = textwrap.dedent(
        """
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
            raise SystemExit(f"PR_SET_MDWE unsupported (errno {ctypes.get_errno()})")
        import psycopg, pushservice.cli, pushservice.store_postgres
        try:
            psycopg.connect("host=127.0.0.1 port=1 connect_timeout=1")
        except psycopg.OperationalError:
            pass  # libpq loaded, called and answered: that is what W^X could have broken
        print(psycopg.pq.version())
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout) >= 100000
