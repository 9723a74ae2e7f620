"""The serial adapter's configuration: ``[adapters.NAME]`` with ``type = "serial"`` and its targets.

Registered as :data:`SERIAL` in :mod:`adapters.registry`. Imports neither pyserial nor trio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from adapters.base import AdapterConfig, PayloadForm, TargetConfig
from adapters.kind import AdapterKind, PathConvert
from fieldgate_common import config_values as check
from fieldgate_common.config_problems import TableReader
from fieldgate_common.config_source import KeyPath


@dataclass(frozen=True)
class SerialAdapterConfig(AdapterConfig):
    """``[adapters.NAME]`` with ``type = "serial"``."""

    port: str  # prefer /dev/serial/by-id/... paths: they survive re-enumeration
    baud: int = 115200
    parity: Literal["none", "even", "odd"] = "none"
    stop_bits: Literal[1, 2] = 1
    rtscts: bool = False
    rs485: bool = False  # drive RTS as the RS-485 transmit enable
    rs485_rts_level_for_tx: bool = True
    rs485_delay_before_tx: float = 0.0
    rs485_delay_before_rx: float = 0.0
    ping_interval: float = 10.0
    ack_timeout: float | None = None  # None: derived from the baud rate and frame size
    max_tries: int = 5
    reopen_base: float = 1.0
    reopen_cap: float = 30.0
    type: Literal["serial"] = "serial"


@dataclass(frozen=True)
class SerialTarget(TargetConfig):
    """One ``deliver`` entry naming a serial adapter."""

    payload: PayloadForm = "envelope"


def adapter_specs(path: PathConvert) -> dict[str, check.Convert]:
    """The keys of a serial adapter's table."""
    return {
        "port": check.nonempty_text,
        "baud": check.integer(1, 2**31 - 1),
        "parity": check.choice("none", "even", "odd"),
        "stop_bits": check.one_of_integers(1, 2),
        "rtscts": check.boolean,
        "rs485": check.boolean,
        "rs485_rts_level_for_tx": check.boolean,
        "rs485_delay_before_tx": check.duration(allow_zero=True),
        "rs485_delay_before_rx": check.duration(allow_zero=True),
        "ping_interval": check.duration(),
        "ack_timeout": check.duration(),
        "max_tries": check.integer(1, 1000),
        "reopen_base": check.duration(),
        "reopen_cap": check.duration(),
    }


def target_specs() -> dict[str, check.Convert]:
    """The keys of a ``deliver`` entry naming a serial adapter."""
    return {"payload": check.choice("raw", "envelope")}


def check_settings(
    reader: TableReader, path: KeyPath, serial: SerialAdapterConfig, failed: set[str]
) -> None:
    """Checks across the keys of one serial adapter."""
    reader.order(
        path, ("reopen_base", serial.reopen_base), ("reopen_cap", serial.reopen_cap), failed
    )
    if serial.rs485 and serial.rtscts:
        reader.error(
            (*path, "rtscts"),
            "rtscts = true cannot be combined with rs485 = true: both drive the RTS line",
        )


def exclusive(serial: SerialAdapterConfig) -> tuple[str, str]:
    """Two adapters on one line would interleave frames and steal each other's ACKs."""
    return ("port", serial.port)


def describe(adapter: SerialAdapterConfig) -> str:
    """``serial /dev/ttyUSB0 115200 baud 8N1, RTS/CTS``."""
    frame = f"8{adapter.parity[0].upper()}{adapter.stop_bits}"
    extras = "".join([", RTS/CTS" if adapter.rtscts else "", ", RS-485" if adapter.rs485 else ""])
    return f"serial {adapter.port} {adapter.baud} baud {frame}{extras}"


SERIAL = AdapterKind(
    name="serial",
    settings=SerialAdapterConfig,
    target=SerialTarget,
    adapter_specs=adapter_specs,
    target_specs=target_specs,
    factory="adapters.serial:SerialAdapter",
    required=("port",),
    check=check_settings,
    exclusive=exclusive,
    describe=describe,
)
