"""Instructions per message, counted by valgrind: a cost a noisy machine does not move.

Each program under test runs under ``valgrind --tool=callgrind`` (instruction counts of every
thread of the process; peers run natively) twice: once with ``N_SMALL`` messages waiting at the
push service and once with ``N_LARGE``. The difference of the two totals over the difference of
the counts is the cost of one message: interpreter start-up, imports, subscribing, connecting
and shutting down cancel out. Programs, with the processes of ``bench agent`` and ``bench e2e``:

* ingest, gateway: ``bench.agent_gateway drain``, the real Agent and Store: receive (HTTP/2
  server push), decrypt, journal (SQLite on disk, group commit) and acknowledge (DELETE);
* ingest, floor: ``bench.agent_floor drain``, bare h2 + bare cryptography: receive, decrypt,
  DELETE, nothing kept;
* end to end, gateway: ``fieldgate run`` with the end-to-end benchmark's configuration (one MQTT
  QoS 1 route, one idle serial route to fbsim), until the MQTT subscriber has every message;
* end to end, floor: ``bench.e2e_floor live``: bare h2 + cryptography + a bare paho QoS 1
  publish of each payload, to the same subscriber.

Under valgrind a program runs ~50x slower while its peers do not, so the drains arrive in large
batches (as a backlog does natively too); the count is for that regime.

The field's regime, every message alone: each end-to-end program also runs connected under
callgrind while ``PACED_MESSAGES`` arrive ``PACED_RATE`` a second (each is done long before the
next comes, even at valgrind's pace); ``callgrind_control`` zeroes the counters before the first
and dumps them after the last, so the window holds those messages and nothing else. Its count
per message beside the drain's says how much more work a message does alone, on any machine;
``bench e2e``'s CPU per message at field rates adds what a cold core costs on this one.

Then the same drains run natively (median CPU of ``ROUNDS``, by the same difference), which gives
this host's instructions per clock on the code (IPC = instructions / (CPU seconds * clock)), and
the Raspberry Pi figures follow from time = instructions / (IPC * clock) with the per-clock
figures in ``PI_CORES`` (cited there). x86-64 and ARM builds of CPython execute similar numbers
of instructions for the same Python code (both are the same C compiled by GCC); that is an
assumption, stated beside the estimate.

``FIELDGATE_BENCH_COUNT_MESSAGES`` (N_LARGE, default 600; N_SMALL is a sixth of it),
``FIELDGATE_BENCH_ROUNDS`` (native rounds, default 3). Raw results:
``bench/results/instructions.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.bench_agent import TTL as AGENT_TTL
from bench.bench_agent import Bench as AgentBench
from bench.bench_agent import Child as AgentChild
from bench.e2e_common import CORE_PEERS, Child, sample
from bench.e2e_procs import MQTT_ROUTE, TOPIC_PREFIX
from bench.e2e_rig import Peers

DEFAULT_MESSAGES = 600  # ~1-2 min per counted run of the gateway here
DEFAULT_ROUNDS = 3
TTL = 86_400  # nothing may expire while valgrind takes its time
# A counted run: start-up under valgrind alone takes ~30-60 s here; each message ~30-100 ms.
COUNTED_LIMIT = 600.0
STALL_LIMIT = 300.0  # no new message at the subscriber for this long: a failure
SETTLE = 3.0  # after the last message: the commits that record the deliveries
POLL = 0.2
PACED_MESSAGES = 20  # the field's regime: one at a time ...
PACED_RATE = 1.0  # ... a second apart (a message takes ~0.3 s under valgrind here)
WARM_UP = 10.0  # after the first message: start-up's deferred work is done before counting
DUMP_LIMIT = 60.0  # for callgrind to write a dump it was asked for
PACED = "-paced"  # the suffix of a program's count one message at a time
RESULTS = Path(__file__).parent / "results" / "instructions.json"


@dataclass(frozen=True)
class PiCore:
    """A Raspberry Pi's core and the per-clock figures the estimate uses."""

    board: str
    core: str
    clock_ghz: float
    peak_ipc: float  # instructions the core can issue per clock: no code runs faster
    ipc_low: float  # the range assumed for this code (an interpreter: branchy, pointer-chasing)
    ipc_high: float  # ... see PI_CORES


