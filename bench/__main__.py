"""``python -m bench [NAME ...]``: run the benchmarks (all of them, or those named).

Each ``bench/bench_NAME.py`` module has ``main() -> None`` that prints its own table: every
figure beside its baseline measured in the same run, because ratios hold on a noisy shared
machine and absolute times do not.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def available() -> list[str]:
    """Names of the benchmark modules, sorted."""
    here = Path(__file__).parent
    return sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules([str(here)])
        if m.name.startswith("bench_")
    )


def run(names: list[str]) -> int:
    for name in names:
        module = importlib.import_module(f"bench.bench_{name}")
        print(f"\n## {name}\n", flush=True)
        started = time.perf_counter()
        module.main()
        print(f"\n({name}: {time.perf_counter() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    wanted = sys.argv[1:] or available()
    unknown = sorted(set(wanted) - set(available()))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; have: {', '.join(available())}")
        sys.exit(2)
    sys.exit(run(wanted))
