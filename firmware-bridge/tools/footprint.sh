#!/bin/sh
# Flash and RAM of the library per target, and of the Uno example sketch, as a Markdown table.
# usage: tools/footprint.sh BUILD_DIR   (after `make cross arduino`)
# env: MIN_DIR=<min-protocol/min checkout>, PACKETSERIAL_DIR=<bakercp/PacketSerial checkout>
#      add the comparison anchors, built here with the same compilers and flags.
#
# Library figures are the objects' sections, all functions included (a program that does not
# call the msgpack writer or COBS encoder links less): flash = code + constant data + the
# initial values of .data; RAM = .data + .bss (+ .rodata on AVR, where constants that are not
# PROGMEM are copied to RAM). The link state is sizeof(struct fb_link), which the integrator
# allocates, as are the buffers.
set -eu
build=${1:-build}
here=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
OPT="-Os -std=c99 -fno-common" # gcc 5 (avr) would leave globals COMMON, outside .bss
AVR="avr-gcc -mmcu=atmega328p $OPT"
M0="arm-none-eabi-gcc -mcpu=cortex-m0 -mthumb $OPT"

# sections TOOLPREFIX FILE... -> "flash ram"
sections() {
    prefix=$1
    shift
    "${prefix}size" -A "$@" | awk -v avr="$([ "$prefix" = avr- ] && echo 1 || echo 0)" '
        $1 ~ /^\.text|^\.progmem/ { flash += $2 }
        $1 ~ /^\.rodata/ { flash += $2; if (avr) ram += $2 }
        $1 ~ /^\.data/ { flash += $2; ram += $2 }
        $1 ~ /^\.bss|^COMMON/ { ram += $2 }
        END { printf "%d %d\n", flash, ram }'
}

# sizeof_var CC CFLAGS PREAMBLE TYPE TOOLPREFIX -> sizeof(TYPE), from a `TYPE probe;` object
sizeof_var() {
    printf '%s\n%s probe;\n' "$3" "$4" > "$tmp/probe.c"
    $1 $2 -c "$tmp/probe.c" -o "$tmp/probe.o"
    "$5nm" -S -t d "$tmp/probe.o" | awk '$NF == "probe" { print $2 + 0 }' | head -1
}

row() { printf '| %s | %s | %s | %s |\n' "$1" "$2" "$3" "$4"; }

echo "| what | flash (bytes) | RAM (bytes) | notes |"
echo "| --- | ---: | ---: | --- |"
for t in avr m0; do
    if [ $t = avr ]; then cc=$AVR; prefix=avr-; name="ATmega328P (avr-gcc $(avr-gcc -dumpversion))"
    else cc=$M0; prefix=arm-none-eabi-; name="Cortex-M0 (arm-none-eabi-gcc $(arm-none-eabi-gcc -dumpversion))"; fi
    set -- $(sections $prefix "$build/$t"/fb_codec.o "$build/$t"/fb_msgpack.o "$build/$t"/fb_link.o)
    link=$(sizeof_var "$cc -DFB_STATS=0" "-I$here/src" '#include "fieldgate_bridge.h"' 'struct fb_link' $prefix)
    stats=$(sizeof_var "$cc -DFB_STATS=1" "-I$here/src" '#include "fieldgate_bridge.h"' 'struct fb_link' $prefix)
    row "fieldgate library, $name, -Os" "$1" "$2 + $link link state" \
        "$stats with statistics (FB_STATS=1, the default off AVR); the integrator adds the receive buffer (mp + 5) and the reassembly buffer"
done
# A whole device, linked as firmware is (-ffunction-sections, --gc-sections), minus a floor
# that only runs the UART loop: what a device really carries, with and without the envelope.
device() { # avr|m0 FLAGS -> "flash ram"
    if [ "$1" = avr ]; then
        $AVR -DUART_ADDR=0xC6 $2 -ffunction-sections -fdata-sections -Wl,--gc-sections \
            -I"$here/src" "$here/tools/footprint_device.c" "$here"/src/*.c -o "$tmp/dev.elf"
        avr-size "$tmp/dev.elf" | awk 'NR == 2 { print $1 + $2, $2 + $3 }'
    else
        $M0 -DUART_ADDR=0x40004000 $2 -ffunction-sections -fdata-sections -Wl,--gc-sections \
            -specs=nano.specs -nostartfiles -Wl,-e,main \
            -I"$here/src" "$here/tools/footprint_device.c" "$here"/src/*.c -o "$tmp/dev.elf"
        arm-none-eabi-size "$tmp/dev.elf" | awk 'NR == 2 { print $1 + $2, $2 + $3 }'
    fi
}
for t in avr m0; do
    set -- $(device $t -DFLOOR)
    floor=$1
    set -- $(device $t -DENVELOPE=0)
    raw_flash=$(($1 - floor)) raw_ram=$2
    set -- $(device $t -DENVELOPE=1)
    row "a device linked with it, $([ $t = avr ] && echo ATmega328P || echo Cortex-M0): link only / with the envelope parser" \
        "$raw_flash / $(($1 - floor))" "$raw_ram / $2" "tools/footprint_device.c over a UART-loop floor; RAM: link state, 63-byte rx, 96-byte reassembly buffer, strings"
done
if [ -n "${MIN_DIR:-}" ]; then
    for t in avr m0; do
        if [ $t = avr ]; then cc=$AVR; prefix=avr-; else cc=$M0; prefix=arm-none-eabi-; fi
        $cc -I"$MIN_DIR/target" -c "$MIN_DIR/target/min.c" -o "$tmp/min_$t.o"
        set -- $(sections $prefix "$tmp/min_$t.o")
        ctx=$(sizeof_var "$cc" "-I$MIN_DIR/target" '#include "min.h"' 'struct min_context' $prefix)
        row "MIN with transport (min.c defaults), $([ $t = avr ] && echo ATmega328P || echo Cortex-M0), -Os" \
            "$1" "$2 + $ctx context" "globals: the transport's frame FIFO and payload ring; context: one per port"
    done
fi
uno() { # SKETCH_DIR OUT LIBDIR...
    "$here/tools/arduino-build.sh" "$@" | awk '{ print $3, $6 }'
}
set -- $(uno "$here/tools/uno_serial_baseline" "$build/arduino-baseline")
base_flash=$1 base_ram=$2
row "Uno sketch: Arduino core's Serial only (floor)" "$base_flash" "$base_ram" "same core, same flags"
set -- $(uno "$here/examples/fieldgate_bridge_demo" "$build/arduino" "$here/src")
row "Uno sketch: examples/fieldgate_bridge_demo" "$1" "$2" \
    "+$(($1 - base_flash)) / +$(($2 - base_ram)) over the floor: link, CRC, COBS, dedupe, reassembly (mp 58, 96-byte messages), envelope parser"
if [ -n "${PACKETSERIAL_DIR:-}" ]; then
    set -- $(uno "$PACKETSERIAL_DIR/examples/PacketSerialReverseEcho" "$build/arduino-packetserial" "$PACKETSERIAL_DIR/src")
    row "Uno sketch: PacketSerial's PacketSerialReverseEcho" "$1" "$2" \
        "+$(($1 - base_flash)) / +$(($2 - base_ram)) over the floor: COBS framing only, no CRC, no retries"
fi
