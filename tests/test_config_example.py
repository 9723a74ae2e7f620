"""config.example.toml: valid, documents every option, keeps the issue's sample values."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from adapters.log_config import LogAdapterConfig
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from adapters.serial_config import SerialAdapterConfig, SerialTarget
from fieldgate_common.units import parse_duration
from gateway.config import (
    JournalConfig,
    LogConfig,
    PushConfig,
    RouteConfig,
    StatusConfig,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_the_example_loads_without_problems_or_warnings():
    config = load_config(EXAMPLE, environ={})
    assert config.warnings == ()


def test_the_example_keeps_the_issues_sample_values():
    config = load_config(EXAMPLE, environ={})
    assert config.push.service == "https://push.example.net/subscribe"
    assert config.push.state_dir == Path("/var/lib/fieldgate")
    assert config.push.keepalive == 60.0
    assert config.status.listen == "127.0.0.1:8088"
    assert config.adapters["site-broker"] == MqttAdapterConfig(
        name="site-broker", host="127.0.0.1", port=1883
    )
    valve = config.adapters["valve-controller"]
    assert isinstance(valve, SerialAdapterConfig)
    assert valve.port == "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"
    assert valve.baud == 115200
    route = config.routes[0]
    assert (route.name, route.ack, route.max_age) == ("greenhouse-valves", "delivered", 3600.0)
    assert route.deliver == (
        SerialTarget(adapter="valve-controller"),
        MqttTarget(adapter="site-broker", topic="greenhouse/valves/{id}", qos=1),
    )


def test_every_value_written_in_the_example_is_the_default():
    """The file says 'every other setting is shown with its default': hold it to that."""
    config = load_config(EXAMPLE, environ={})
    assert config.push == PushConfig(service="https://push.example.net/subscribe")
    assert config.status == StatusConfig()
    assert config.journal == JournalConfig()
    assert config.log == LogConfig()
    assert config.adapters["audit"] == LogAdapterConfig(name="audit")
    assert config.adapters["valve-controller"] == SerialAdapterConfig(
        name="valve-controller", port="/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"
    )
    defaults = RouteConfig(name="greenhouse-valves", deliver=config.routes[0].deliver)
    assert dataclasses.replace(config.routes[0], ack="stored", max_age=86400.0) == defaults


def test_every_option_appears_in_the_example():
    text = EXAMPLE.read_text()
    written = set(re.findall(r"^\s*#?\s*([a-z_0-9]+)\s*=", text, flags=re.MULTILINE))
    written |= set(re.findall(r"([a-z_]+) =", text))  # inline deliver options, comments
    for kind in (
        PushConfig,
        StatusConfig,
        JournalConfig,
        LogConfig,
        MqttAdapterConfig,
        SerialAdapterConfig,
        LogAdapterConfig,
        RouteConfig,
        MqttTarget,
        SerialTarget,
    ):
        for option in dataclasses.fields(kind):
            if option.name == "name" and kind not in (RouteConfig,):
                continue  # an adapter's name is its table name
            assert option.name in written, f"{kind.__name__}.{option.name} is not in the example"


def test_the_commented_out_examples_are_valid_too(tmp_path):
    """Uncommenting every '# key = value' line (one table at a time) still loads."""
    lines = EXAMPLE.read_text().splitlines()
    uncommented = []
    for line in lines:
        match = re.match(r"^# ([a-z_0-9]+ = .*)$", line)
        uncommented.append(match.group(1) if match else line)
    text = "\n".join(uncommented)
    # The MQTT example sets both password forms and TLS files without tls = true: pick one.
    text = text.replace('password = "secret"', "").replace("tls = false", "tls = true")
    path = tmp_path / "all.toml"
    path.write_text(text)
    path.chmod(0o600)
    config = load_config(path, environ={})
    assert config.push.urgency == "normal"
    assert config.routes[0].vapid_public_key is not None
    valve = config.adapters["valve-controller"]
    assert isinstance(valve, SerialAdapterConfig)
    assert valve.ack_timeout == parse_duration("200ms")
