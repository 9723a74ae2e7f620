"""Both RFC 8288 parsers (the gateway's and the reference service's) against the same vectors.

The reference push service keeps its own parser on purpose (an independent peer of the user
agent); the shared vectors keep the two from drifting apart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.webpush import links as gateway_links
from pushservice import links as service_links

VECTORS = json.loads((Path(__file__).parent / "vectors" / "link-headers.json").read_text())
Parse = Callable[[str], list[tuple[str, list[str]]]]


def _gateway(value: str) -> list[tuple[str, list[str]]]:
    return [(link.target, sorted(link.rels)) for link in gateway_links.parse_link_header(value)]


def _service(value: str) -> list[tuple[str, list[str]]]:
    return [(link.target, sorted(link.rels)) for link in service_links.parse_link_header(value)]


PARSERS = [
    pytest.param(_gateway, gateway_links.LinkParseError, id="gateway"),
    pytest.param(_service, service_links.LinkParseError, id="pushservice"),
]


@pytest.mark.parametrize(("parse", "error"), PARSERS)
@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_parser_matches_the_vector(parse: Parse, error: type[Exception], vector: dict[str, Any]):
    if vector.get("error"):
        with pytest.raises(error):
            parse(vector["value"])
    else:
        expected = [(target, sorted(rels)) for target, rels in vector["links"]]
        assert parse(vector["value"]) == expected


def test_both_parsers_name_the_rfc_8030_relations_alike():
    for name in ("REL_PUSH", "REL_SET", "REL_RECEIPT"):
        assert getattr(gateway_links, name) == getattr(service_links, name)
