"""The TLS server context, reloadable: new connections use new certificates, open ones stay."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from pushservice.tlsgen import server_context

ALPN = ["h2", "http/1.1"]


class ReloadableTls:
    """The certificate chain and key at two paths, read again by :meth:`reload` (SIGHUP)."""

    def __init__(self, cert: Path, key: Path, log: logging.Logger) -> None:
        self.cert = cert
        self.key = key
        self._log = log
        self.current = self._load()  # errors here are start-up errors: the caller reports them

    def _load(self) -> ssl.SSLContext:
        ctx = server_context(self.cert, self.key)
        ctx.set_alpn_protocols(ALPN)
        return ctx

    def reload(self) -> bool:
        """Read the files again; on failure keep serving the old ones (and say why)."""
        try:
            self.current = self._load()
        except (OSError, ssl.SSLError, ValueError) as exc:
            self._log.error("TLS reload failed, keeping the old certificate: %s", exc)
            return False
        self._log.info("TLS certificate reloaded from %s", self.cert)
        return True
