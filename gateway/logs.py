"""Logging: one line per event with level and component.

Under systemd (``JOURNAL_STREAM`` set) the journal stamps each line, so we print no timestamp of
our own. Key material and payloads are never passed to a logger: callers log ids and sizes.
"""

from __future__ import annotations

import logging
import os
import sys

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


def get_logger(component: str) -> logging.Logger:
    """The logger of one component, named ``fieldgate.<component>``."""
    return logging.getLogger(f"fieldgate.{component}")
