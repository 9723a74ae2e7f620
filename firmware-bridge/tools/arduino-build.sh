#!/bin/sh
# Build an Arduino sketch for the Uno (ATmega328P) as the Arduino IDE 1.8 does, from Debian's
# packages only: the Arduino AVR core (arduino-core-avr) and avr-gcc (gcc-avr, avr-libc). The
# flags are the core's platform.txt recipes; the .ino gets `#include <Arduino.h>` and function
# prototypes as the IDE's preprocessor adds them.
#
# usage: tools/arduino-build.sh SKETCH_DIR OUT_DIR [LIBRARY_SRC_DIR...]
#   prints "SKETCH flash N bytes, RAM M bytes" (program storage = .text + .data; global
#   variables = .data + .bss, the two figures the IDE reports).
# env: ARDUINO_AVR (core location), LIB_WARN / SKETCH_WARN (warning flags; the IDE's default
#   is -w), ARDUINO_JOBS (parallel compiles of the core, default 2).
set -eu
core=${ARDUINO_AVR:-/usr/share/arduino/hardware/arduino/avr}
sketch_dir=${1:?sketch directory}
out=${2:?output directory}
shift 2
name=$(basename "$sketch_dir")
[ -f "$sketch_dir/$name.ino" ] || { echo "arduino-build: no $sketch_dir/$name.ino" >&2; exit 2; }
[ -d "$core/cores/arduino" ] || { echo "arduino-build: no Arduino AVR core at $core (apt-get install arduino-core-avr)" >&2; exit 2; }

# Debian bookworm pairs core 1.8.7 (whose WString.cpp uses DECIMAL_DIG) with avr-gcc 5.4, whose
# <float.h> defines DECIMAL_DIG for C99 only (GCC 6 added C++11): define it as GCC 6 does.
cxx_fix="-DDECIMAL_DIG=__DECIMAL_DIG__"
defs="-mmcu=atmega328p -DF_CPU=16000000L -DARDUINO=10819 -DARDUINO_AVR_UNO -DARDUINO_ARCH_AVR"
inc="-I$core/cores/arduino -I$core/variants/standard"
for lib in "$@"; do inc="$inc -I$lib"; done
cflags="-c -g -Os -std=gnu11 -ffunction-sections -fdata-sections -flto -fno-fat-lto-objects"
cxxflags="-c -g -Os -std=gnu++11 -fpermissive -fno-exceptions -ffunction-sections -fdata-sections -fno-threadsafe-statics -Wno-error=narrowing -flto $cxx_fix"
export defs inc cflags cxxflags

compile() { # SOURCE OBJECT WARNINGS
    case $1 in
    *.c) avr-gcc $cflags $3 $defs $inc "$1" -o "$2" ;;
    *.cpp) avr-g++ $cxxflags $3 $defs $inc "$1" -o "$2" ;;
    *.S) avr-gcc -c -g -x assembler-with-cpp -flto $defs $inc "$1" -o "$2" ;;
    esac
}

# The core is built once per output directory, as the IDE caches it.
mkdir -p "$out/core" "$out/lib"
if [ ! -f "$out/core/core.a" ]; then
    for f in "$core"/cores/arduino/*.c "$core"/cores/arduino/*.cpp "$core"/cores/arduino/*.S; do
        echo "$f"
    done | xargs -P "${ARDUINO_JOBS:-2}" -I{} sh -c '
        f={}; o='"$out"'/core/$(basename "$f").o
        case $f in
        *.c) avr-gcc $cflags -w $defs $inc "$f" -o "$o" ;;
        *.cpp) avr-g++ $cxxflags -w $defs $inc "$f" -o "$o" ;;
        *.S) avr-gcc -c -g -x assembler-with-cpp -flto $defs $inc "$f" -o "$o" ;;
        esac'
    avr-gcc-ar rcs "$out/core/core.a" "$out"/core/*.o
fi

objs=""
for lib in "$@"; do
    for f in "$lib"/*.c "$lib"/*.cpp; do
        [ -f "$f" ] || continue
        o="$out/lib/$(basename "$f").o"
        compile "$f" "$o" "${LIB_WARN:--w}"
        objs="$objs $o"
    done
done
# Like the IDE, declare the sketch's functions before their first use: a prototype for every
# top-level definition (a line at column 0 that names a function and is followed by '{').
protos=$(awk '
    prev != "" && /^[[:space:]]*\{/ { print prev ";" }
    { prev = "" }
    /^[A-Za-z_][A-Za-z0-9_<>:*& ]* [*&]*[A-Za-z_][A-Za-z0-9_]*\(.*\)[[:space:]]*(\{.*)?$/ && !/^(if|for|while|switch|return|else)/ {
        sig = $0; sub(/[[:space:]]*\{.*$/, "", sig)
        if ($0 ~ /\{/) print sig ";"; else prev = sig
    }' "$sketch_dir/$name.ino")
last_include=$(grep -n '^[[:space:]]*#include' "$sketch_dir/$name.ino" | tail -1 | cut -d: -f1)
last_include=${last_include:-0}
{
    echo '#include <Arduino.h>'
    echo "#line 1 \"$sketch_dir/$name.ino\""
    head -n "$last_include" "$sketch_dir/$name.ino"
    printf '%s\n' "$protos"
    echo "#line $((last_include + 1)) \"$sketch_dir/$name.ino\""
    tail -n +"$((last_include + 1))" "$sketch_dir/$name.ino"
} > "$out/$name.ino.cpp"
compile "$out/$name.ino.cpp" "$out/$name.ino.o" "${SKETCH_WARN:--w}"
# shellcheck disable=SC2086
avr-gcc -w -Os -g -flto -fuse-linker-plugin -Wl,--gc-sections -mmcu=atmega328p \
    -o "$out/$name.elf" "$out/$name.ino.o" $objs "$out/core/core.a" -L"$out" -lm
avr-objcopy -O ihex -R .eeprom "$out/$name.elf" "$out/$name.hex"
avr-size "$out/$name.elf" | awk -v n="$name" 'NR == 2 { printf "%s flash %d bytes, RAM %d bytes\n", n, $1 + $2, $2 + $3 }'
