"""RFC 8288 ``Link`` header parsing (sans-IO), as far as Web Push needs it.

Several links may share one field (comma separated) or come in repeated fields; targets may be
relative and are resolved against the request URI; ``rel`` may hold several space-separated
relation types. Parameter values may be tokens or quoted strings (which may contain commas and
semicolons).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urljoin

# RFC 8030 §9.2 link relations.
REL_PUSH = "urn:ietf:params:push"
REL_SET = "urn:ietf:params:push:set"
REL_RECEIPT = "urn:ietf:params:push:receipt"


class LinkParseError(ValueError):
    """A Link field value that is not RFC 8288 syntax."""


@dataclass(frozen=True)
class Link:
    """One link: its resolved target and its parameters (names lower-cased)."""

    target: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def rels(self) -> frozenset[str]:
        """The relation types of this link (``rel`` split on whitespace, lower-cased)."""
        return frozenset(r.lower() for r in self.params.get("rel", "").split())


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _parse_quoted(text: str, i: int) -> tuple[str, int]:
    # text[i] == '"'; returns the unescaped value and the index after the closing quote.
    out: list[str] = []
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif ch == '"':
            return "".join(out), i + 1
        else:
            out.append(ch)
            i += 1
    raise LinkParseError("unterminated quoted string")


def _parse_token(text: str, i: int, stops: str) -> tuple[str, int]:
    # A token ends at whitespace too (RFC 9110 §5.6.2: tokens hold no spaces); what follows it
    # must then be a delimiter, which the caller checks.
    start = i
    while i < len(text) and text[i] not in stops and text[i] not in " \t":
        i += 1
    return text[start:i], i


def parse_link_header(value: str, base: str | None = None) -> list[Link]:
    """Parse one ``Link`` field value into links, resolving targets against ``base``."""
    links: list[Link] = []
    i = 0
    n = len(value)
    while True:
        i = _skip_ws(value, i)
        if i >= n:
            break
        if value[i] == ",":
            i += 1
            continue
        if value[i] != "<":
            raise LinkParseError(f"expected '<' at offset {i}")
        end = value.find(">", i)
        if end < 0:
            raise LinkParseError("unterminated URI reference")
        target = value[i + 1 : end].strip()
        i = end + 1
        params: dict[str, str] = {}
        while True:
            i = _skip_ws(value, i)
            if i >= n or value[i] == ",":
                break
            if value[i] != ";":
                raise LinkParseError(f"expected ';' or ',' at offset {i}")
            i = _skip_ws(value, i + 1)
            name, i = _parse_token(value, i, "=;,")
            if not name:
                raise LinkParseError(f"empty parameter name at offset {i}")
            i = _skip_ws(value, i)
            param_value = ""
            if i < n and value[i] == "=":
                i = _skip_ws(value, i + 1)
                if i < n and value[i] == '"':
                    param_value, i = _parse_quoted(value, i)
                else:
                    param_value, i = _parse_token(value, i, ";,")
            # RFC 8288 §3.3: occurrences after the first of rel are ignored.
            params.setdefault(name.lower(), param_value)
        resolved = urljoin(base, target) if base else target
        links.append(Link(resolved, params))
    return links


def find_links(values: Iterable[str], rel: str, base: str | None = None) -> list[str]:
    """Targets of every link with relation ``rel`` across several ``Link`` field values."""
    found: list[str] = []
    for value in values:
        found.extend(link.target for link in parse_link_header(value, base) if rel in link.rels)
    return found


def format_link(target: str, rel: str) -> str:
    """A ``Link`` field value for one target and relation."""
    return f'<{target}>; rel="{rel}"'