# Clocks: raspberrypi.com/documentation/computers/processors.html (BCM2837B0: 4x Cortex-A53 at
# 1.4 GHz on the Pi 3 B+, 1.2 GHz on the Pi 3 B; BCM2711: 4x Cortex-A72 at 1.5 GHz, 1.8 GHz on
# boards made since 2021). Peak issue: Arm's Cortex-A53 TRM (in-order, dual-issue) and Cortex-A72
# TRM (three-wide decode, out of order): no code runs faster than that.
# Sustained IPC on this code is an assumption, anchored twice: the Cortex-A72 is taken to reach
# 27-40% of its peak (0.8-1.2), the fraction this host's four-wide Intel core reaches of its own
# on the same code (measured and printed by this benchmark: 30-40% here); the Cortex-A53 does
# 485/1024 of the Cortex-A72's work per clock, the per-clock capacities Linux gives the two
# cores of one SoC (arch/arm64/boot/dts/rockchip/rk3399.dtsi, capacity-dmips-mhz).
A53_PER_A72_CLOCK = 485 / 1024
PI_CORES = (
    PiCore(
        "Raspberry Pi 3 B+",
        "Cortex-A53",
        1.4,
        2.0,
        0.8 * A53_PER_A72_CLOCK,
        1.2 * A53_PER_A72_CLOCK,
    ),
    PiCore("Raspberry Pi 4 B", "Cortex-A72", 1.5, 3.0, 0.8, 1.2),
)
# This host's peak, for the fraction printed beside the assumption: Intel's cores since Sandy
# Bridge decode four instructions per clock (the micro-op cache can feed more).
HOST_PEAK_IPC = 4.0


@dataclass(frozen=True)
class Count:
    """Instructions of one counted run."""

    program: str
    messages: int
    instructions: int


def callgrind(out: Path) -> list[str]:
    """The valgrind prefix that counts every instruction of the process (no cache model)."""
    return ["valgrind", "--tool=callgrind", "--quiet", f"--callgrind-out-file={out}"]


def instructions_in(out: Path) -> int:
    """The total of a callgrind output file (its ``summary:`` line, event Ir)."""
    for line in out.read_text().splitlines():
        if line.startswith("summary:"):
            return int(line.split()[1])
    raise RuntimeError(f"no summary line in {out}")


def callgrind_control(action: str, pid: int) -> None:
    """``-z`` (zero the counters) or ``-d`` (dump them) in the running program ``pid``."""
    subprocess.run(["callgrind_control", action, str(pid)], check=True, capture_output=True)


def dumped(out: Path, before: set[Path]) -> Path:
    """The dump callgrind wrote beside ``out`` (``out.1``, ``out.2``...) that is not in
    ``before``, once it is complete."""
    deadline = time.monotonic() + DUMP_LIMIT
    while time.monotonic() < deadline:
        for part in set(out.parent.glob(out.name + ".*")) - before:
            if "summary:" in part.read_text():
                return part
        time.sleep(POLL)
    raise RuntimeError(f"callgrind wrote no dump beside {out}")


class IngestRig(AgentBench):
    """The agent benchmark's push service, sender and template state for N messages; the
    client (gateway or floor) runs under callgrind when ``counted`` is set."""

    def __init__(self, workdir: Path, messages: int) -> None:
        workdir.mkdir()
        super().__init__(workdir, messages)
        self.counted: Path | None = None

    def client(self, variant: str, mode: str, profile: str = "") -> Any:
        if self.counted is None:
            return super().client(variant, mode, profile)
        self.run_limit = COUNTED_LIMIT
        if variant == "floor":
            args = ["-m", "bench.agent_floor", mode, str(self.keys), str(self.messages)]
        else:
            args = self._gateway_args(mode, self._fresh_state(), profile)
        return Child([*callgrind(self.counted), sys.executable, *args])

    def run(self, variant: str, mode: str, profile: str = "") -> dict[str, Any]:
        # A fresh sender each time: the agent benchmark's keeps one HTTP/1.1 connection, which
        # the push service closes when it idles through a counted run.
        self.sender.stop()
        args = ["-m", "bench.agent_sender", str(self.keys), str(self.messages), str(AGENT_TTL)]
        self.sender = AgentChild(args, core=CORE_PEERS, stdin=True)
        self.sender.expect("ready", COUNTED_LIMIT)
        return dict(super().run(variant, mode, profile))

    def count(self, variant: str, out: Path) -> Count:
        self.counted = out
        try:
            self.run(variant, "drain")
        finally:
            self.counted = None
        return Count(f"ingest-{variant}", self.messages, instructions_in(out))

    def cpu(self, variant: str) -> float:
        """CPU seconds of one native drain (the client's own report)."""
        return float(self.run(variant, "drain")["cpu_seconds"])


