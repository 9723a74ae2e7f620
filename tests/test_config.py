"""The configuration loader: every rule, every bad file located by key path and line."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.log_config import LogTarget
from adapters.mqtt_config import MqttAdapterConfig, MqttTarget
from adapters.serial_config import SerialAdapterConfig, SerialTarget
from fieldgate_common.units import (
    UnitError,
    format_duration,
    format_size,
    parse_duration,
    parse_size,
)
from gateway.cli import main
from gateway.config import ConfigError, ConfigProblem, format_key_path, load_config, parse_config

SOURCE = Path("/etc/fieldgate/config.toml")
NO_ENV: dict[str, str] = {}
# A valid VAPID public key (the example key of RFC 8292 §3.2's era, on the P-256 curve).
VAPID_KEY = (
    "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
)


def document(
    push: str = "",
    status: str = "",
    mqtt: str = "",
    serial: str = "",
    route: str = "",
    deliver: str = '[{ adapter = "site-broker" }, { adapter = "valve" }]',
    extra: str = "",
) -> str:
    """A valid configuration, with lines added to its tables to make it invalid."""
    return (
        '[push]\nservice = "https://push.example.net/subscribe"\n'
        f"{push}\n"
        f"[status]\n{status}\n"
        f'[adapters.site-broker]\ntype = "mqtt"\n{mqtt}\n'
        f'[adapters.valve]\ntype = "serial"\nport = "/dev/ttyUSB0"\n{serial}\n'
        f'[[routes]]\nname = "valves"\n{route}\ndeliver = {deliver}\n'
        f"{extra}\n"
    )


def problems_of(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, SOURCE, NO_ENV)
    return caught.value.problems


def line_containing(text: str, marker: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if marker in line:
            return number
    raise AssertionError(f"{marker!r} not in the document")


# (id, document, key path, words of the reason, text of the line the problem must point at)
BAD_CONFIGS = [
    (
        "misspelt-key",
        document(push='keepalve = "60s"'),
        "push.keepalve",
        "unknown key",
        "keepalve",
    ),
    (
        "unknown-section",
        document(extra='[[route]]\nname = "x"'),
        "route",
        "unknown section",
        "[[route]]",
    ),
    (
        "port-as-string",
        document(mqtt='port = "1883"'),
        "adapters.site-broker.port",
        'expected an integer, found a string ("1883")',
        'port = "1883"',
    ),
    (
        "http-push-service",
        "[push]\nservice = 'http://push.example.net/subscribe'\n",
        "push.service",
        "http:// is allowed only for a loopback host",
        "service",
    ),
    (
        "ftp-push-service",
        "[push]\nservice = 'ftp://push.example.net/'\n",
        "push.service",
        'expected an https:// or wss:// URL, found "ftp://push.example.net/"',
        "service",
    ),
    (
        "push-service-port-out-of-range",
        "[push]\nservice = 'https://push.example.net:99999/subscribe'\n",
        "push.service",
        "port 99999 out of range (1 to 65535)",
        "service",
    ),
    (
        "distribute-url-port-not-a-number",
        document(route='distribute_url = "https://app.example:80a/subscriptions"'),
        "routes[0].distribute_url",
        'the port "80a" is not a number',
        "distribute_url",
    ),
    (
        "push-without-service",
        '[push]\nkeepalive = "30s"\n',
        "push.service",
        'missing required key "service"',
        "[push]",
    ),
    (
        "no-push-section",
        '[status]\nlisten = "127.0.0.1:1"\n',
        "push",
        "missing required section",
        None,
    ),
    (
        "duplicate-route",
        document(extra='[[routes]]\nname = "valves"  # again\ndeliver = [{ adapter = "valve" }]'),
        "routes[1].name",
        'duplicate route name "valves" (first used by routes[0])',
        "# again",
    ),
    (
        "route-name-with-space",
        document(extra='[[routes]]\nname = "green house"\ndeliver = [{ adapter = "valve" }]'),
        "routes[1].name",
        "must be 1 to 64 letters",
        "green house",
    ),
    (
        "empty-deliver",
        document(deliver="[]"),
        "routes[0].deliver",
        "at least one target",
        "deliver",
    ),
    (
        "deliver-not-array",
        document(deliver='"valve"'),
        "routes[0].deliver",
        "expected an array of targets",
        "deliver",
    ),
    (
        "deliver-entry-not-table",
        document(deliver='["valve"]'),
        "routes[0].deliver[0]",
        'expected a table such as { adapter = "site-broker" }, found a string',
        "deliver",
    ),
    (
        "missing-adapter",
        document(deliver='[{ adapter = "valve" },\n  { adapter = "site-brokr" }]'),
        "routes[0].deliver[1].adapter",
        'no adapter named "site-brokr"',
        "site-brokr",
    ),
    (
        "topic-on-serial",
        document(deliver='[{ adapter = "valve", topic = "a/b" }, { adapter = "site-broker" }]'),
        "routes[0].deliver[0].topic",
        '"topic" is not an option for serial adapter "valve"',
        "deliver",
    ),
    (
        "qos-3",
        document(deliver='[{ adapter = "site-broker", qos = 3 }, { adapter = "valve" }]'),
        "routes[0].deliver[0].qos",
        "expected an integer from 0 to 2, found an integer (3)",
        "deliver",
    ),
    (
        "topic-wildcard",
        document(deliver='[{ adapter = "site-broker", topic = "a/+/b" }, { adapter = "valve" }]'),
        "routes[0].deliver[0].topic",
        "contains a wildcard",
        "deliver",
    ),
    (
        "topic-placeholder",
        document(
            deliver='[{ adapter = "site-broker", topic = "a/{device}" }, { adapter = "valve" }]'
        ),
        "routes[0].deliver[0].topic",
        'unknown placeholder "{device}"',
        "deliver",
    ),
    (
        "vapid-key-short",
        document(route='vapid_public_key = "BNcRdreALRFXTkOOUHK1"'),
        "routes[0].vapid_public_key",
        "decodes to 15 bytes, not 65",
        "vapid_public_key",
    ),
    (
        "vapid-key-off-curve",
        document(
            route='vapid_public_key = "'
            + base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).decode().rstrip("=")
            + '"'
        ),
        "routes[0].vapid_public_key",
        "not on the P-256 curve",
        "vapid_public_key",
    ),
    (
        "vapid-key-plain-base64",
        document(route='vapid_public_key = "BNcR+dre/ALR"'),
        "routes[0].vapid_public_key",
        "base64url uses '-' and '_'",
        "vapid_public_key",
    ),
    (
        "distribute-url-http",
        document(route='distribute_url = "http://app.example.net/subs"'),
        "routes[0].distribute_url",
        "http:// is allowed only for a loopback host",
        "distribute_url",
    ),
    (
        "ack-misspelt",
        document(route='ack = "deliverd"'),
        "routes[0].ack",
        'expected one of "stored", "delivered", found a string ("deliverd")',
        "ack",
    ),
    (
        "queue-full-policy",
        document(route='queue_full = "drop"'),
        "routes[0].queue_full",
        'expected one of "drop-oldest", "refuse-newest"',
        "queue_full",
    ),
    (
        "urgency",
        document(push='urgency = "urgent"'),
        "push.urgency",
        'expected one of "very-low", "low", "normal", "high"',
        "urgency",
    ),
    (
        "negative-duration",
        document(route='max_age = "-1h"'),
        "routes[0].max_age",
        'negative duration "-1h"',
        "max_age",
    ),
    (
        "negative-number-duration",
        document(push="keepalive = -5"),
        "push.keepalive",
        "negative duration -5",
        "keepalive",
    ),
    (
        "duration-garbage-unit",
        document(push='keepalive = "5min"'),
        "push.keepalive",
        '"min" in duration "5min": the units are ms, s, m, h, d',
        "keepalive",
    ),
    (
        "duration-zero",
        document(push='keepalive = "0s"'),
        "push.keepalive",
        "must be greater than zero",
        "keepalive",
    ),
    (
        "backoff-base-above-cap",
        document(push='backoff_base = "10m"\nbackoff_cap = "5m"'),
        "push.backoff_base",
        "backoff_base (10m) must not exceed backoff_cap (5m)",
        "backoff_base",
    ),
    (
        "retry-base-above-default-cap",
        document(route='retry_base = "1h"'),
        "routes[0].retry_base",
        "must not exceed retry_cap (10m)",
        "retry_base",
    ),
    (
        "status-non-loopback",
        document(status='listen = "0.0.0.0:8088"'),
        "status.listen",
        "set allow_remote = true",
        "listen",
    ),
    (
        "status-no-port",
        document(status='listen = "localhost"'),
        "status.listen",
        'expected "HOST:PORT" or "unix:/path", found "localhost"',
        "listen",
    ),
    (
        "status-unix-relative",
        document(status='listen = "unix:run/status"'),
        "status.listen",
        "must be absolute",
        "listen",
    ),
    (
        "status-ipv6-unbracketed",
        document(status='listen = "::1:8088"'),
        "status.listen",
        "in brackets",
        "listen",
    ),
    (
        "cert-without-key",
        document(mqtt='tls = true\ncert_file = "/etc/fieldgate/c.pem"'),
        "adapters.site-broker.cert_file",
        "cert_file needs key_file",
        "cert_file",
    ),
    (
        "ca-file-without-tls",
        document(mqtt='ca_file = "/etc/fieldgate/ca.pem"'),
        "adapters.site-broker.ca_file",
        "tls = false",
        "ca_file",
    ),
    (
        "mqtt-port-range",
        document(mqtt="port = 70000"),
        "adapters.site-broker.port",
        "expected an integer from 1 to 65535, found an integer (70000)",
        "port = 70000",
    ),
    (
        "mqtt-host-url",
        document(mqtt='host = "mqtt://broker.local:1883"'),
        "adapters.site-broker.host",
        "expected a host name or address",
        "host",
    ),
    (
        "mqtt-keepalive-too-long",
        document(mqtt='keepalive = "1d"'),
        "adapters.site-broker.keepalive",
        "expected at most 18h12m15s",
        "keepalive",
    ),
    (
        "password-and-file",
        document(mqtt='password = "x"\npassword_file = "/etc/p"'),
        "adapters.site-broker.password_file",
        "give password or password_file, not both",
        "password_file",
    ),
    (
        "baud-on-mqtt",
        document(mqtt="baud = 9600"),
        "adapters.site-broker.baud",
        '"baud" is an option of serial adapters, not of mqtt adapters',
        "baud",
    ),
    (
        "name-inside-adapter",
        document(mqtt='name = "other"'),
        "adapters.site-broker.name",
        "the adapter's name is its table name",
        'name = "other"',
    ),
    (
        "serial-parity",
        document(serial='parity = "evn"'),
        "adapters.valve.parity",
        'expected one of "none", "even", "odd", found a string ("evn")',
        "parity",
    ),
    (
        "serial-stop-bits",
        document(serial="stop_bits = 3"),
        "adapters.valve.stop_bits",
        "expected 1 or 2, found an integer (3)",
        "stop_bits",
    ),
    (
        "serial-baud-zero",
        document(serial="baud = 0"),
        "adapters.valve.baud",
        "expected an integer from 1 to",
        "baud",
    ),
    (
        "serial-rs485-rtscts",
        document(serial="rs485 = true\nrtscts = true"),
        "adapters.valve.rtscts",
        "both drive the RTS line",
        "rtscts",
    ),
    (
        "serial-without-port",
        document(extra='[adapters.pump]\ntype = "serial"\nbaud = 9600'),
        "adapters.pump.port",
        'missing required key "port"',
        "[adapters.pump]",
    ),
    (
        "two-adapters-one-serial-port",
        document(extra='[adapters.pump]\ntype = "serial"\nport = "/dev/ttyUSB0"  # twice'),
        "adapters.pump.port",
        'is already the port of adapter "valve"',
        "# twice",
    ),
    (
        "adapter-without-type",
        document(extra='[adapters.pump]\nport = "/dev/ttyS0"'),
        "adapters.pump.type",
        'missing required key "type"',
        "[adapters.pump]",
    ),
    (
        "adapter-type-misspelt",
        document(extra='[adapters.pump]\ntype = "seriall"'),
        "adapters.pump.type",
        'expected "mqtt", "serial" or "log", found a string ("seriall")',
        'type = "seriall"',
    ),
    (
        "adapter-name-with-space",
        document(extra='[adapters."pump 2"]\ntype = "log"'),
        'adapters."pump 2"',
        'adapter name "pump 2" must be 1 to 64 letters',
        "pump 2",
    ),
    (
        "size-garbage-unit",
        document(extra='[journal]\nmax_bytes = "12 parsecs"'),
        "journal.max_bytes",
        'unknown unit "parsecs" in size',
        "max_bytes",
    ),
    (
        "size-float",
        document(push="max_message_bytes = 1.5"),
        "push.max_message_bytes",
        "expected a size such as",
        "max_message_bytes",
    ),
    (
        "size-fraction-of-byte",
        document(route='queue_max_bytes = "1.0001KiB"'),
        "routes[0].queue_max_bytes",
        "not a whole number of bytes",
        "queue_max_bytes",
    ),
    (
        "log-level",
        document(extra='[log]\nlevel = "verbose"'),
        "log.level",
        'expected one of "debug", "info", "warning", "error"',
        "level",
    ),
    (
        "boolean-as-string",
        document(status='allow_remote = "yes"'),
        "status.allow_remote",
        'expected true or false, found a string ("yes")',
        "allow_remote",
    ),
    (
        "ws-push-service-off-loopback",
        "[push]\nservice = 'ws://push.example.net/'\n",
        "push.service",
        "ws:// is allowed only for a loopback host",
        "service",
    ),
    (
        "delivered-ack-on-autopush",
        document(route='ack = "delivered"').replace(
            "https://push.example.net/subscribe", "wss://push.services.mozilla.com/"
        ),
        "routes[0].ack",
        "never sends",
        'ack = "delivered"',
    ),
    (
        "section-not-a-table",
        "status = 5\n" + document().replace("[status]\n", ""),
        "status",
        "expected a table such as [status], found an integer (5)",
        "status = 5",
    ),
    (
        "unknown-target-option",
        document(deliver='[{ adapter = "site-broker", topik = "a" }, { adapter = "valve" }]'),
        "routes[0].deliver[0].topik",
        "unknown key",
        "deliver",
    ),
]


@pytest.mark.parametrize(
    ("text", "key_path", "reason", "at"),
    [case[1:] for case in BAD_CONFIGS],
    ids=[case[0] for case in BAD_CONFIGS],
)
def test_a_bad_configuration_names_the_key_the_reason_and_the_line(text, key_path, reason, at):
    problems = problems_of(text)
    assert [problem.key_path for problem in problems] == [key_path], problems
    (problem,) = problems
    assert reason in problem.message
    assert problem.file == SOURCE
    if at is None:
        assert problem.line is None
    else:
        assert problem.line == line_containing(text, at)
    rendered = str(problem)
    assert rendered.startswith(f"{SOURCE}:")
    assert f": {key_path}: " in rendered


def test_a_port_out_of_range_is_not_called_a_wrong_scheme():
    (problem,) = problems_of("[push]\nservice = 'https://push.example.net:99999/subscribe'\n")
    assert "https://" not in problem.message.split(" in ")[0]
    assert "expected an https:// URL" not in problem.message


def test_there_are_at_least_25_distinct_bad_configurations():
    assert len({case[0] for case in BAD_CONFIGS}) == len(BAD_CONFIGS) >= 25


def test_a_misspelt_key_gets_a_suggestion_in_the_rendered_line():
    (problem,) = problems_of(document(route='distribut_url = "https://a.example/x"'))
    assert problem.suggestion == "distribute_url"
    assert str(problem).endswith(
        'routes[0].distribut_url: unknown key (did you mean "distribute_url"?)'
    )


def test_the_missing_adapter_renders_exactly_as_documented():
    text = document(
        extra='[[routes]]\nname = "a"\ndeliver = [{ adapter = "valve" }]\n'
        '[[routes]]\nname = "b"\ndeliver = [\n  { adapter = "site-brokr" },\n]\n'
    )
    (problem,) = problems_of(text)
    line = line_containing(text, "site-brokr")
    assert str(problem) == (
        f'{SOURCE}:{line}: routes[2].deliver[0].adapter: no adapter named "site-brokr" '
        '(did you mean "site-broker"?)'
    )


def test_a_name_without_a_close_match_lists_the_adapters():
    (problem,) = problems_of(document(deliver='[{ adapter = "zzz" }, { adapter = "valve" }]'))
    assert problem.suggestion is None
    assert "(adapters: site-broker, valve)" in problem.message


def test_every_problem_is_reported_in_file_order_not_just_the_first():
    text = document(
        push='keepalive = "-1s"',
        mqtt="port = 0",
        serial='parity = "strange"',
        route='ack = "never"',
        deliver='[{ adapter = "nope" }]',
    )
    problems = problems_of(text)
    assert [problem.key_path for problem in problems] == [
        "push.keepalive",
        "adapters.site-broker.port",
        "adapters.valve.parity",
        "routes[0].ack",
        "routes[0].deliver[0].adapter",
    ]
    lines = [problem.line for problem in problems]
    assert lines == sorted(lines)
    assert str(ConfigError(problems)).count("\n") == len(problems) - 1


def test_a_toml_syntax_error_reports_the_parsers_line_and_column():
    (problem,) = problems_of('[push]\nservice = "https://x.example"\nkeepalive = 60s\n')
    assert problem.line == 3
    assert problem.key_path == ""
    assert problem.message.startswith("invalid TOML: ")
    assert "(column 15)" in problem.message
    assert str(problem).startswith(f"{SOURCE}:3: invalid TOML")


def test_an_unterminated_string_at_the_end_is_a_syntax_error_not_a_traceback():
    (problem,) = problems_of('[push]\nservice = "https://x.example')
    assert problem.message.startswith("invalid TOML")
    assert problem.line == 2


def test_lines_are_found_for_deliver_written_as_an_array_of_tables():
    text = (
        '[push]\nservice = "https://push.example.net/"\n'
        '[adapters.b]\ntype = "mqtt"\n'
        '[[routes]]\nname = "one"\n[[routes.deliver]]\nadapter = "b"\n'
        '[[routes]]\nname = "two"\n'
        '[[routes.deliver]]\nadapter = "b"\n'
        '[[routes.deliver]]\nadapter = "b"\nqos = 7\n'
    )
    (problem,) = problems_of(text)
    assert problem.key_path == "routes[1].deliver[1].qos"
    assert problem.line == 15


def test_lines_survive_multiline_strings_and_comments_before_the_key():
    text = (
        '[push]\nservice = "https://push.example.net/"  # the "service"\n'
        "[adapters.log]\ntype = 'log'\n"
        '[[routes]]\nname = """multi\nline [[routes]]\nname"""\n'
        '# deliver = [ { adapter = "x" } ]\n'
        "deliver = [ # comment\n  {adapter='log'},\n  {adapter='log', payload=\"rawr\"},\n]\n"
    )
    (route_name, payload) = problems_of(text)
    assert route_name.key_path == "routes[0].name"
    assert route_name.line == 6
    assert payload.key_path == "routes[0].deliver[1].payload"
    assert payload.suggestion == "raw"
    assert payload.line == 12


def test_http_push_service_on_loopback_is_accepted():
    for host in ("127.0.0.1:8443", "127.9.9.9", "[::1]:80", "localhost:8080"):
        config = parse_config(f'[push]\nservice = "http://{host}/subscribe"\n', SOURCE, NO_ENV)
        assert config.push.service == f"http://{host}/subscribe"


def test_the_http_error_suggests_the_https_url():
    (problem,) = problems_of('[push]\nservice = "http://push.example.net/subscribe"\n')
    assert "(127.0.0.0/8, ::1, localhost)" in problem.message
    assert problem.suggestion == "https://push.example.net/subscribe"


def test_types_and_defaults_of_a_full_configuration():
    text = document(
        push='keepalive = "1h30m"\nmax_message_bytes = "16KiB"\nurgency = "high"',
        mqtt='port = 8883\ntls = true\nca_file = "ca.pem"\nprotocol = 5',
        serial='parity = "even"\nstop_bits = 2\nack_timeout = "250ms"',
        route=f'ack = "delivered"\nmax_age = "2h"\nvapid_public_key = "{VAPID_KEY}"',
        deliver='[{ adapter = "site-broker", topic = "x/{route}/{id}", qos = 2 }, '
        '{ adapter = "valve", payload = "raw" }]',
        extra='[journal]\nmax_bytes = "1GB"\ndedupe_retention = "7d"',
    )
    config = parse_config(text, SOURCE, NO_ENV)
    assert config.push.keepalive == 5400.0
    assert config.push.max_message_bytes == 16384
    assert config.push.urgency == "high"
    broker = config.adapters["site-broker"]
    assert isinstance(broker, MqttAdapterConfig)
    assert (broker.name, broker.port, broker.tls, broker.protocol) == (
        "site-broker",
        8883,
        True,
        "5",
    )
    assert broker.ca_file == Path("/etc/fieldgate/ca.pem")  # relative to the file's directory
    valve = config.adapters["valve"]
    assert isinstance(valve, SerialAdapterConfig)
    assert (valve.parity, valve.stop_bits, valve.ack_timeout) == ("even", 2, 0.25)
    (route,) = config.routes
    assert (route.ack, route.max_age, route.vapid_public_key) == ("delivered", 7200.0, VAPID_KEY)
    assert route.deliver == (
        MqttTarget(adapter="site-broker", topic="x/{route}/{id}", qos=2),
        SerialTarget(adapter="valve", payload="raw"),
    )
    assert config.journal.max_bytes == 10**9
    assert config.journal.dedupe_retention == 7 * 86400.0
    assert config.source == SOURCE
    assert config.warnings == ()


def test_the_smallest_configuration_is_a_push_service():
    config = parse_config('[push]\nservice = "https://p.example"\n', SOURCE, NO_ENV)
    assert config.adapters == {}
    assert config.status.listen == "127.0.0.1:8088"
    assert config.warnings == (
        f"{SOURCE}: warning: routes: no [[routes]]: the gateway has nothing to subscribe to",
    )


def test_an_unused_adapter_is_a_warning_not_an_error():
    text = document(extra='[adapters.spare]\ntype = "log"\npath = "/var/log/spare.log"')
    config = parse_config(text, SOURCE, NO_ENV)
    assert isinstance(config.adapters["spare"], type(config.adapters["spare"]))
    line = line_containing(text, "[adapters.spare]")
    assert config.warnings == (
        f"{SOURCE}:{line}: warning: adapters.spare: adapter is not used by any route",
    )


def test_state_directory_from_systemd_is_used_when_the_file_has_none():
    text = document()
    env = {"STATE_DIRECTORY": "/var/lib/fieldgate-a:/var/lib/other"}
    assert parse_config(text, SOURCE, env).push.state_dir == Path("/var/lib/fieldgate-a")
    assert parse_config(text, SOURCE, NO_ENV).push.state_dir == Path("/var/lib/fieldgate")
    explicit = document(push='state_dir = "/srv/gw"')
    assert parse_config(explicit, SOURCE, env).push.state_dir == Path("/srv/gw")


def test_log_targets_and_remote_status_when_allowed():
    text = document(
        status='listen = "0.0.0.0:9000"\nallow_remote = true',
        deliver='[{ adapter = "site-broker" }, { adapter = "valve" }, { adapter = "audit" }]',
        extra='[adapters.audit]\ntype = "log"',
    )
    config = parse_config(text, SOURCE, NO_ENV)
    assert config.status.allow_remote
    assert config.routes[0].deliver[2] == LogTarget(adapter="audit")


def test_unix_status_socket_and_disabled_status_are_accepted():
    for listen in ("unix:/run/fieldgate/status", ""):
        config = parse_config(document(status=f'listen = "{listen}"'), SOURCE, NO_ENV)
        assert config.status.listen == listen


def test_load_config_reports_a_missing_file(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    (problem,) = caught.value.problems
    assert "cannot read the file: No such file or directory" in problem.message


def test_load_config_reports_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[push]\nservice = "https://p.example"\n# caf\xe9\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert (problem.line, problem.message) == (3, "not UTF-8 text: byte 0xe9 cannot be decoded")


def test_a_world_readable_file_with_a_password_is_warned_about(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(document(mqtt='username = "gw"\npassword = "hunter2"'))
    path.chmod(0o644)
    (warning,) = load_config(path, NO_ENV).warnings
    assert "adapters.site-broker.password" in warning and "chmod 600" in warning
    assert "hunter2" not in warning
    path.chmod(0o600)
    assert load_config(path, NO_ENV).warnings == ()


def test_key_paths_quote_keys_that_are_not_bare():
    assert format_key_path(("routes", 2, "deliver", 0, "adapter")) == "routes[2].deliver[0].adapter"
    assert format_key_path(("adapters", "a.b", "port")) == 'adapters."a.b".port'


# -------------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
     ("1h30m", 5400.0), ("1d 2h", 93600.0), ("1.5s", 1.5), ("45", 45.0), (45, 45.0), (0.25, 0.25)],
)  # fmt: skip
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("-5s", "negative duration"),
        (-1, "negative duration"),
        ("0s", "greater than zero"),
        ("5min", '"min" in duration'),
        ("5 minutes", '"minutes" in duration'),
        ("1h1h", "appears twice"),
        ("h", "expected a duration"),
        ("", "empty string"),
        ("1e3s", '"e" in duration'),
        (True, "expected a duration"),
        (float("inf"), "finite"),
        (10**400, "longer than 100 years"),
        ("99999999999d", "longer than 100 years"),
        ([1], "expected a duration"),
    ],
)
def test_bad_durations(value, reason):
    with pytest.raises(UnitError, match=None) as caught:
        parse_duration(value)
    assert reason in str(caught.value)


def test_zero_duration_where_allowed():
    assert parse_duration("0s", allow_zero=True) == 0.0


@pytest.mark.parametrize(
    ("value", "size"),
    [(4096, 4096), ("4096", 4096), ("64KiB", 65536), ("16MiB", 16 * 2**20), ("1GB", 10**9),
     ("2 kB", 2000), ("1.5KiB", 1536), ("512B", 512), ("1gib", 2**30)],
)  # fmt: skip
def test_sizes(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "negative size"),
        ("-1KiB", "negative size"),
        (0, "greater than zero"),
        ("12 parsecs", 'unknown unit "parsecs"'),
        ("1.1B", "whole number of bytes"),
        ("KiB", "expected a size"),
        (1.5, "expected a size"),
        (False, "expected a size"),
        ("2PiB", "unknown unit"),
        ("2000TiB", "larger than 1 PiB"),
        (2**60, "larger than 1 PiB"),
    ],
)
def test_bad_sizes(value, reason):
    with pytest.raises(UnitError) as caught:
        parse_size(value)
    assert reason in str(caught.value)


def test_formatting_round_trips():
    for seconds in (0.5, 30.0, 5400.0, 93784.5):
        assert parse_duration(format_duration(seconds)) == seconds
    assert format_size(16 * 2**20) == "16MiB"
    assert format_size(1000) == "1000B"


# -------------------------------------------------------------------------- check-config


def test_check_config_prints_ok_and_exits_0(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(document())
    assert main(["check-config", str(path)]) == 0
    assert capsys.readouterr().out == "ok\n"


def test_check_config_prints_every_problem_and_exits_2(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(document(push="keepalive = -1", mqtt="port = 0"))
    assert main(["check-config", str(path)]) == 2
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{path}:") and "push.keepalive: negative duration" in out[0]
    assert "adapters.site-broker.port: expected an integer from 1 to 65535" in out[1]
    assert out[2] == f"{path}: 2 problems, not valid"


def test_check_config_prints_warnings_before_ok(tmp_path, capsys):
    path = tmp_path / "gw.toml"
    path.write_text(document(extra='[adapters.spare]\ntype = "log"'))
    assert main(["check-config", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "warning: adapters.spare: adapter is not used by any route" in lines[0]
    assert lines[1] == "ok"


def test_check_config_show_describes_routes_and_masks_secrets(tmp_path, capsys):
    text = document(
        mqtt='username = "gw"\npassword = "hunter2"\nport = 1884',
        route='ack = "delivered"\nmax_age = "90m"\ndistribute_url = "https://app.example/s?key=zz"',
        deliver='[{ adapter = "site-broker", topic = "t/{id}", qos = 0 }, { adapter = "valve" }]',
    ).replace("https://push.example.net/subscribe", "https://u:pw@push.example.net/s?token=abc")
    path = tmp_path / "gw.toml"
    path.write_text(text)
    path.chmod(0o600)
    assert main(["check-config", "--show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "push service: https://***@push.example.net/s?***" in out
    assert "valves: ack delivered, max_age 1h30m" in out
    assert "-> site-broker (mqtt, topic t/{id}, qos 0, payload raw)" in out
    assert "-> valve (serial, payload envelope)" in out
    assert "site-broker: mqtt mqtt://127.0.0.1:1884 (MQTT 5, user gw, password ***)" in out
    assert "valve: serial /dev/ttyUSB0 115200 baud 8N1" in out
    assert "subscription posted to https://app.example/s?***" in out
    for secret in ("hunter2", "zz", "pw@", "abc"):
        assert secret not in out


def test_check_config_as_a_process_exits_2_on_a_bad_file(tmp_path):
    path = tmp_path / "gw.toml"
    path.write_text(document(route='ack = "later"'))
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    assert done.returncode == 2
    assert "routes[0].ack: expected one of" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


# ---------------------------------------------------------------------------- properties

KNOWN_KEYS = [
    "push", "service", "state_dir", "keepalive", "urgency", "ca_file", "backoff_base",
    "backoff_cap", "max_message_bytes", "status", "listen", "allow_remote", "journal",
    "max_bytes", "log", "level", "adapters", "type", "host", "port", "tls", "cert_file",
    "baud", "parity", "stop_bits", "routes", "name", "ack", "max_age", "deliver", "adapter",
    "topic", "qos", "payload", "vapid_public_key", "distribute_url", "queue_full",
]  # fmt: skip
KNOWN_WORDS = [
    "mqtt", "serial", "log", "https://p.example/s", "http://127.0.0.1:1/s", "30s", "-1s",
    "1h30m", "64KiB", "stored", "delivered", "a/{id}", "a/#", "127.0.0.1:8088", "unix:/s",
    "even", "high", "raw", "envelope", VAPID_KEY, "", "x",
]  # fmt: skip

scalars = (
    st.sampled_from(KNOWN_WORDS)
    | st.text(max_size=12)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.booleans()
)
keys = st.sampled_from(KNOWN_KEYS) | st.text(min_size=1, max_size=8)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=12,
)


def toml_value(value: object) -> str:
    """An inline TOML rendering (not always valid TOML: floats like nan are fine either way)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)


