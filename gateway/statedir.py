"""The state directory's files besides the journal: who holds it, what it remembers, what it says.

``push.state_dir`` (mode 0700) holds:

- ``journal.sqlite3`` (with ``-wal`` and ``-shm``): the journal, :mod:`gateway.store`;
- ``fieldgate.lock``: the run lock. The running gateway holds an exclusive ``flock`` on it for
  its whole life (the kernel releases it however the process ends) and writes its pid into it;
  a second gateway on the same directory finds it taken and stops. CLI commands never take it:
  they read the pid (to nudge the gateway) and probe it with a shared lock for a moment;
- ``journal.created``: written when a journal is created, so that a later start which finds no
  journal knows one existed (and with it keys and subscriptions application servers still use)
  instead of silently making new ones;
- ``status.address``: the status endpoint's bound address while the gateway runs (a ``listen``
  with port 0 is only known once bound); ``fieldgate status`` reads it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gateway.store_types import StoreError

LOCK_NAME = "fieldgate.lock"
JOURNAL_MARKER = "journal.created"
STATUS_ADDRESS = "status.address"
# A CLI command probing the lock holds it (shared) for microseconds; a starting gateway that finds
# it taken tries again for this long before concluding that another gateway runs.
LOCK_PROBE_GRACE = 0.5
LOCK_RETRY_INTERVAL = 0.02
# The running gateway reads the journal again on this signal (``fieldgate dead-letters replay``
# sends it): USR1, whose default action would end a process, is sent only to a process holding
# the run lock, which every gateway handles from before it takes the lock.
REREAD_SIGNAL = signal.SIGUSR1
# Group- or other-accessible bits: the directory holds private keys and plaintext.
OPEN_TO_OTHERS = 0o077


class AlreadyRunning(StoreError):
    """Another gateway holds the state directory's run lock."""

    def __init__(self, state_dir: Path, pid: int | None) -> None:
        self.state_dir = state_dir
        self.pid = pid
        holder = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"{state_dir} is in use by another gateway: already running ({holder})")


def check_private(path: Path, what: str, fix: str) -> None:
    """Refuse a file or directory that group or others can access."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & OPEN_TO_OTHERS:
        raise StoreError(
            f"{what} {path} is accessible by group or others (mode {mode:03o}); it holds private "
            f"keys and message plaintext: run `chmod {fix} {path}`"
        )


def prepare(state_dir: Path) -> None:
    """Create the state directory (0700) if needed and check it; raises :class:`StoreError`."""
    try:
        if not state_dir.exists():
            state_dir.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the state directory {state_dir}: {exc.strerror or exc}"
        ) from None
    if not state_dir.is_dir():
        raise StoreError(f"state directory {state_dir} exists and is not a directory")
    check_private(state_dir, "state directory", "700")


# -------------------------------------------------------------------------------- the run lock


class RunLock:
    """The exclusive lock of a running gateway on its state directory (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        """Let the lock go (the process's end does it too)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_run_lock(
    state_dir: Path,
    *,
    grace: float = LOCK_PROBE_GRACE,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> RunLock:
    """Take the run lock (creating the directory if needed) and write our pid into it.

    Raises :class:`AlreadyRunning` when another gateway holds it, :class:`StoreError` when the
    directory or the lock file cannot be used.
    """
    prepare(state_dir)
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {path}: {exc.strerror or exc}") from None
    give_up_at = clock() + grace
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if clock() >= give_up_at:
                pid = _read_pid(fd)
                os.close(fd)
                raise AlreadyRunning(state_dir, pid) from None
            sleep(LOCK_RETRY_INTERVAL)
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot write the lock file {path}: {exc.strerror or exc}") from None
    return RunLock(path, fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def running_gateway(state_dir: Path) -> int | None:
    """The pid of the gateway running on ``state_dir`` (0 when its pid is unknown), or None.

    Probes the lock with a shared lock held for a moment (see :data:`LOCK_PROBE_GRACE`); never
    creates anything.
    """
    path = state_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(fd) or 0
        except OSError as exc:
            if exc.errno in (errno.ENOLCK, errno.EINVAL):
                return None  # a file system without locks: no gateway could hold it
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Nudge:
    """What :func:`nudge_gateway` did: ``pid`` None when no gateway runs; ``woken`` False when
    one runs but could not be signalled (another user, its pid unknown)."""

    pid: int | None
    woken: bool


def nudge_gateway(state_dir: Path) -> Nudge:
    """Ask the gateway running on ``state_dir`` to read its journal again (new deliveries).

    The signal goes only to a process that has the lock file open: a pid read from the file
    could be another process's (another pid namespace, a reused pid), and REREAD_SIGNAL would
    end it.
    """
    pid = running_gateway(state_dir)
    if not pid or not _has_open(pid, state_dir / LOCK_NAME):
        return Nudge(pid, False)
    try:
        os.kill(pid, REREAD_SIGNAL)
    except OSError:
        return Nudge(pid, False)
    return Nudge(pid, True)


def _has_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (Linux ``/proc``; False when it cannot tell)."""
    target = str(path.resolve())
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in os.listdir(fd_dir):
            with contextlib.suppress(OSError):
                if os.readlink(fd_dir / fd) == target:
                    return True
    except OSError:
        return False
    return False


# ---------------------------------------------------------------------- the journal's marker


def journal_marker(state_dir: Path) -> str | None:
    """What the marker says about the journal created here (its first line), or None."""
    try:
        text = (state_dir / JOURNAL_MARKER).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"
    return text.strip().splitlines()[0] if text.strip() else "(empty)"


def mark_journal_created(state_dir: Path, db: Path, created_at: float) -> None:
    """Record that a journal exists in ``state_dir`` (durably: written, fsynced, renamed)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created_at))
    text = (
        f"journal {db.name} created {when}\n"
        "A start that finds no journal here refuses to create a new one (new keys, new push\n"
        "resources) unless `fieldgate run --reset` is given.\n"
    )
    _write_atomically(state_dir / JOURNAL_MARKER, text)


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staging, path)
    except BaseException:
        # A full disk: no half-written staging file left behind (one per start, chaos found).
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


# ---------------------------------------------------------------------- the status address


def write_status_address(state_dir: Path, bound: str) -> None:
    """Say where the status endpoint listens (``fieldgate status`` reads it)."""
    _write_atomically(state_dir / STATUS_ADDRESS, bound + "\n")


def read_status_address(state_dir: Path) -> str | None:
    """The running gateway's status address, or None."""
    try:
        text = (state_dir / STATUS_ADDRESS).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def remove_status_address(state_dir: Path) -> None:
    """The endpoint closed."""
    # A read-only or vanished directory: nothing left to tidy.
    with contextlib.suppress(OSError):
        (state_dir / STATUS_ADDRESS).unlink(missing_ok=True)
