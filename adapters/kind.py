"""What the gateway knows of one kind of transport: :class:`AdapterKind` (see adapters.registry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.base import AdapterConfig, TargetConfig
from fieldgate_common.config_problems import TableReader
from fieldgate_common.config_source import KeyPath
from fieldgate_common.config_values import Convert

PathConvert = Callable[[object], Path]


def _no_checks(reader: TableReader, path: KeyPath, settings: Any, failed: set[str]) -> None:
    return None


def _nothing_exclusive(settings: Any) -> tuple[str, str] | None:
    return None


def _nothing_to_add(target: Any) -> str:
    return ""


def _no_preflight(settings: Any) -> list[tuple[str, str]]:
    return []


@dataclass(frozen=True)
class AdapterKind:
    """What the gateway needs to know about one kind of transport."""

    name: str  # the value of "type" in [adapters.NAME]
    settings: type[AdapterConfig]
    target: type[TargetConfig]
    # The keys of [adapters.NAME] (besides "type") with their converters; paths are converted
    # relative to the configuration file by the given converter.
    adapter_specs: Callable[[PathConvert], dict[str, Convert]]
    target_specs: Callable[[], dict[str, Convert]]
    factory: str  # "module:Class", imported by build_adapter
    required: tuple[str, ...] = ()
    # Cross-field checks of one adapter's settings (reported through the reader).
    check: Callable[[TableReader, KeyPath, Any, set[str]], None] = _no_checks
    # A resource only one adapter may hold, as (key, value): a serial line, for instance.
    exclusive: Callable[[Any], tuple[str, str] | None] = _nothing_exclusive
    # What `check-config` can know of the machine: (key, problem) for files that are missing,
    # directories that cannot be written, ...
    preflight: Callable[[Any], list[tuple[str, str]]] = _no_preflight
    # A one-line summary of an adapter for `check-config --show` (secrets masked as "***").
    describe: Callable[[Any], str] = repr
    # What a target of this kind adds to the summary (", topic x, qos 1"), or "".
    describe_target: Callable[[Any], str] = _nothing_to_add
    # Keys holding a secret given inline (warned about when the file is world-readable).
    secret_keys: tuple[str, ...] = ()
