"""The shared serial-link vectors (firmware-bridge/vectors/*.txt, PROTOCOL.md §9) for Python tests.

Records by kind, the transcripts parsed, and an independent reading of the envelope rules of
PROTOCOL.md §8 (with msgpack-python, not the C parser) to check the envelope vectors against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import msgpack

VECTOR_DIR = Path(__file__).resolve().parent.parent / "firmware-bridge" / "vectors"
LINK = VECTOR_DIR / "link.txt"
TRANSCRIPTS = VECTOR_DIR / "transcripts.txt"
# PROTOCOL.md §8: an unknown key's value may nest at most this many arrays/maps (FB_MP_MAX_DEPTH)
ENVELOPE_MAX_DEPTH = 4


def unhex(text: str) -> bytes:
    """A hex field; ``-`` is the empty byte string."""
    return b"" if text == "-" else bytes.fromhex(text)


def text(field: str) -> str:
    """A text field; ``-`` is the empty string."""
    return "" if field == "-" else field


def records(kind: str, path: Path = LINK) -> list[list[str]]:
    """The fields of every ``kind`` record of a vector file, in order."""
    rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
    return [row[1:] for row in rows if row and row[0] == kind]


@dataclass(frozen=True)
class Transcript:
    """One ``transcript`` record and the ``host`` / ``device`` lines that follow it."""

    name: str
    options: dict[str, str]
    boot: bytes  # what the device writes when it boots
    steps: tuple[tuple[bytes, bytes], ...]  # (host bytes in, device bytes out)

    def option(self, key: str) -> str:
        return self.options[key]


def transcripts(path: Path = TRANSCRIPTS) -> list[Transcript]:
    """Every transcript of the file, in order."""
    out: list[Transcript] = []
    current: tuple[str, dict[str, str]] | None = None
    boot: bytes | None = None
    steps: list[tuple[bytes, bytes]] = []
    host: bytes | None = None

    def close() -> None:
        if current is not None:
            assert boot is not None and host is None, current[0]
            out.append(Transcript(current[0], current[1], boot, tuple(steps)))

    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        kind, rest = fields[0], fields[1:]
        if kind == "transcript":
            close()
            current = (rest[0], dict(opt.split("=", 1) for opt in rest[1:]))
            boot, steps, host = None, [], None
        elif kind == "host":
            assert host is None, f"two host lines in a row in {current}"
            host = unhex(rest[0])
        elif kind == "device":
            if boot is None:
                boot = unhex(rest[0])
            else:
                assert host is not None, f"device line without a host line in {current}"
                steps.append((host, unhex(rest[0])))
                host = None
        else:
            raise AssertionError(f"unknown transcript line {line!r}")
    close()
    return out


def _depth(value: object) -> int:
    """Nesting of arrays/maps in a decoded value (a scalar is 0)."""
    if isinstance(value, list | tuple):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((max(_depth(k), _depth(v)) for k, v in value.items()), default=0)
    return 0


def _is_uint(value: object) -> bool:
    return type(value) is int and value >= 0


def envelope_fields(data: bytes) -> dict[str, object] | None:
    """The envelope's fields when ``data`` is a valid envelope by PROTOCOL.md §8, else ``None``."""
    try:
        env = msgpack.unpackb(
            data, raw=False, unicode_errors="surrogateescape", strict_map_key=False
        )
    except Exception:  # truncated, reserved 0xc1, trailing bytes (ExtraData), ...
        return None
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        return None
    checks = {
        "id": lambda v: isinstance(v, str),
        "body": lambda v: isinstance(v, bytes),
        "route": lambda v: isinstance(v, str),
        "rcv": _is_uint,
        "exp": lambda v: v is None or _is_uint(v),
    }
    if "id" not in env or "body" not in env:
        return None
    for key, value in env.items():
        check = checks.get(key)
        if check is not None and not check(value):
            return None
        if check is None and _depth(value) > ENVELOPE_MAX_DEPTH:
            return None
    return {"route": "", "rcv": 0, "exp": None, **env}
