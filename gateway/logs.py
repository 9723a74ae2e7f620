"""Logging: one line per event with level and component.

Under systemd (``JOURNAL_STREAM`` set) the journal stamps each line, so we print no timestamp of
our own. Key material and payloads are never passed to a logger: callers log ids and sizes.
"""

from __future__ import annotations

import logging
import os
import sys

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
