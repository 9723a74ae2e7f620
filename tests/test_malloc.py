"""glibc's arenas capped and trimmed (fieldgate_common.malloc), in a real child process."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Eight threads that each allocate: glibc gives each new thread an arena of its own until its
# limit, then malloc_stats() writes one "Arena N:" block per arena to stderr. Each thread keeps
# its blocks until all eight have allocated: glibc hands the arena of a thread that has ended to
# the next new one, so threads that happened to run one after another shared one (flaky: 2).
CHILD = """
import ctypes, sys, threading
from fieldgate_common import malloc
if sys.argv[1] == "limit":
    assert malloc.limit_arenas()
all_allocated = threading.Barrier(8)
def work():
    blocks = [bytearray(4096) for _ in range(2000)]
    all_allocated.wait()
    del blocks
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert malloc.trim() in (True, False)
sys.stderr.flush()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str) -> int:
    child = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return sum(1 for line in child.stderr.splitlines() if line.startswith("Arena "))


@pytest.mark.parametrize(("mode", "most"), [("limit", 2), ("default", 64)])
def test_arenas_are_capped_at_two(mode: str, most: int) -> None:
    found = arenas(mode)
    assert 1 <= found <= most
    if mode == "default":
        assert found > 2  # what the cap prevents: an arena per thread
