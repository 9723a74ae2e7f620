"""glibc's allocator, set up for a process that runs for years on a small board.

glibc gives each thread that allocates while another holds an arena's lock an arena of its own
(up to eight per core), and an arena returns memory to the kernel only from its top. The trio
worker threads that run the journal's commits come and go (trio's thread cache lets an idle one
exit after ten seconds), each new one may get an arena, and over a long run the gateway's
resident memory crept up in anonymous mappings outside Python's heap (bench e2e's 1M-message
run: +17% from 100,000 to 1,000,000 messages, 40 unnamed mappings holding 46 MiB). Two arenas
(what ``MALLOC_ARENA_MAX=2`` sets) and a trim now and then keep it flat.

Elsewhere than glibc (musl, macOS) these do nothing.
"""

from __future__ import annotations

import ctypes
import functools
import platform

# mallopt parameter from glibc's <malloc.h>.
M_ARENA_MAX = -8
ARENAS = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(None)  # the process's own symbols: libc's among them
    except OSError:
        return None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's arenas (call before the first thread starts); True if it took."""
    libc = _glibc()
    return libc is not None and bool(libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the free memory at the top of every arena (and whole free pages inside them,
    glibc >= 2.8) back to the kernel; True if any was."""
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))
