"""The upstream side: one connection to a push service, kept alive, and what it delivers.

* :mod:`.supervisor` — :class:`~.supervisor.Upstream`: opens connections (backoff, GOAWAY
  hand-over); the status and health of the upstream side;
* one connection module per protocol — :mod:`.rfc8030` (HTTP/2, RFC 8030) and :mod:`.autopush`
  (WebSocket, Mozilla's autopush): socket, TLS, I/O and keepalive only, over a sans-IO core;
* :mod:`.journal` — every pushed message, identified, decrypted and decided
  (:mod:`gateway.policy`), is committed in groups before anything is acknowledged;
* :mod:`.acks` — the one owner of acknowledgements owed upstream;
* :mod:`.subscriptions` — the one owner of subscriptions: create, renew, re-subscribe,
  distribute.

The connection modules and the rest speak through :mod:`.contract`. (Nothing is imported here,
so that :mod:`.contract` can be imported without the rest.)
"""
