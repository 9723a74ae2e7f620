"""The log adapter's configuration: ``[adapters.NAME]`` with ``type = "log"`` and its targets.

Registered as :data:`LOG` in :mod:`adapters.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from adapters.base import AdapterConfig, TargetConfig
from adapters.kind import AdapterKind, PathConvert
from fieldgate_common import config_values as check
from fieldgate_common import file_checks


@dataclass(frozen=True)
class LogAdapterConfig(AdapterConfig):
    """``[adapters.NAME]`` with ``type = "log"``: writes deliveries to the log or a file."""

    path: Path | None = None  # None: the gateway's log
    type: Literal["log"] = "log"


@dataclass(frozen=True)
class LogTarget(TargetConfig):
    """One ``deliver`` entry naming a log adapter."""


def adapter_specs(path: PathConvert) -> dict[str, check.Convert]:
    """The keys of a log adapter's table."""
    return {"path": path}


def target_specs() -> dict[str, check.Convert]:
    """The keys of a ``deliver`` entry naming a log adapter."""
    return {"payload": check.choice("raw", "envelope")}


def describe(adapter: LogAdapterConfig) -> str:
    """``log /path`` or ``log (the gateway log)``."""
    return f"log {adapter.path if adapter.path is not None else '(the gateway log)'}"


def preflight(adapter: LogAdapterConfig) -> list[tuple[str, str]]:
    """The file must be one that can be appended to (not a directory, its directory there)."""
    if adapter.path is None:
        return []
    problem = file_checks.writable_file(adapter.path)
    return [] if problem is None else [("path", problem)]


LOG = AdapterKind(
    name="log",
    settings=LogAdapterConfig,
    target=LogTarget,
    adapter_specs=adapter_specs,
    target_specs=target_specs,
    factory="adapters.log:LogAdapter",
    preflight=preflight,
    describe=describe,
)
