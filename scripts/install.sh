#!/usr/bin/env bash
# Install fieldgate on Raspberry Pi OS Bookworm (or any Debian 12+ with systemd and Python 3.11+)
# into its own virtual environment, with the systemd unit and an example configuration.
#
#   sudo scripts/install.sh                 # from this checkout
#   sudo scripts/install.sh fieldgate-0.1.0-py3-none-any.whl   # or a wheel / sdist
#
# Environment:
#   PREFIX=/opt/fieldgate    where the virtual environment goes ($PREFIX/venv)
#   DESTDIR=                 stage everything under this root instead of / (packaging, tests):
#                            nothing outside it is touched, no user is created, systemd is not
#                            told. The venv's scripts then name $DESTDIR$PREFIX in their #! line.
#   PYTHON=python3           the interpreter the venv is made from (3.11 or newer)
#   SERIAL_GROUPS=dialout    groups owning the serial devices ("dialout plugdev" on Trixie)
#   PIP_ARGS=                extra arguments for pip install (e.g. --no-index --find-links DIR)
# Reverse: scripts/uninstall.sh [--purge].
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/opt/fieldgate}
DESTDIR=${DESTDIR:-}
PYTHON=${PYTHON:-python3}
SERIAL_GROUPS=${SERIAL_GROUPS:-dialout}
PIP_ARGS=${PIP_ARGS:-}
source=${1:-$here}

say() { printf 'fieldgate install: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

case $PREFIX in /*) ;; *) die "PREFIX must be an absolute path, not '$PREFIX'" ;; esac
[ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (or set DESTDIR to stage the files)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
  || die "$PYTHON is missing or older than 3.11 (Bookworm: apt-get install python3 python3-venv)"
[ -e "$source" ] || die "no such wheel, sdist or directory: $source"

root=${DESTDIR%/}
venv=$root$PREFIX/venv
unit=$root/etc/systemd/system/fieldgate.service
sysusers=$root/usr/lib/sysusers.d/fieldgate.conf
confdir=$root/etc/fieldgate
link=$root/usr/local/bin/fieldgate

# 1. The virtual environment and the package (re-running upgrades in place).
say "virtual environment in $venv"
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
if [ -d "$source" ]; then
  # Build from a clean copy: never write build/ or *.egg-info into the checkout.
  staging=$(mktemp -d)
  trap 'rm -rf "$staging"' EXIT
  tar -C "$source" -cf - --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
    --exclude=.hypothesis --exclude=firmware-bridge . | tar -C "$staging" -xf -
  source=$staging
fi
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$source"
"$venv/bin/fieldgate" version >/dev/null || die "the installed fieldgate does not run"

# 2. Documentation and the reference configuration beside the venv.
install -D -m 0644 "$here/config.example.toml" "$root$PREFIX/share/config.example.toml"
install -D -m 0644 "$here/README.md" "$root$PREFIX/share/doc/README.md"
install -D -m 0644 "$here/systemd/README.md" "$root$PREFIX/share/doc/systemd.md"

# 3. The unit (paths and serial groups substituted) and the system user's declaration.
install -d -m 0755 "$(dirname "$unit")" "$(dirname "$sysusers")" "$(dirname "$link")"
sed -e "s|/opt/fieldgate|$PREFIX|g" \
    -e "s|^SupplementaryGroups=.*|SupplementaryGroups=$SERIAL_GROUPS|" \
    "$here/systemd/fieldgate.service" >"$unit.tmp"
chmod 0644 "$unit.tmp" && mv "$unit.tmp" "$unit"
install -m 0644 "$here/systemd/fieldgate.sysusers" "$sysusers"
ln -sfn "$PREFIX/venv/bin/fieldgate" "$link"

# 4. The configuration: never overwrite one that exists (it is the operator's).
install -d -m 0750 "$confdir"
if [ -e "$confdir/config.toml" ]; then
  say "keeping the existing $confdir/config.toml"
else
  install -m 0640 "$here/config.example.toml" "$confdir/config.toml"
  say "example configuration written to $confdir/config.toml"
fi

# 5. Only on the real system: the user, the config's group, and systemd.
if [ -z "$DESTDIR" ]; then
  systemd-sysusers "$sysusers"
  chgrp fieldgate "$confdir" "$confdir/config.toml"
  if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
fi

cat <<EOF
fieldgate $("$venv/bin/fieldgate" version | cut -d' ' -f2) installed in $PREFIX/venv.
Next:
  1. edit /etc/fieldgate/config.toml (push service, routes, adapters)
  2. fieldgate check-config --config /etc/fieldgate/config.toml
  3. systemctl enable --now fieldgate
  4. fieldgate status            (or: journalctl -u fieldgate -f)
Remove with: scripts/uninstall.sh   (add --purge to delete the configuration and the journal)
EOF
