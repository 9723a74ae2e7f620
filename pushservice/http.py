"""Protocol-neutral request and response records shared by the HTTP/1.1 and HTTP/2 front ends."""

from __future__ import annotations

from dataclasses import dataclass, field

from pushservice.model import Urgency
from pushservice.store import ResourceKind


@dataclass
class ConnectionInfo:
    """What a request knows about its connection."""

    scheme: str
    peer_is_loopback: bool
    http2: bool
    subscriptions_created: int = 0
    peer: str = ""  # the client's address (from the PROXY header behind a load balancer)


@dataclass(frozen=True)
class Request:
    """A complete request: lower-case header names, the body read in full."""

    method: str
    path: str
    authority: str
    headers: list[tuple[str, str]]
    body: bytes
    conn: ConnectionInfo

    def header_values(self, name: str) -> list[str]:
        """Every value of a header field (several fields are kept apart)."""
        return [v for k, v in self.headers if k == name]

    def header(self, name: str) -> str | None:
        """The first value of a header field, or None."""
        for k, v in self.headers:
            if k == name:
                return v
        return None

    @property
    def origin(self) -> str:
        """``scheme://authority`` of this request, for absolute URLs."""
        return f"{self.conn.scheme}://{self.authority}"


@dataclass(frozen=True)
class Response:
    """A complete response."""

    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


@dataclass(frozen=True)
class MonitorRequest:
    """A GET that the front end must hold open and feed with server pushes."""

    kind: ResourceKind
    target_id: str
    min_urgency: Urgency | None
    wait0: bool


def text_response(
    status: int, reason: str, headers: list[tuple[str, str]] | None = None
) -> Response:
    """A small text/plain response (the reason is for humans and logs)."""
    body = (reason + "\n").encode()
    return Response(status, [("content-type", "text/plain; charset=utf-8"), *(headers or [])], body)