class EndToEndRig:
    """The end-to-end benchmark's peers and a gateway state holding only the two
    subscriptions, restored before every run."""

    def __init__(self, workdir: Path, largest: int) -> None:
        self.peers = Peers(workdir)
        self.workdir = workdir
        self.config = self.peers.config
        self.peers.subscribe("gateway-setup.log").stop()
        self.state = workdir / "state"
        self.template = workdir / "state-template"
        shutil.copytree(self.state, self.template)
        self.subscriber, self.sender = self.peers.clients(TTL, {MQTT_ROUTE: largest})

    def _program(self, variant: str) -> list[str]:
        if variant == "gateway":
            return [sys.executable, "-m", "gateway", "run", "--config", str(self.config)]
        peers = self.peers
        floor = ["-m", "bench.e2e_floor", "live", str(peers.keys_file), str(peers.mqtt_port)]
        return [sys.executable, *floor, TOPIC_PREFIX + "floor"]

    def drain(self, variant: str, messages: int, counted: Path | None) -> float:
        """Queue ``messages``, run the program until the subscriber has them all, stop it.
        Returns its CPU seconds (meaningful when not counted)."""
        self.sender.send(cmd="post", route=MQTT_ROUTE, count=messages, rate=0.0, times=False)
        self.sender.expect("sent", COUNTED_LIMIT)
        self.subscriber.ask("reset", COUNTED_LIMIT, cmd="reset")
        self._restore_state()
        prefix = callgrind(counted) if counted is not None else []
        program = Child([*prefix, *self._program(variant)], stderr=self.workdir / "runs.log")
        try:
            self._delivered(messages, program, variant)
        except RuntimeError:
            program.stop()
            raise
        time.sleep(SETTLE)
        cpu = sample(program.pid).cpu
        program.stop(COUNTED_LIMIT)
        return cpu

    def count(self, variant: str, messages: int, out: Path) -> Count:
        self.drain(variant, messages, out)
        return Count(f"e2e-{variant}", messages, instructions_in(out))

    def paced(self, variant: str, messages: int, out: Path) -> Count:
        """The program connected under callgrind, ``messages`` arriving one at a time
        (PACED_RATE); the count covers exactly the window from before the first to after the
        last one's delivery and its deferred commits."""
        self._restore_state()
        runs_log = self.workdir / "runs.log"
        program = Child([*callgrind(out), *self._program(variant)], stderr=runs_log)
        try:
            self._send(1, 0.0, program, variant)  # connected, subscribed, one message through
            time.sleep(WARM_UP)
            callgrind_control("-z", program.pid)
            self._send(messages, PACED_RATE, program, variant)
            time.sleep(SETTLE)
            before = set(out.parent.glob(out.name + ".*"))
            callgrind_control("-d", program.pid)
            counted = instructions_in(dumped(out, before))
        finally:
            program.stop(COUNTED_LIMIT)
        return Count(f"e2e-{variant}{PACED}", messages, counted)

    def _restore_state(self) -> None:
        """The gateway state as it was after subscribing: two subscriptions, no messages."""
        shutil.rmtree(self.state)
        shutil.copytree(self.template, self.state)

    def _send(self, messages: int, rate: float, program: Child, variant: str) -> None:
        """POST ``messages`` at ``rate`` (0: at once) and wait until the subscriber has them."""
        self.subscriber.ask("reset", COUNTED_LIMIT, cmd="reset")
        self.sender.send(cmd="post", route=MQTT_ROUTE, count=messages, rate=rate, times=False)
        self.sender.expect("sent", COUNTED_LIMIT + messages / max(rate, 1.0))
        self._delivered(messages, program, variant)

    def _delivered(self, messages: int, program: Child, name: str) -> None:
        """Wait until the subscriber has ``messages`` since its reset; a stall (or the program
        gone) is a RuntimeError."""
        got, last_change = 0, time.monotonic()
        while got < messages:
            time.sleep(POLL)
            now = int(self.subscriber.ask("count", COUNTED_LIMIT, cmd="count")["count"])
            if now != got:
                got, last_change = now, time.monotonic()
            elif time.monotonic() - last_change > STALL_LIMIT or program.proc.poll() is not None:
                raise RuntimeError(f"{name} stuck at {got}/{messages}; see {self.workdir}")

    def close(self) -> None:
        self.peers.close()


