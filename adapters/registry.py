"""Every adapter kind in one table: ``type = "mqtt"`` -> its settings, targets and adapter class.

A kind's schema and checks live beside its code (``adapters/<kind>_config.py``, each exporting an
:class:`~adapters.kind.AdapterKind`); the gateway's configuration loader and
:func:`build_adapter` read them from :data:`KINDS` only, so a new transport is one new module
plus one line here. The adapter classes are imported when an adapter is built, so checking a
configuration loads neither paho nor pyserial.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from adapters.base import Adapter, AdapterConfig
from adapters.kind import AdapterKind
from adapters.log_config import LOG
from adapters.mqtt_config import MQTT
from adapters.serial_config import SERIAL
from fieldgate_common.metrics import Metrics

KINDS: Mapping[str, AdapterKind] = {kind.name: kind for kind in (MQTT, SERIAL, LOG)}


def kind_of(settings: AdapterConfig) -> AdapterKind:
    """The kind whose settings class ``settings`` is."""
    for kind in KINDS.values():
        if type(settings) is kind.settings:
            return kind
    raise LookupError(f"no adapter kind for {type(settings).__name__}")


def build_adapter(settings: AdapterConfig, metrics: Metrics) -> Adapter:
    """A new adapter for ``settings`` (its module imported now)."""
    module_name, _, class_name = kind_of(settings).factory.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    adapter: Adapter = cls(settings, metrics=metrics)
    return adapter
