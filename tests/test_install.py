"""scripts/install.sh and uninstall.sh in a throw-away root (DESTDIR): a real venv, a real pip
install of this checkout, the files and modes they leave, and their removal."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parent.parent
INSTALL = REPO / "scripts" / "install.sh"
UNINSTALL = REPO / "scripts" / "uninstall.sh"
PREFIX = "/srv/fieldgate"  # not the default: proves PREFIX is honoured everywhere


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def spy_bin(directory: Path) -> Path:
    """systemctl and systemd-sysusers that only record being called: a DESTDIR install must
    never touch the running system."""
    directory.mkdir()
    for name in ("systemctl", "systemd-sysusers", "chgrp"):
        tool = directory / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{directory}/calls"\n')
        tool.chmod(0o755)
    return directory


def run_script(script: Path, root: Path, spies: Path, *args: str, **env: str):
    environment = {
        **os.environ,
        "DESTDIR": str(root),
        "PREFIX": PREFIX,
        "PATH": f"{spies}:{os.environ['PATH']}",
        **env,
    }
    return subprocess.run(
        [str(script), *args], env=environment, capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """One real installation shared by the tests that only look at it (pip takes ~15 s).

    msgpack is refused as a wheel and built from its sdist without its C extension, as on a
    32-bit Pi without a compiler would go if the installer did not bring one: the plan, the
    report and the fallback warning are then all exercised by this one installation."""
    base = tmp_path_factory.mktemp("install")
    spies = spy_bin(base / "spies")
    root = base / "root"
    result = run_script(
        INSTALL,
        root,
        spies,
        SERIAL_GROUPS="dialout plugdev",
        PIP_ARGS="--no-binary msgpack",
        MSGPACK_PUREPYTHON="1",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root, spies, result


def test_files_land_with_the_right_modes(installed):
    root, _, _ = installed
    unit = root / "etc/systemd/system/fieldgate.service"
    config = root / "etc/fieldgate/config.toml"
    assert mode(unit) == 0o644
    assert mode(root / "usr/lib/sysusers.d/fieldgate.conf") == 0o644
    assert mode(root / "etc/fieldgate") == 0o750
    assert mode(config) == 0o640  # may hold broker passwords
    assert config.read_bytes() == (REPO / "config.example.toml").read_bytes()
    assert (root / PREFIX.lstrip("/") / "share/config.example.toml").is_file()
    link = root / "usr/local/bin/fieldgate"
    assert os.readlink(link) == f"{PREFIX}/venv/bin/fieldgate"


def test_unit_points_at_the_prefix_and_the_serial_groups(installed):
    root, _, _ = installed
    text = (root / "etc/systemd/system/fieldgate.service").read_text()
    assert f"ExecStart={PREFIX}/venv/bin/fieldgate run --config /etc/fieldgate/config.toml" in text
    assert "SupplementaryGroups=dialout plugdev\n" in text
    assert "/opt/fieldgate" not in text


def test_the_venvs_fieldgate_runs(installed):
    root, _, result = installed
    fieldgate = root / PREFIX.lstrip("/") / "venv/bin/fieldgate"
    out = subprocess.run([str(fieldgate), "version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("fieldgate ")
    assert "systemctl enable --now fieldgate" in result.stdout  # tells the user what is next
    # Its own interpreter, not the development venv.
    python = root / PREFIX.lstrip("/") / "venv/bin/python"
    where = subprocess.run(
        [str(python), "-c", "import gateway; print(gateway.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,  # not the checkout, whose gateway/ would shadow the installed one
    )
    assert where.stdout.startswith(str(root))


def test_it_says_what_came_as_wheels_and_what_was_built_from_source(installed):
    root, _, result = installed
    said = result.stderr
    assert "no usable wheel for linux-x86_64 of: 1: msgpack " in said  # the plan, up front
    assert "(building needs: gcc libc6-dev python3-dev libffi-dev)" in said  # DESTDIR: no apt
    assert "installing Debian packages" not in said
    built = next(line for line in said.splitlines() if "built from source:" in line)
    assert built.split("built from source: ")[1].startswith("1: msgpack ")
    wheels = next(line for line in said.splitlines() if "from wheels:" in line)
    assert "cryptography " in wheels and "h2 " in wheels and "msgpack" not in wheels
    assert "warning: msgpack runs as its pure-Python fallback" in said
    report = root / PREFIX.lstrip("/") / "share/install-report.json"
    assert mode(report) == 0o644
    kinds = {
        item["metadata"]["name"]: item["download_info"]["url"].endswith(".whl")
        for item in json.loads(report.read_text())["install"]
    }
    assert kinds["msgpack"] is False and kinds["cryptography"] is True
    assert kinds["fieldgate"] is True  # built once into a wheel, then installed from it


def test_destdir_install_never_touches_the_system(installed):
    _, spies, _ = installed
    assert not (spies / "calls").exists()


def test_reinstall_keeps_the_operators_config_then_uninstall_reverses(installed, tmp_path):
    source_root, _, _ = installed
    root = tmp_path / "root"
    shutil.copytree(source_root, root, symlinks=True)
    spies = spy_bin(tmp_path / "spies")
    config = root / "etc/fieldgate/config.toml"
    config.write_text("# edited by the operator\n")
    state = root / "var/lib/fieldgate"
    state.mkdir(parents=True)
    (state / "journal.sqlite").write_bytes(b"queue")

    again = run_script(INSTALL, root, spies)
    assert again.returncode == 0, again.stderr[-3000:]
    assert config.read_text() == "# edited by the operator\n"
    assert "keeping the existing" in again.stderr

    removed = run_script(UNINSTALL, root, spies)
    assert removed.returncode == 0, removed.stderr
    assert not (root / "etc/systemd/system/fieldgate.service").exists()
    assert not (root / "usr/lib/sysusers.d/fieldgate.conf").exists()
    assert not (root / "usr/local/bin/fieldgate").is_symlink()
    assert not (root / PREFIX.lstrip("/")).exists()
    assert config.exists() and (state / "journal.sqlite").exists()  # kept without --purge

    purged = run_script(UNINSTALL, root, spies, "--purge")
    assert purged.returncode == 0, purged.stderr
    assert not (root / "etc/fieldgate").exists()
    assert not state.exists()
    assert not (spies / "calls").exists()


def test_uninstall_leaves_a_foreign_fieldgate_command_alone(tmp_path):
    spies = spy_bin(tmp_path / "spies")
    root = tmp_path / "root"
    link = root / "usr/local/bin/fieldgate"
    link.parent.mkdir(parents=True)
    link.symlink_to("/usr/bin/someone-elses-fieldgate")
    assert run_script(UNINSTALL, root, spies).returncode == 0
    assert link.is_symlink()


@pytest.mark.parametrize(
    ("script", "args", "env", "message"),
    [
        (INSTALL, ("/nonexistent/fieldgate.whl",), {}, "no such wheel"),
        (INSTALL, (), {"PREFIX": "opt/fieldgate"}, "PREFIX must be an absolute path"),
        (INSTALL, (), {"PYTHON": "/nonexistent/python3"}, "missing or older than 3.11"),
        (UNINSTALL, ("--everything",), {}, "usage"),
    ],
)
def test_bad_invocations_fail_before_touching_anything(tmp_path, script, args, env, message):
    spies = spy_bin(tmp_path / "spies")
    root = tmp_path / "root"
    result = run_script(script, root, spies, *args, **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert not root.exists()