def per_message(small: float, large: float, n_small: int, n_large: int) -> float:
    return (large - small) / (n_large - n_small)


def host_clock_ghz() -> float:
    """The clock this machine reports (a VM's nominal clock; turbo is not visible)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("cpu MHz"):
            return float(line.split(":")[1]) / 1000
    raise RuntimeError("no 'cpu MHz' in /proc/cpuinfo")


def host_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def measure(workdir: Path, n_small: int, n_large: int, rounds: int) -> dict[str, Any]:
    """Counted and native runs of the four programs; returns the raw figures."""
    counts: list[Count] = []
    native: dict[str, list[float]] = {}
    rigs = {n: IngestRig(workdir / f"ingest-{n}", n) for n in (n_small, n_large)}
    try:
        for variant in ("floor", "agent"):
            for n, rig in rigs.items():
                print(f"  counting ingest {variant}, {n} messages ...", flush=True)
                counts.append(rig.count(variant, workdir / f"ingest-{variant}-{n}.callgrind"))
            cpus = [
                per_message(
                    rigs[n_small].cpu(variant), rigs[n_large].cpu(variant), n_small, n_large
                )
                for _ in range(rounds)
            ]
            native[f"ingest-{variant}"] = cpus
    finally:
        for rig in rigs.values():
            rig.close()
    e2e = EndToEndRig(workdir / "e2e", n_large)
    try:
        for variant in ("floor", "gateway"):
            for n in (n_small, n_large):
                print(f"  counting end to end {variant}, {n} messages ...", flush=True)
                out = workdir / f"e2e-{variant}-{n}.callgrind"
                counts.append(e2e.count(variant, n, out))
            native[f"e2e-{variant}"] = [
                per_message(
                    e2e.drain(variant, n_small, None),
                    e2e.drain(variant, n_large, None),
                    n_small,
                    n_large,
                )
                for _ in range(rounds)
            ]
            print(f"  counting end to end {variant}, one at a time ...", flush=True)
            paced_out = workdir / f"paced-{variant}.callgrind"
            counts.append(e2e.paced(variant, PACED_MESSAGES, paced_out))
    finally:
        e2e.close()
    return {"counts": [asdict(c) for c in counts], "native_cpu_seconds_per_message": native}


def summarise(raw: dict[str, Any], n_small: int, n_large: int) -> dict[str, Any]:
    """Instructions and CPU per message per program, this host's IPC, the Pi estimates."""
    by_program: dict[str, dict[int, int]] = {}
    paced: dict[str, float] = {}  # program -> instructions per message, one at a time
    for c in raw["counts"]:
        if c["program"].endswith(PACED):
            paced[c["program"].removesuffix(PACED)] = c["instructions"] / c["messages"]
        else:
            by_program.setdefault(c["program"], {})[c["messages"]] = c["instructions"]
    clock = host_clock_ghz()
    programs: dict[str, Any] = {}
    for name, totals in by_program.items():
        instructions = per_message(totals[n_small], totals[n_large], n_small, n_large)
        cpu = statistics.median(raw["native_cpu_seconds_per_message"][name])
        ipc = instructions / (cpu * clock * 1e9) if cpu > 0 else 0.0
        pis = {}
        for pi in PI_CORES:
            rate = pi.clock_ghz * 1e9  # clocks per second
            pis[pi.board] = {
                "bound_us": instructions / (pi.peak_ipc * rate) * 1e6,
                "low_us": instructions / (pi.ipc_high * rate) * 1e6,
                "high_us": instructions / (pi.ipc_low * rate) * 1e6,
            }
        programs[name] = {
            "instructions_per_message": instructions,
            "paced_instructions_per_message": paced.get(name),
            "startup_instructions": totals[n_small] - instructions * n_small,
            "host_cpu_us_per_message": cpu * 1e6,
            "host_ipc": ipc,
            "pi": pis,
        }
    return {"host": host_model(), "host_clock_ghz": clock, "programs": programs}


