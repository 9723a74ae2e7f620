#!/usr/bin/env bash
# Make sure the system packages the tests (or the demo) need are present.
# As root: installs what is missing with apt-get. Otherwise: prints the exact command and fails.
# Usage: scripts/system-deps.sh test|demo|bench
set -euo pipefail
what=${1:-test}

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have mosquitto || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
have cc || need+=(gcc)
have make || need+=(make)
# bench instructions counts instructions with valgrind's callgrind (and callgrind_control).
if [ "$what" = bench ]; then
  have valgrind || need+=(valgrind)
fi
if [ "$what" = test ]; then
  have nghttp || need+=(nghttp2-client)
  have clang || need+=(clang)
  [ -e /usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a ] || ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-*.a >/dev/null 2>&1 || need+=(libclang-rt-14-dev)
  have systemd-analyze || need+=(systemd)
  have chromium || need+=(chromium)
  have llvm-cov || need+=(llvm)
  # firmware-bridge cross builds: AVR (ATmega328P, run in simavr), Cortex-M0, the Arduino core
  have avr-gcc || need+=(gcc-avr)
  [ -e /usr/lib/avr/include/avr/io.h ] || need+=(avr-libc)
  have simavr || need+=(simavr)
  have arm-none-eabi-gcc || need+=(gcc-arm-none-eabi)
  [ -e /usr/lib/arm-none-eabi/include/string.h ] || need+=(libnewlib-arm-none-eabi)
  [ -d /usr/share/arduino/hardware/arduino/avr/cores/arduino ] || need+=(arduino-core-avr)
  # The push service's tests start their own PostgreSQL (initdb) and HAProxy.
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  have haproxy || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
fi

[ ${#need[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && have apt-get; then
  echo "system-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # Recommends stay on: Chromium needs its fonts to render the status page test.
  apt-get install -y -qq "${need[@]}" >/dev/null
  # mosquitto's package enables a system-wide broker; the tests start their own on free ports.
  if have systemctl; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
  # Likewise postgresql and haproxy: the tests run their own, on free ports.
  for unit in postgresql haproxy; do
    if have systemctl; then systemctl disable --now "$unit" >/dev/null 2>&1 || true; fi
    if have service; then service "$unit" stop >/dev/null 2>&1 || true; fi
  done
  exit 0
fi

echo "system-deps: missing ${need[*]}; run:" >&2
echo "  sudo apt-get install -y ${need[*]}" >&2
exit 1
