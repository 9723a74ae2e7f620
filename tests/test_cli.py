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
    for name, _module in COMMANDS:
        assert name in help_text


def test_python_dash_m_gateway_is_the_same_command():
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"fieldgate {__version__}"
