"""The parts of make pi-check that can be checked without emulating a Pi (the check itself runs
in .ci/run): how pi/e2e.py reads the unit it starts the gateway from, and the host script's
refusals, which come before it touches anything."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
PI_CHECK = REPO / "scripts" / "pi-check"


def load_e2e():
    spec = importlib.util.spec_from_file_location("pi_e2e", REPO / "pi" / "e2e.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pi_e2e"] = module  # dataclasses look their module up while building the class
    spec.loader.exec_module(module)
    return module


e2e = load_e2e()


def test_the_gateway_is_started_as_the_installed_unit_says():
    unit = e2e.Unit.read(REPO / "systemd" / "fieldgate.service")
    assert unit.exec_start == [
        "/opt/fieldgate/venv/bin/fieldgate",
        "run",
        "--config",
        "/etc/fieldgate/config.toml",
    ]
    assert unit.exec_reload == ["kill", "-HUP", "$MAINPID"]
    assert (unit.user, unit.group, unit.supplementary_groups) == (
        "fieldgate",
        "fieldgate",
        ["dialout"],
    )
    assert unit.umask == 0o077
    assert (unit.state_directory, unit.state_directory_mode) == ("fieldgate", 0o700)
    assert unit.watchdog_seconds == 30.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30.0), ("90", 90.0), ("1min 30s", 90.0), ("500ms", 0.5), ("2h", 7200.0)],
)
def test_systemd_time_spans(text, seconds):
    assert e2e.timespan(text) == seconds


def test_a_time_span_in_an_unknown_unit_is_refused():
    with pytest.raises(ValueError, match="unknown time unit 'fortnights'"):
        e2e.timespan("2fortnights")


def test_the_device_record_is_matched_by_body_in_order(tmp_path):
    record = tmp_path / "record"
    sent = [b"valve 0 to 0%", b"valve 1 to 5%"]
    # fbsim's record: "<message id hex> <message hex>", the body inside the envelope verbatim.
    record.write_text(f"00000002 81a4{sent[1].hex()}00\n00000001 {sent[0].hex()}\n")
    assert e2e.device_bodies(record, sent) == [sent[1], sent[0]]
    assert e2e.device_bodies(tmp_path / "nothing", sent) == []


def test_pi_check_refuses_an_unknown_architecture_before_doing_anything(tmp_path):
    result = subprocess.run(
        [str(PI_CHECK), "riscv64"],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/usr/bin:/bin", "PI_CHECK_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 1
    assert "unknown architecture 'riscv64' (arm64 or armhf)" in result.stderr
    assert not (tmp_path / "cache").exists()
