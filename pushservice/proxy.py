"""The PROXY protocol (v1 text, v2 binary) that HAProxy sends ahead of a connection's bytes.

Behind a TCP load balancer every connection comes from the balancer; with ``send-proxy-v2`` it
tells us the client's address first, which the per-address rate limit and the loopback-only
control API need. Sans-IO: :func:`parse_proxy_header` looks at the bytes read so far.
Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import struct

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_HEADER_BYTES = 16  # signature, version/command, family/protocol, 2-byte length
# §2.1: a v1 line is at most 107 bytes including the CRLF.
V1_MAX_BYTES = 107
# Address blocks we accept (§2.2): TCP over IPv4 is 12 bytes, over IPv6 36; TLVs may follow.
# Anything announcing more than this is not a balancer we configured.
V2_MAX_PAYLOAD = 512


class ProxyHeaderError(ValueError):
    """The connection did not start with a PROXY header we understand."""


def parse_proxy_header(data: bytes) -> tuple[str, int] | None:
    """(client address, header length) once the header is complete; None if more is needed.

    The address is "" for a connection the balancer made itself (health checks: LOCAL, or
    UNKNOWN in v1); ProxyHeaderError when the bytes are not a PROXY header.
    """
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _v2(data)
    if b"PROXY "[: len(data)] == data[:6]:
        return _v1(data)
    raise ProxyHeaderError("no PROXY protocol header")


def _v2(data: bytes) -> tuple[str, int] | None:
    if len(data) < V2_HEADER_BYTES:
        return None
    version_command, family, length = struct.unpack("!BBH", data[12:16])
    if version_command >> 4 != 2 or length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError("unsupported PROXY v2 header")
    total = V2_HEADER_BYTES + length
    if len(data) < total:
        return None
    if version_command & 0x0F == 0:  # LOCAL: the balancer's own connection
        return "", total
    block = data[V2_HEADER_BYTES:total]
    if family >> 4 == 1 and len(block) >= 12:
        return str(ipaddress.IPv4Address(block[:4])), total
    if family >> 4 == 2 and len(block) >= 36:
        return str(ipaddress.IPv6Address(block[:16])), total
    return "", total  # AF_UNSPEC or AF_UNIX: no address to use


def _v1(data: bytes) -> tuple[str, int] | None:
    end = data.find(b"\r\n")
    if end < 0:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError("PROXY v1 line too long")
        return None
    fields = data[:end].decode("ascii", "replace").split(" ")
    if fields[1:2] == ["UNKNOWN"]:
        return "", end + 2
    if len(fields) != 6 or fields[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("malformed PROXY v1 line")
    try:
        address = str(ipaddress.ip_address(fields[2]))
    except ValueError as exc:
        raise ProxyHeaderError("malformed PROXY v1 address") from exc
    return address, end + 2
