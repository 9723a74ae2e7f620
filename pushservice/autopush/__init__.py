"""A test double of Mozilla's autopush service: the WebSocket side for user agents and the
HTTP endpoint side for application servers, in one trio process (``fieldgate`` tests, demo).

It implements the rules of autopush-rs (autoconnect for the WebSocket protocol, autoendpoint for
``POST /wpush/v1|v2/{token}``) that a user agent can observe; see :mod:`.service`.
"""

from pushservice.autopush.service import AutopushService, AutopushStats, IssuedEndpoint
from pushservice.autopush.settings import AutopushSettings

__all__ = ["AutopushService", "AutopushSettings", "AutopushStats", "IssuedEndpoint"]
