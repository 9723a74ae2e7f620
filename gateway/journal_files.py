"""The journal's files as the running store sees them: are they still the ones it opened?

SQLite keeps writing to the files it opened. Deleted (``rm``), their inodes live on until the
process ends, so every commit "succeeds" and is lost at the next start; replaced (``mv`` or a
restore over it), commits go to a file nobody will read; truncated, the data under the
connection is gone. :class:`JournalFiles` remembers the identity (device, inode) of the
database and its WAL when the store opened them and the largest size the database file has had
(it never shrinks in our use: no VACUUM, no auto_vacuum), and :meth:`JournalFiles.problem` says
what happened to them since, from two ``stat`` calls (a few microseconds: cheap enough for
every commit). Deeper damage (a page overwritten in place) is for ``PRAGMA quick_check``,
which the store runs rarely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from gateway.store_types import JournalProblem


@dataclass(frozen=True)
class _Identity:
    device: int
    inode: int


def _identity(path: Path) -> tuple[_Identity, int] | None:
    """(device, inode) and size; None when the path is gone (other errors raise OSError)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return _Identity(st.st_dev, st.st_ino), st.st_size


def _size(path: Path) -> int:
    """A file's size now; 0 when it is gone or cannot be looked at."""
    try:
        found = _identity(path)
    except OSError:
        return 0
    return 0 if found is None else found[1]


def _statvfs(directory: Path) -> os.statvfs_result | None:
    try:
        return os.statvfs(directory)
    except OSError:
        return None


def disk_size(directory: Path) -> int | None:
    """The size of the filesystem holding ``directory`` (None when ``statvfs`` fails)."""
    found = _statvfs(directory)
    return None if found is None else found.f_blocks * found.f_frsize


class JournalFiles:
    """Identity and size of the journal's database and WAL files since the store opened them."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.wal = db.with_name(db.name + "-wal")
        opened = _identity(db)
        if opened is None:
            raise FileNotFoundError(db)
        self._db_identity, self._db_size_floor = opened
        wal = _identity(self.wal)
        self._wal_identity = wal[0] if wal is not None else None

    def note_size(self) -> None:
        """After a commit (a checkpoint may have grown the file): raise the size floor."""
        try:
            now = _identity(self.db)
        except OSError:
            return
        if now is not None and now[0] == self._db_identity:
            self._db_size_floor = max(self._db_size_floor, now[1])

    def wal_bytes(self) -> int:
        """The WAL file's size on disk now (0 when there is none or it cannot be looked at)."""
        return _size(self.wal)

    def db_bytes(self) -> int:
        """The database file's size on disk now (0 when it cannot be looked at)."""
        return _size(self.db)

    def disk_free(self) -> int | None:
        """Bytes the filesystem holding the journal can still give an unprivileged writer
        (None when ``statvfs`` fails)."""
        found = _statvfs(self.db.parent)
        return None if found is None else found.f_bavail * found.f_frsize

    def problem(self) -> JournalProblem | None:
        """What happened to the files since they were opened, or None (also when ``stat``
        itself fails: that says nothing about the files)."""
        try:
            return self._problem()
        except OSError:
            return None

    def _problem(self) -> JournalProblem | None:
        now = _identity(self.db)
        if now is None:
            return JournalProblem("deleted", f"journal {self.db} was deleted while in use")
        identity, size = now
        if identity != self._db_identity:
            return JournalProblem(
                "replaced", f"journal {self.db} was replaced by another file while in use"
            )
        if size < self._db_size_floor:
            return JournalProblem(
                "truncated",
                f"journal {self.db} shrank from {self._db_size_floor} to {size} bytes while in "
                "use (truncated by something else)",
            )
        self._db_size_floor = size
        if self._wal_identity is not None:
            wal = _identity(self.wal)
            if wal is None:
                return JournalProblem(
                    "deleted", f"the journal's write-ahead log {self.wal} was deleted while in use"
                )
            if wal[0] != self._wal_identity:
                return JournalProblem(
                    "replaced",
                    f"the journal's write-ahead log {self.wal} was replaced while in use",
                )
        return None
