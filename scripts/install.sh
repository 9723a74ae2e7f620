#!/usr/bin/env bash
# Install fieldgate on Raspberry Pi OS Bookworm (or any Debian 12+ with systemd and Python 3.11+)
# into its own virtual environment, with the systemd unit and an example configuration.
#
#   sudo scripts/install.sh                 # from this checkout
#   sudo scripts/install.sh fieldgate-0.1.0-py3-none-any.whl   # or a wheel / sdist
#
# On the real system (no DESTDIR) it first installs, with apt-get, the Debian packages that are
# missing: python3-venv, procps (/usr/bin/kill for the unit's ExecReload=) and, only when a
# dependency has no wheel for this machine on the package index (cffi and msgpack on 32-bit
# armhf, from PyPI), the tools to build it: gcc, libc6-dev, python3-dev, libffi-dev.
# It prints which Python packages came as wheels and which were built from source, and keeps
# pip's report in $PREFIX/share/install-report.json.
#
# Environment:
#   PREFIX=/opt/fieldgate    where the virtual environment goes ($PREFIX/venv)
#   DESTDIR=                 stage everything under this root instead of / (packaging, tests):
#                            nothing outside it is touched, no user is created, systemd is not
#                            told, apt-get is never run. The venv's scripts then name
#                            $DESTDIR$PREFIX in their #! line.
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

# What building a dependency from source needs on Debian: a C compiler and libc headers, the
# Python headers (every C extension) and libffi's (cffi, which cryptography requires). PyPI has
# no armv7l wheels of cffi or msgpack; Raspberry Pi OS's piwheels index does.
BUILD_DEBS=(gcc libc6-dev python3-dev libffi-dev)

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
report_file=$root$PREFIX/share/install-report.json

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

# apt-get only on the real system, as root, where it exists.
can_apt() { [ -z "$DESTDIR" ] && command -v apt-get >/dev/null 2>&1; }

# Install Debian packages; on failure refresh the package lists once (a fresh image's lists may
# be missing or name versions the mirror no longer has) and try again.
apt_install() {
  say "installing Debian packages: $*"
  export DEBIAN_FRONTEND=noninteractive
  local quiet=(-y -qq --no-install-recommends -o Dpkg::Use-Pty=0)
  apt-get install "${quiet[@]}" "$@" >"$staging/apt.log" 2>&1 && return
  if ! { apt-get update -qq && apt-get install "${quiet[@]}" "$@"; } >>"$staging/apt.log" 2>&1; then
    tail -n 20 "$staging/apt.log" >&2
    die "apt-get install $* failed"
  fi
}

