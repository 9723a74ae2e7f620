"""The command line itself: help, version, every command registered."""

from __future__ import annotations

import subprocess
import sys

from gateway import __version__
from gateway.cli import COMMANDS, build_parser, main


def test_version_prints_the_package_version(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"fieldgate {__version__}"


def test_every_command_has_help():
    parser = build_parser()
    help_text = parser.format_help()
    for name, _module, help_line in COMMANDS:
        assert name in help_text
        assert help_line.split()[0] in help_text


def test_running_the_gateway_loads_neither_the_push_service_nor_other_commands():
    # What `fieldgate run` imports on a Raspberry Pi: the gateway and its adapters' config.
    probe = (
        "import sys\n"
        "from gateway.cli import build_parser\n"
        "build_parser('run')\n"
        "import gateway.app\n"
        "prefixes = ('pushservice', 'gateway.commands.')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(prefixes))\n"
        "print(' '.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["gateway.commands.run"]


def test_a_command_s_own_help_still_lists_its_arguments():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--show" in out.stdout


def test_python_dash_m_gateway_is_the_same_command():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fieldgate {__version__}"
