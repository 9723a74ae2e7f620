"""Where each key of a TOML document is written: a best-effort map from key path to line.

tomllib reports positions only for syntax errors; the configuration loader wants the line of
``routes[2].deliver[0].adapter`` too, so this module reads the (already valid) text once more.
"""

from __future__ import annotations

import bisect
import contextlib
import json
import re
import tomllib

KeyPath = tuple[str | int, ...]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def format_key_path(path: KeyPath) -> str:
    """``("routes", 2, "deliver", 0, "adapter")`` -> ``routes[2].deliver[0].adapter``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            shown = part if _BARE_KEY.fullmatch(part) else json.dumps(part)
            text += f".{shown}" if text else shown
    return text


class SourceMap:
    """The line on which each key path of a valid TOML document is written (best effort).

    tomllib does not report positions for values, so this walks the text once with a tiny
    lexer that understands just enough TOML (tables, arrays of tables, keys, strings, arrays,
    inline tables) to map ``("routes", 2, "deliver", 0, "adapter")`` to a line.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0
        self._offsets: dict[KeyPath, int] = {}
        self._array_tables: dict[KeyPath, int] = {}  # [[x]] path -> how many seen so far
        self._newlines = [i for i, char in enumerate(text) if char == "\n"]
        # A line number is a courtesy: whatever the lexer trips over, never fail over it.
        with contextlib.suppress(Exception):
            self._document()

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path``, or of its nearest written ancestor; ``None`` if none is."""
        for length in range(len(path), 0, -1):
            offset = self._offsets.get(path[:length])
            if offset is not None:
                return bisect.bisect_left(self._newlines, offset) + 1
        return None

    # -- lexer
    def _peek(self, count: int = 1) -> str:
        return self._text[self._pos : self._pos + count]

    def _skip_blanks(self, newlines: bool) -> None:
        text = self._text
        while self._pos < len(text):
            char = text[self._pos]
            if char in " \t" or (newlines and char in "\r\n"):
                self._pos += 1
            elif char == "#" and newlines:
                end = text.find("\n", self._pos)
                self._pos = len(text) if end < 0 else end
            else:
                return

    def _record(self, path: KeyPath, offset: int) -> None:
        for length in range(1, len(path) + 1):
            self._offsets.setdefault(path[:length], offset)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip_blanks(newlines=True)
            if self._pos >= len(self._text):
                return
            start = self._pos
            if self._peek(2) == "[[":
                self._pos += 2
                keys = self._key()
                self._expect("]]")
                base = (*self._resolve(keys[:-1]), keys[-1])
                index = self._array_tables.get(base, 0)
                self._array_tables[base] = index + 1
                table = (*base, index)
                self._record(table, start)
            elif self._peek() == "[":
                self._pos += 1
                table = self._resolve(self._key())
                self._expect("]")
                self._record(table, start)
            else:
                self._key_value(table)

    def _resolve(self, keys: list[str]) -> KeyPath:
        """A header's keys as a concrete path: an array of tables means its latest element."""
        path: KeyPath = ()
        for key in keys:
            path = (*path, key)
            count = self._array_tables.get(path)
            if count:
                path = (*path, count - 1)
        return path

    def _expect(self, token: str) -> None:
        self._skip_blanks(newlines=False)
        if self._peek(len(token)) != token:
            raise ValueError(f"expected {token!r} at offset {self._pos}")
        self._pos += len(token)

    def _key(self) -> list[str]:
        keys = []
        while True:
            self._skip_blanks(newlines=False)
            char = self._peek()
            if char == '"' or char == "'":
                start = self._pos
                self._string()
                keys.append(str(tomllib.loads("k = " + self._text[start : self._pos])["k"]))
            else:
                match = _BARE_KEY.match(self._text, self._pos)
                if match is None:
                    raise ValueError(f"expected a key at offset {self._pos}")
                keys.append(match.group())
                self._pos = match.end()
            self._skip_blanks(newlines=False)
            if self._peek() != ".":
                return keys
            self._pos += 1

    def _key_value(self, table: KeyPath) -> None:
        start = self._pos
        path = (*table, *self._key())
        self._record(path, start)
        self._expect("=")
        self._skip_blanks(newlines=False)
        self._value(path)

    def _value(self, path: KeyPath) -> None:
        char = self._peek()
        if char in "\"'":
            self._string()
        elif char == "[":
            self._pos += 1
            self._array(path)
        elif char == "{":
            self._pos += 1
            self._inline_table(path)
        else:
            match = _SCALAR.match(self._text, self._pos)
            self._pos = match.end() if match else self._pos + 1

    def _array(self, path: KeyPath) -> None:
        index = 0
        while True:
            self._skip_blanks(newlines=True)
            if self._peek() == "]":
                self._pos += 1
                return
            self._record((*path, index), self._pos)
            self._value((*path, index))
            index += 1
            self._skip_blanks(newlines=True)
            if self._peek() == ",":
                self._pos += 1
            elif self._peek() == "]":
                self._pos += 1
                return
            else:
                raise ValueError(f"unexpected text in an array at offset {self._pos}")

    def _inline_table(self, path: KeyPath) -> None:
        while True:
            self._skip_blanks(newlines=True)
            if self._peek() == "}":
                self._pos += 1
                return
            self._key_value(path)
            self._skip_blanks(newlines=True)
            if self._peek() == ",":
                self._pos += 1
            elif self._peek() == "}":
                self._pos += 1
                return
            else:
                raise ValueError(f"unexpected text in an inline table at offset {self._pos}")

    def _string(self) -> None:
        text = self._text
        quote = text[self._pos]
        if text.startswith(quote * 3, self._pos):
            end = self._string_end(self._pos + 3, quote * 3, escapes=quote == '"')
            # a multi-line string may end with up to two extra quotes: """a""""" is 'a""'
            extra = 0
            while extra < 2 and text.startswith(quote, end):
                end += 1
                extra += 1
            self._pos = end
        else:
            self._pos = self._string_end(self._pos + 1, quote, escapes=quote == '"')

    def _string_end(self, position: int, closing: str, escapes: bool) -> int:
        text = self._text
        while position < len(text):
            if escapes and text[position] == "\\":
                position += 2
            elif text.startswith(closing, position):
                return position + len(closing)
            else:
                position += 1
        raise ValueError("unterminated string")


# A bare value: number, boolean or date-time, up to the next separator or comment.
_SCALAR = re.compile(r"[^,\]}\r\n#]+")
