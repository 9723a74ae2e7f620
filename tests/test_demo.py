"""`fieldgate demo` end to end: every message completes its journey, and it cleans up."""

from __future__ import annotations

import io
import shutil

import pytest

from gateway import demo


async def test_the_demo_shows_every_journey_through_mqtt_and_the_serial_simulator(
    tmp_path, monkeypatch
):
    assert shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
    assert demo.FBSIM.exists(), "make -C firmware-bridge builds the simulator"
    out = io.StringIO()
    monkeypatch.setattr(demo.sys, "stdout", out)
    assert await demo.run_demo(tmp_path) == 0
    text = out.getvalue()
    for label in ("valve-1", "valve-2", "telemetry"):
        assert f"{label}" in text
    assert "3/3 delivered to devices; gateway health: ok" in text
    assert "the C device simulator processed it" in text or "application ACK" in text
    assert "MQTT subscriber got it on greenhouse/site-telemetry/" in text
    assert text.count("receipt back  (HTTP 204)") == 3


async def test_the_demo_on_the_autopush_protocol(tmp_path, monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(demo.sys, "stdout", out)
    assert await demo.run_demo(tmp_path, autopush=True) == 0
    text = out.getvalue()
    assert "autopush double" in text and "ws://127.0.0.1:" in text
    assert "3/3 delivered to devices; gateway health: ok" in text
    assert text.count("acknowledged upstream") == 3
    assert "receipt back" not in text.split("summary")[0]  # autopush sends no receipts


def test_the_demo_removes_its_directory():
    with pytest.MonkeyPatch.context() as mp:
        seen = []
        mp.setattr(
            demo,
            "run_demo",
            lambda workdir, keep_running=False, autopush=False: seen.append(workdir),
        )
        mp.setattr(demo.trio, "run", lambda fn: fn() or 0)
        assert demo.main() == 0
    assert seen and not seen[0].exists()
