"""Sans-IO Web Push: RFC 8291/8188 crypto, RFC 8288 links and the RFC 8030 user-agent protocol."""
