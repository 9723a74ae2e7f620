"""A small RFC 8288 ``Link`` header parser (just what RFC 8030 needs)."""

from __future__ import annotations

from dataclasses import dataclass, field

# RFC 8030 §9.2 link relations.
REL_PUSH = "urn:ietf:params:push"
REL_SET = "urn:ietf:params:push:set"
REL_RECEIPT = "urn:ietf:params:push:receipt"


@dataclass(frozen=True)
class Link:
    """One link-value: the target URI reference and its parameters (names lower-cased)."""

    target: str
    params: dict[str, str] = field(default_factory=dict)

    @property
    def rels(self) -> tuple[str, ...]:
        """The relation types (``rel`` may hold several, space-separated), lower-cased: they
        compare case-insensitively (RFC 8288 §2.1.1)."""
        return tuple(rel.lower() for rel in self.params.get("rel", "").split())


class LinkParseError(ValueError):
    """The Link field value is not RFC 8288 syntax."""


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t":
        i += 1
    return i


def _quoted(text: str, i: int) -> tuple[str, int]:
    # text[i] == '"'; returns the unescaped string and the index after the closing quote.
    out: list[str] = []
    i += 1
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise LinkParseError("unterminated quoted string")


def parse_link_header(value: str) -> list[Link]:
    """Parse one Link field value (possibly several comma-separated links)."""
    links: list[Link] = []
    i = 0
    n = len(value)
    while True:
        i = _skip_ws(value, i)
        while i < n and value[i] == ",":  # empty list elements are allowed (RFC 9110 §5.6.1)
            i = _skip_ws(value, i + 1)
        if i >= n:
            return links
        if value[i] != "<":
            raise LinkParseError("link-value must start with '<'")
        end = value.find(">", i)
        if end < 0:
            raise LinkParseError("missing '>'")
        target = value[i + 1 : end].strip()
        i = end + 1
        params: dict[str, str] = {}
        while True:
            i = _skip_ws(value, i)
            if i >= n or value[i] == ",":
                break
            if value[i] != ";":
                raise LinkParseError("expected ';' or ','")
            i = _skip_ws(value, i + 1)
            start = i
            while i < n and value[i] not in "=;, \t":
                i += 1
            name = value[start:i].lower()
            if not name:
                raise LinkParseError("empty parameter name")
            i = _skip_ws(value, i)
            param_value = ""
            if i < n and value[i] == "=":
                i = _skip_ws(value, i + 1)
                if i < n and value[i] == '"':
                    param_value, i = _quoted(value, i)
                else:
                    start = i
                    while i < n and value[i] not in ";, \t":
                        i += 1
                    param_value = value[start:i]
            # RFC 8288 §3: occurrences after the first of rel are ignored.
            params.setdefault(name, param_value)
        links.append(Link(target, params))


def links_with_rel(values: list[str], rel: str) -> list[str]:
    """Targets of every link with relation ``rel`` across several Link field values."""
    found: list[str] = []
    for value in values:
        found.extend(link.target for link in parse_link_header(value) if rel in link.rels)
    return found
