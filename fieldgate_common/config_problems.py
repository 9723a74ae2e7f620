"""Reading a TOML configuration file and reporting every problem with file, line and key path.

:class:`TableReader` is the machinery every configuration schema shares (the gateway's, each
adapter kind's, the push service's): it converts the keys of one table with their converters
(:mod:`fieldgate_common.config_values`), and collects problems instead of stopping at the first.
:func:`read_toml` turns an unreadable, non-UTF-8 or invalid TOML file into a :class:`ConfigError`
with the line of the fault.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldgate_common import config_values as check
from fieldgate_common.config_source import KeyPath, SourceMap, format_key_path
from fieldgate_common.units import format_duration


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration file, located as precisely as we can."""

    file: Path
    key_path: str  # "" when the problem is the file itself (unreadable, TOML syntax)
    line: int | None
    message: str  # what was expected and what was found
    suggestion: str | None = None  # a close match for a misspelt name

    def render(self, severity: str = "") -> str:
        """``FILE:LINE: [severity: ]KEY.PATH: message (did you mean "x"?)``."""
        parts = [f"{self.file}:{self.line}" if self.line is not None else str(self.file)]
        if severity:
            parts.append(severity)
        if self.key_path:
            parts.append(self.key_path)
        text = ": ".join([*parts, self.message])
        if self.suggestion is not None:
            text += f' (did you mean "{self.suggestion}"?)'
        return text

    def __str__(self) -> str:
        return self.render()


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` lists everything found, in file order."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(problem) for problem in self.problems)


def file_order(problem: ConfigProblem) -> tuple[bool, int]:
    """Sort key: problems with a line first, by line."""
    return (problem.line is None, problem.line or 0)


class TableReader:
    """Converts tables of a parsed TOML document, collecting every problem on the way."""

    def __init__(self, source: Path, lines: SourceMap) -> None:
        self.source = source
        self.lines = lines
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    # -- reporting
    def problem(self, path: KeyPath, message: str, suggestion: str | None = None) -> ConfigProblem:
        """A problem located at ``path`` (its line when the source map knows it)."""
        return ConfigProblem(
            self.source, format_key_path(path), self.lines.line_of(path), message, suggestion
        )

    def error(self, path: KeyPath, message: str, suggestion: str | None = None) -> None:
        """Record a problem that makes the configuration unusable."""
        self.errors.append(self.problem(path, message, suggestion))

    def warn(self, path: KeyPath, message: str) -> None:
        """Record a problem the program runs despite."""
        self.warnings.append(self.problem(path, message))

    def path(self, value: object) -> Path:
        """A file or directory; relative paths are relative to the configuration file."""
        path = Path(check.nonempty_text(value))
        return path if path.is_absolute() else (self.source.parent / path).absolute()

    # -- tables
    def table(self, value: object, path: KeyPath, example: str) -> dict[str, object] | None:
        """``value`` when it is a table, else a problem (and None)."""
        if isinstance(value, dict):
            return value
        self.error(path, f"expected a table such as {example}, found {check.found(value)}")
        return None

    def fields(
        self,
        table: Mapping[str, object],
        path: KeyPath,
        specs: Mapping[str, check.Convert],
        *,
        required: Sequence[str] = (),
        handled: Sequence[str] = (),
        elsewhere: Mapping[str, str] | None = None,
    ) -> tuple[dict[str, Any], set[str]]:
        """Convert each key of ``table`` with its spec; returns the values and the failed keys.

        ``handled`` keys are read by the caller; ``elsewhere`` explains keys that belong to
        another kind of table (a serial option in an mqtt adapter, for instance).
        """
        values: dict[str, Any] = {}
        failed: set[str] = set()
        for key, value in table.items():
            if key in handled:
                continue
            convert = specs.get(key)
            if convert is None:
                failed.add(key)
                if elsewhere and key in elsewhere:
                    self.error((*path, key), elsewhere[key])
                    continue
                known = [*handled, *specs]
                suggestion = check.closest(key, known)
                hint = "" if suggestion else f" (the keys here are: {', '.join(known)})"
                self.error((*path, key), f"unknown key{hint}", suggestion)
                continue
            try:
                values[key] = convert(value)
            except check.Invalid as invalid:
                failed.add(key)
                self.error((*path, key), invalid.message, invalid.suggestion)
        for key in required:
            if key not in table:
                failed.add(key)
                self.error((*path, key), f'missing required key "{key}"')
        return values, failed

    def order(
        self, path: KeyPath, low: tuple[str, float], high: tuple[str, float], failed: set[str]
    ) -> None:
        """Report ``low`` > ``high`` (a backoff base above its cap), unless either is broken."""
        if low[0] in failed or high[0] in failed or low[1] <= high[1]:
            return
        self.error(
            (*path, low[0]),
            f"{low[0]} ({format_duration(low[1])}) must not exceed {high[0]} "
            f"({format_duration(high[1])})",
        )

    def raise_if_errors(self) -> tuple[str, ...]:
        """Raise :class:`ConfigError` for the errors; return the rendered warnings."""
        if self.errors:
            raise ConfigError(sorted(self.errors, key=file_order))
        return tuple(w.render("warning") for w in sorted(self.warnings, key=file_order))


# tomllib's messages end with "(at line 3, column 7)" or "(at end of document)".
_TOML_POSITION = re.compile(
    r"^(?P<message>.*) \(at (?:line (?P<line>\d+), column (?P<column>\d+)|end of document)\)$", re.S
)


def _syntax_problem(source: Path, error: ValueError, text: str) -> ConfigProblem:
    match = _TOML_POSITION.match(str(error))
    if match is None:
        return ConfigProblem(source, "", None, f"invalid TOML: {error}")
    message = match.group("message")
    if match.group("line") is None:
        return ConfigProblem(
            source, "", text.count("\n") + 1, f"invalid TOML: {message} at end of file"
        )
    return ConfigProblem(
        source,
        "",
        int(match.group("line")),
        f"invalid TOML: {message} (column {match.group('column')})",
    )


def parse_toml(text: str, source: Path) -> dict[str, Any]:
    """The TOML document in ``text``; raises :class:`ConfigError` with the line of a fault."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        # Deeply nested arrays exhaust the parser's recursion.
        raise ConfigError(
            [ConfigProblem(source, "", None, "invalid TOML: nested too deeply")]
        ) from None
    except ValueError as error:
        # TOMLDecodeError is a ValueError; so is int()'s refusal of a 5000-digit number.
        raise ConfigError([_syntax_problem(source, error, text)]) from None


def read_text(path: Path) -> str:
    """The UTF-8 text of a configuration file; raises :class:`ConfigError` saying why not."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        reason = error.strerror or str(error)
        raise ConfigError(
            [ConfigProblem(path, "", None, f"cannot read the file: {reason}")]
        ) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        message = f"not UTF-8 text: byte 0x{raw[error.start]:02x} cannot be decoded"
        raise ConfigError([ConfigProblem(path, "", line, message)]) from None
