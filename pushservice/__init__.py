"""A reference RFC 8030 push service for development, tests and the demo."""