# 0. The Debian packages the venv and the unit need (a minimal Debian lacks some of them).
need_debs=()
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  case $(command -v "$PYTHON") in
    /usr/bin/*) need_debs+=(python3-venv) ;;
    *) die "$PYTHON has no venv/ensurepip module: use an interpreter that has (or Debian's python3 with python3-venv)" ;;
  esac
fi
if [ -z "$DESTDIR" ]; then
  command -v systemd-sysusers >/dev/null 2>&1 || die "systemd-sysusers not found: fieldgate runs under systemd"
  # The unit's ExecReload= runs kill(1), which Debian ships in procps (not in bash or coreutils).
  [ -x /usr/bin/kill ] || [ -x /bin/kill ] || need_debs+=(procps)
fi
if [ ${#need_debs[@]} -gt 0 ]; then
  can_apt || die "missing Debian packages: ${need_debs[*]} (apt-get install ${need_debs[*]})"
  apt_install "${need_debs[@]}"
fi

# 1. The virtual environment.
say "virtual environment in $venv"
[ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
# shellcheck disable=SC2086  # PIP_ARGS is a list of words
venv_pip() { "$venv/bin/python" -m pip --disable-pip-version-check "$@" $PIP_ARGS; }

# 2. fieldgate itself as a wheel, built once here (so that the plan and the installation below
#    do not build it twice), from a clean copy: never write build/ or *.egg-info into the checkout.
case $source in
  *.whl) wheel=$source ;;
  *)
    if [ -d "$source" ]; then
      mkdir "$staging/src"
      tar -C "$source" -cf - --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=.pytest_cache --exclude=.mypy_cache --exclude=.ruff_cache \
        --exclude=.hypothesis --exclude=firmware-bridge . | tar -C "$staging/src" -xf -
      source=$staging/src
    fi
    say "building the fieldgate wheel"
    venv_pip wheel --quiet --no-deps --wheel-dir "$staging/dist" "$source" \
      || die "could not build fieldgate from $source"
    wheel=$(echo "$staging"/dist/fieldgate-*.whl)
    ;;
esac

# What pip's JSON report (pip >= 22.2) says was or would be installed, one "KIND NAME VERSION"
# line each: KIND is wheel, source (an sdist, built here) or project (fieldgate itself).
report_lines() {
  "$venv/bin/python" - "$1" <<'PY'
import json
import sys

for item in json.load(open(sys.argv[1]))["install"]:
    meta, where = item["metadata"], item["download_info"]
    kind = "wheel" if where["url"].endswith(".whl") else "source"
    print("project" if meta["name"] == "fieldgate" else kind, meta["name"], meta["version"])
PY
}
# "N: name version, ..." of one KIND in such a file, or "none".
names() {
  awk -v kind="$2" '$1 == kind { n++; list = list sep $2 " " $3; sep = ", " }
    END { if (n) print n ": " list; else print "none" }' "$1"
}

# 3. The plan: which dependencies have no wheel for this machine. Those are built from source,
#    which needs the build tools; on the real system apt-get brings them, otherwise say so.
venv_pip install --quiet --dry-run --report "$staging/plan.json" "$wheel" \
  || die "pip could not resolve fieldgate's dependencies (network? see above)"
report_lines "$staging/plan.json" >"$staging/plan.txt"
if grep -q '^source ' "$staging/plan.txt"; then
  platform=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_platform())')
  say "no usable wheel for $platform of: $(names "$staging/plan.txt" source); building from source"
  if can_apt; then
    apt_install "${BUILD_DEBS[@]}"
  else
    say "(building needs: ${BUILD_DEBS[*]})"
  fi
fi

# 4. The installation (re-running upgrades in place).
venv_pip install --quiet --report "$staging/report.json" "$wheel" \
  || die "pip install failed (see above); building from source needs: ${BUILD_DEBS[*]}"
report_lines "$staging/report.json" >"$staging/installed.txt"
if ! grep -q '^project ' "$staging/installed.txt"; then
  # The same version was installed already: replace it with this build, dependencies untouched.
  venv_pip install --quiet --no-deps --force-reinstall "$wheel"
fi
"$venv/bin/fieldgate" version >/dev/null || die "the installed fieldgate does not run"
say "from wheels: $(names "$staging/installed.txt" wheel)"
say "built from source: $(names "$staging/installed.txt" source)"
if ! "$venv/bin/python" -c 'import msgpack._cmsgpack' 2>/dev/null; then
  say "warning: msgpack runs as its pure-Python fallback (slower serial encoding);" \
    "install ${BUILD_DEBS[*]} and re-run for its C extension"
fi

# 5. Documentation, the reference configuration and pip's report beside the venv.
install -D -m 0644 "$here/config.example.toml" "$root$PREFIX/share/config.example.toml"
install -D -m 0644 "$here/README.md" "$root$PREFIX/share/doc/README.md"
install -D -m 0644 "$here/systemd/README.md" "$root$PREFIX/share/doc/systemd.md"
install -m 0644 "$staging/report.json" "$report_file"

# 6. The unit (paths and serial groups substituted) and the system user's declaration.
install -d -m 0755 "$(dirname "$unit")" "$(dirname "$sysusers")" "$(dirname "$link")"
sed -e "s|/opt/fieldgate|$PREFIX|g" \
    -e "s|^SupplementaryGroups=.*|SupplementaryGroups=$SERIAL_GROUPS|" \
    "$here/systemd/fieldgate.service" >"$unit.tmp"
chmod 0644 "$unit.tmp" && mv "$unit.tmp" "$unit"
install -m 0644 "$here/systemd/fieldgate.sysusers" "$sysusers"
ln -sfn "$PREFIX/venv/bin/fieldgate" "$link"

# 7. The configuration: never overwrite one that exists (it is the operator's).
install -d -m 0750 "$confdir"
if [ -e "$confdir/config.toml" ]; then
  say "keeping the existing $confdir/config.toml"
else
  install -m 0640 "$here/config.example.toml" "$confdir/config.toml"
  say "example configuration written to $confdir/config.toml"
fi

# 8. Only on the real system: the user, the config's group, and systemd.
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
