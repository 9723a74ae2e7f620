#!/usr/bin/env bash
# Reverse scripts/install.sh: stop and remove the service, the unit, the venv and the command.
# The configuration (/etc/fieldgate) and the journal (/var/lib/fieldgate) stay unless --purge.
# The fieldgate system user stays (Debian practice: its uid may still own files elsewhere).
#
#   sudo scripts/uninstall.sh [--purge]
# Honours the same PREFIX and DESTDIR as install.sh.
set -euo pipefail

PREFIX=${PREFIX:-/opt/fieldgate}
DESTDIR=${DESTDIR:-}
purge=no
for arg in "$@"; do
  case $arg in
    --purge) purge=yes ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
  esac
done

say() { printf 'fieldgate uninstall: %s\n' "$*" >&2; }
case $PREFIX in /*) ;; *) say "PREFIX must be an absolute path"; exit 1 ;; esac
[ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || { say "run as root (or set DESTDIR)"; exit 1; }
root=${DESTDIR%/}

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl disable --now fieldgate.service 2>/dev/null || true
fi

rm -f "$root/etc/systemd/system/fieldgate.service" "$root/usr/lib/sysusers.d/fieldgate.conf"
link=$root/usr/local/bin/fieldgate
if [ -L "$link" ] && [ "$(readlink "$link")" = "$PREFIX/venv/bin/fieldgate" ]; then
  rm -f "$link"
fi
rm -rf "$root$PREFIX/venv" "$root$PREFIX/share"
rmdir "$root$PREFIX" 2>/dev/null || true

if [ "$purge" = yes ]; then
  # StateDirectory= lives in /var/lib/private/fieldgate when a unit used DynamicUser=.
  rm -rf "$root/etc/fieldgate" "$root/var/lib/fieldgate" "$root/var/lib/private/fieldgate" \
    "$root/run/fieldgate"
  say "removed the configuration and the journal"
else
  say "kept /etc/fieldgate and /var/lib/fieldgate (remove them with --purge)"
fi

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
say "fieldgate removed"
