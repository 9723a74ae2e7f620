"""The state directory's run lock, marker and status address (real files, real flock)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from gateway import statedir
from gateway.statedir import AlreadyRunning

# A child that takes the run lock like a gateway, says so, then waits to be killed.
HOLDER = """
import sys, time
from pathlib import Path
from gateway.statedir import acquire_run_lock
lock = acquire_run_lock(Path(sys.argv[1]))
print("locked", flush=True)
time.sleep(60)
"""


def test_one_holder_at_a_time(tmp_path):
    state = tmp_path / "state"
    lock = statedir.acquire_run_lock(state)
    assert (state / statedir.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    assert oct(state.stat().st_mode & 0o777) == "0o700"
    started = time.monotonic()
    with pytest.raises(AlreadyRunning) as second:
        statedir.acquire_run_lock(state)  # flock is per open file: a second open conflicts
    assert second.value.pid == os.getpid()
    assert f"already running (pid {os.getpid()})" in str(second.value)
    assert time.monotonic() - started >= statedir.LOCK_PROBE_GRACE * 0.9
    lock.release()
    statedir.acquire_run_lock(state).release()  # free again


def test_the_cli_finds_the_running_gateway_and_wakes_only_it(tmp_path):
    state = tmp_path / "state"
    assert statedir.running_gateway(state) is None  # nothing there: nothing created
    assert not state.exists()
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(state)], stdout=subprocess.PIPE, text=True
    )
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        assert statedir.running_gateway(state) == holder.pid
        # The probe (a shared lock for a moment) does not get in a starting gateway's way.
        with pytest.raises(AlreadyRunning):
            statedir.acquire_run_lock(state, grace=0.0)
        # A pid in the file that is not the holder's (reused, another namespace): not signalled.
        (state / statedir.LOCK_NAME).write_text(f"{bystander.pid}\n")
        nudge = statedir.nudge_gateway(state)
        assert nudge == statedir.Nudge(bystander.pid, False)
        assert bystander.poll() is None  # SIGUSR1 would have ended it
        (state / statedir.LOCK_NAME).write_text(f"{holder.pid}\n")
        assert statedir.nudge_gateway(state) == statedir.Nudge(holder.pid, True)
        assert holder.wait(10) == -signal.SIGUSR1  # no handler in this child: it ends
    finally:
        for proc in (holder, bystander):
            proc.kill()
            proc.wait()
    assert statedir.running_gateway(state) is None  # the kernel released it


def test_marker_and_status_address(tmp_path):
    state = tmp_path / "state"
    statedir.prepare(state)
    assert statedir.journal_marker(state) is None
    statedir.mark_journal_created(state, state / "journal.sqlite3", 0.0)
    assert statedir.journal_marker(state) == (
        "journal journal.sqlite3 created 1970-01-01 00:00:00 UTC"
    )
    assert statedir.read_status_address(state) is None
    statedir.write_status_address(state, "127.0.0.1:40123")
    assert statedir.read_status_address(state) == "127.0.0.1:40123"
    statedir.remove_status_address(state)
    assert statedir.read_status_address(state) is None
    assert sorted(p.name for p in state.iterdir()) == [statedir.JOURNAL_MARKER]


def test_a_full_disk_leaves_no_staging_file(tmp_path):
    # Each start on a full disk left an empty ".status.address.PID" behind (the chaos run).
    from tests.chaos_peers import fill_disk, tmpfs

    with tmpfs(tmp_path / "disk", "1m") as disk:
        state = disk / "state"
        statedir.prepare(state)
        fill_disk(disk / "filler")
        with pytest.raises(OSError):
            statedir.write_status_address(state, "127.0.0.1:40123")
        assert sorted(p.name for p in state.iterdir()) == []
        (disk / "filler").unlink()
        statedir.write_status_address(state, "127.0.0.1:40123")
        assert statedir.read_status_address(state) == "127.0.0.1:40123"