def toml_document(sections: dict[str, dict[str, object]], routes: list[dict[str, object]]) -> str:
    lines = []
    for section, table in sections.items():
        lines.append(f"[{toml_value(section)}]")
        lines.extend(f"{toml_value(key)} = {toml_value(value)}" for key, value in table.items())
    for route in routes:
        lines.append("[[routes]]")
        lines.extend(f"{toml_value(key)} = {toml_value(value)}" for key, value in route.items())
    return "\n".join(lines) + "\n"


def parses_or_reports(text: str) -> None:
    try:
        config = parse_config(text, SOURCE, NO_ENV)
    except ConfigError as error:
        assert error.problems
        last_line = text.count("\n") + 1
        for problem in error.problems:
            assert problem.message
            assert problem.line is None or 1 <= problem.line <= last_line
            str(problem)
    else:
        assert config.push.service


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["push", "status", "journal", "log", "adapters", "adapters.a", "x"]),
        st.dictionaries(keys, values, max_size=6),
        max_size=5,
    ),
    st.lists(st.dictionaries(keys, values, max_size=6), max_size=3),
)
def test_random_documents_only_ever_raise_config_error(sections, routes):
    parses_or_reports(toml_document(sections, routes))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("[]{}=\"'#.,\n abc-_019")), max_size=80))