def print_tables(result: dict[str, Any], n_small: int, n_large: int) -> None:
    programs = result["programs"]
    print(
        f"\nInstructions per message: callgrind totals of runs with {n_large} and {n_small}"
        f" messages waiting, difference / {n_large - n_small} (x86-64, {result['host']},"
        f" {result['host_clock_ghz']:.2f} GHz as reported); native CPU per message by the same"
        " difference, median of the rounds.\n"
    )
    head = (
        f"{'path':12} {'program':8} {'instr/msg':>12} {'vs floor':>9} {'CPU µs/msg':>11} {'IPC':>5}"
    )
    print(head)
    print("-" * len(head))
    for path in ("ingest", "e2e"):
        floor = programs[f"{path}-floor"]
        for variant in ("floor", "agent" if path == "ingest" else "gateway"):
            p = programs[f"{path}-{variant}"]
            ratio = p["instructions_per_message"] / floor["instructions_per_message"]
            # Natively the start-up's CPU varies by tens of ms: with few messages the difference
            # can come out at or below zero, and then says nothing.
            cpu, ipc = p["host_cpu_us_per_message"], p["host_ipc"]
            native = f"{cpu:>11.0f} {ipc:>5.2f}" if cpu > 0 else f"{'n/a':>11} {'n/a':>5}"
            print(
                f"{path:12} {variant:8} {p['instructions_per_message'] / 1e6:>10.2f} M"
                f" {ratio:>8.2f}x {native}"
            )
    print(
        f"\nOne at a time ({PACED_MESSAGES} messages {1 / PACED_RATE:g} s apart, the program"
        " connected throughout): instructions per message beside its drain's\n"
    )
    head = f"{'program':8} {'alone':>10} {'drain':>10} {'alone / drain':>14}"
    print(head)
    print("-" * len(head))
    for variant in ("floor", "gateway"):
        p = programs[f"e2e-{variant}"]
        alone, drained = p["paced_instructions_per_message"], p["instructions_per_message"]
        if alone is not None:
            ratio = alone / drained
            print(f"{variant:8} {alone / 1e6:>8.2f} M {drained / 1e6:>8.2f} M {ratio:>13.2f}x")
    host_ipc = programs["e2e-gateway"]["host_ipc"]
    if host_ipc > 0:
        print(
            f"\nThis host reaches IPC {host_ipc:.2f} on the end-to-end gateway:"
            f" {host_ipc / HOST_PEAK_IPC:.0%} of its {HOST_PEAK_IPC:g}-wide decode."
        )
    print("\nRaspberry Pi estimate: time = instructions / (IPC x clock), µs per message")
    head = f"{'board (core, clock)':38} {'path':7} {'bound':>7} {'expected':>13} {'msg/s':>13}"
    print(head)
    print("-" * len(head))
    for pi in PI_CORES:
        for path, variant in (("ingest", "agent"), ("e2e", "gateway")):
            est = programs[f"{path}-{variant}"]["pi"][pi.board]
            label = f"{pi.board} ({pi.core}, {pi.clock_ghz:g} GHz)"
            print(
                f"{label:38} {path:7} {est['bound_us']:>7.0f} {est['low_us']:>6.0f}-"
                f"{est['high_us']:<6.0f} {1e6 / est['high_us']:>6.0f}-{1e6 / est['low_us']:<6.0f}"
            )
    print(
        "\nbound: at the core's peak issue rate (no code runs faster); expected: at IPC "
        + ", ".join(f"{pi.ipc_low:.2f}-{pi.ipc_high:.2f} ({pi.core})" for pi in PI_CORES)
        + "; one core, ARM instruction counts taken equal to x86-64's."
    )


def main() -> None:
    n_large = int(os.environ.get("FIELDGATE_BENCH_COUNT_MESSAGES", DEFAULT_MESSAGES))
    n_small = max(1, n_large // 6)
    rounds = int(os.environ.get("FIELDGATE_BENCH_ROUNDS", DEFAULT_ROUNDS))
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="fieldgate-bench-instructions-") as tmp:
        raw = measure(Path(tmp), n_small, n_large, rounds)
    result = summarise(raw, n_small, n_large)
    print_tables(result, n_small, n_large)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"n_small": n_small, "n_large": n_large, **raw, **result}, indent=1)
    )
    print(f"\nraw results: {RESULTS}")
