"""Logging: one line per event with level and component.

Under systemd (``JOURNAL_STREAM`` set) the journal stamps each line, so we print no timestamp of
our own. Key material and payloads are never passed to a logger: callers log ids and sizes.
"""

from __future__ import annotations

import logging
import os
import sys
from urllib.parse import urlsplit

QUIET_LIBRARIES = ("h2", "hpack", "h11", "paho", "trio")

_PLAIN = "%(levelname)s %(name)s: %(message)s"
_STAMPED = "%(asctime)s " + _PLAIN


def setup_logging(level: str = "info") -> None:
    """Configure the root logger once for the whole process."""
    handler = logging.StreamHandler(sys.stderr)
    fmt = _PLAIN if os.environ.get("JOURNAL_STREAM") else _STAMPED
    handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # h2 and hpack log every header at DEBUG: push message and subscription URLs are
    # capabilities (RFC 8030 §8.3), so they never reach our log, whatever the level.
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.WARNING)


def get_logger(component: str) -> logging.Logger:
    """The logger of one component, named ``fieldgate.<component>``."""
    return logging.getLogger(f"fieldgate.{component}")


def redact_url(url: str) -> str:
    """A URL fit for a log line: its origin and the first path segment, the rest elided.

    Push resources, subscriptions, sets and messages are capability URLs (RFC 8030 §8.3):
    whoever knows one can use it, so the unguessable part never reaches a log.
    """
    parts = urlsplit(url)
    first = parts.path.lstrip("/").split("/", 1)[0]
    return (
        f"{parts.scheme}://{parts.netloc}/{first}/…"
        if first
        else f"{parts.scheme}://{parts.netloc}/"
    )
