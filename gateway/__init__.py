"""fieldgate: a Web Push (RFC 8030) user agent for IoT field gateways."""

__version__ = "0.1.0"
