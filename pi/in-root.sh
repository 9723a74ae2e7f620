#!/usr/bin/env bash
# The stages of make pi-check inside one emulated Raspberry Pi OS root (scripts/pi-check runs
# them in order, as root, in a fresh copy of the root; the checkout is /home/pi/fieldgate).
#
#   install      the README's command, from the checkout: sudo scripts/install.sh
#   verify-unit  systemd-analyze verify and security on the installed unit
#   tools        what only the check needs: mosquitto, a compiler for the device simulator,
#                a venv with pywebpush and paho-mqtt (the application server and the device)
#   e2e          pi/e2e.py (in a network namespace of its own)
#   uninstall    sudo scripts/uninstall.sh, then --purge, and what each leaves
# Lines starting "summary: " are what scripts/pi-check shows at the end.
set -euo pipefail

checkout=/home/pi/fieldgate
tools=/opt/pi-check
# Debian packages of the check itself (not of the installation under test).
TOOL_DEBS=(mosquitto gcc make libc6-dev)

fail() { echo "pi-check: FAILED: $*" >&2; exit 1; }
summary() { echo "summary: $*"; }

apt_install() {
  export DEBIAN_FRONTEND=noninteractive
  local opts=(-y -qq --no-install-recommends -o Dpkg::Use-Pty=0)
  apt-get install "${opts[@]}" "$@" || { apt-get update -qq && apt-get install "${opts[@]}" "$@"; }
}

stage_install() {
  local platform
  platform=$(python3 -c 'import sysconfig; print(sysconfig.get_platform())')
  summary "$(python3 -V) on $(uname -m) (pip platform $platform), Debian $(cat /etc/debian_version)," \
    "emulated CPU ${QEMU_CPU:-qemu default}"
  # Exactly the README's line. (Run by root: sudo cannot switch users under qemu-user, whose
  # binfmt_misc entry does not carry setuid credentials; sudo's own environment reset applies.)
  (cd "$checkout" && sudo scripts/install.sh)
  [ -x /opt/fieldgate/venv/bin/fieldgate ] || fail "no /opt/fieldgate/venv/bin/fieldgate"
  [ "$(readlink /usr/local/bin/fieldgate)" = /opt/fieldgate/venv/bin/fieldgate ] \
    || fail "/usr/local/bin/fieldgate does not point into the venv"
  getent passwd fieldgate >/dev/null || fail "no fieldgate user"
  [ "$(stat -c %U:%G:%a /etc/fieldgate/config.toml)" = root:fieldgate:640 ] \
    || fail "/etc/fieldgate/config.toml is $(stat -c %U:%G:%a /etc/fieldgate/config.toml)"
  [ -s /opt/fieldgate/share/install-report.json ] || fail "no install report"
  summary "installed: $(fieldgate version) in /opt/fieldgate/venv" \
    "($(du -sm /opt/fieldgate/venv | cut -f1) MB), unit, user, /etc/fieldgate/config.toml"
}

stage_verify_unit() {
  local unit=/etc/systemd/system/fieldgate.service errors exposure
  errors=$(systemd-analyze verify "$unit" 2>&1) || fail "systemd-analyze verify: $errors"
  # Warnings (unknown keys, commands not found) do not change the exit status: none is allowed.
  if grep -q fieldgate <<<"$errors"; then fail "systemd-analyze verify: $errors"; fi
  exposure=$(systemd-analyze security --offline=yes "$unit" 2>/dev/null \
    | sed -n 's/.*Overall exposure level for fieldgate.service: \([0-9.]* [A-Z]*\).*/\1/p')
  [ -n "$exposure" ] || fail "systemd-analyze security gave no exposure level"
  summary "unit: systemd-analyze verify clean, security exposure $exposure" \
    "($(systemd --version | head -n1))"
}

stage_tools() {
  apt_install "${TOOL_DEBS[@]}" >/dev/null
  runuser -u pi -- make -s -C "$checkout/firmware-bridge" all
  # The venv is kept between runs (scripts/pi-check mounts it from its cache, keyed by this root
  # and the requirements): made once, it is only checked.
  if [ ! -e "$tools/.complete" ]; then
    python3 -m venv "$tools"
    # aiohttp (pywebpush imports it) has no armv7l wheel: its pure-Python build is enough here.
    AIOHTTP_NO_EXTENSIONS=1 "$tools/bin/python" -m pip install --quiet \
      --disable-pip-version-check -r "$checkout/pi/tools-requirements.txt"
    touch "$tools/.complete"
  fi
  "$tools/bin/python" -c 'import pywebpush, paho.mqtt.client' || fail "the check's venv is broken"
}

stage_e2e() {
  "$tools/bin/python" "$checkout/pi/e2e.py"
}

stage_uninstall() {
  (cd "$checkout" && sudo scripts/uninstall.sh)
  local gone
  for gone in /opt/fieldgate /etc/systemd/system/fieldgate.service \
      /usr/lib/sysusers.d/fieldgate.conf /usr/local/bin/fieldgate; do
    if [ -e "$gone" ] || [ -L "$gone" ]; then fail "$gone is still there after uninstall.sh"; fi
  done
  [ -e /etc/fieldgate/config.toml ] || fail "uninstall.sh removed the configuration"
  [ -e /var/lib/fieldgate ] || fail "uninstall.sh removed the journal"
  (cd "$checkout" && sudo scripts/uninstall.sh --purge)
  if [ -e /etc/fieldgate ] || [ -e /var/lib/fieldgate ]; then fail "--purge left state behind"; fi
  summary "uninstall: venv, unit, command removed, configuration and journal kept;" \
    "--purge removed them"
}

case ${1:-} in
  install) stage_install ;;
  verify-unit) stage_verify_unit ;;
  tools) stage_tools ;;
  e2e) stage_e2e ;;
  uninstall) stage_uninstall ;;
  *) fail "usage: $0 install|verify-unit|tools|e2e|uninstall" ;;
esac