def test_random_text_only_ever_raises_config_error(text):
    parses_or_reports(text)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_valid_files_only_ever_raise_config_error(data):
    text = document(
        deliver='[\n  { adapter = "site-broker", topic = "t/{id}", qos = 1 },\n'
        '  { adapter = "valve" },\n]'
    )
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 12)))
    insert = data.draw(st.text(max_size=6))
    parses_or_reports(text[:start] + insert + text[end:])


@given(st.one_of(st.text(max_size=20), st.integers(), st.floats(), st.booleans(), st.none()))
def test_units_only_ever_raise_unit_error(value):
    for parse in (parse_duration, parse_size):
        try:
            result = parse(value)
        except UnitError:
            continue
        assert result > 0


def test_an_autopush_service_is_accepted_and_its_urgency_filter_is_a_warning():
    text = document(push='urgency = "high"').replace(
        "https://push.example.net/subscribe", "wss://push.services.mozilla.com/"
    )
    config = parse_config(text, SOURCE, NO_ENV)
    assert config.push.service == "wss://push.services.mozilla.com/"
    assert any("no Urgency filter" in warning for warning in config.warnings)
    local = parse_config(
        text.replace("wss://push.services.mozilla.com/", "ws://127.0.0.1:9/"), SOURCE, NO_ENV
    )
    assert local.push.service == "ws://127.0.0.1:9/"


def test_the_suggestion_for_a_plain_websocket_url_is_the_secure_one():
    [problem] = problems_of("[push]\nservice = 'ws://push.example.net/'\n")
    assert problem.suggestion == "wss://push.example.net/"
