"""encrypt a message and send it to a push subscription."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.webpush.crypto import PushSubscriptionInfo, SubscriptionInfoError, encrypt
from pushservice.h1client import HttpConnection, HttpReply
from pushservice.links import REL_RECEIPT, LinkParseError, links_with_rel
from pushservice.vapid import sign_vapid

HELP = "encrypt a message and send it to a push subscription"

EXIT_SENT = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
# How often a pending receipt is polled over HTTP/1.1 (seconds).
RECEIPT_POLL_INTERVAL = 0.5
# VAPID tokens we mint live 12 hours (RFC 8292 allows up to 24).
VAPID_LIFETIME = 12 * 3600


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the send options."""
    parser.add_argument("subscription", metavar="SUBSCRIPTION_JSON_OR_FILE")
    parser.add_argument("data", metavar="DATA", help="the message; '-' reads stdin")
    parser.add_argument("--ttl", type=int, default=86400, help="seconds (default one day)")
    parser.add_argument("--urgency", choices=["very-low", "low", "normal", "high"])
    parser.add_argument("--topic", help="replace an undelivered message with this topic")
    parser.add_argument("--receipt", action="store_true", help="wait for the delivery receipt")
    parser.add_argument("--receipt-timeout", type=float, default=60.0, metavar="SECONDS")
    parser.add_argument("--vapid-key", type=Path, metavar="PEM", help="EC P-256 private key")
    parser.add_argument("--vapid-subject", default="mailto:fieldgate@localhost")
    parser.add_argument("--ca-file", type=Path, help="CA bundle to verify https endpoints")


def _load_subscription(text: str) -> PushSubscriptionInfo:
    path = Path(text)
    if not text.lstrip().startswith("{") and path.exists():
        text = path.read_text()
    return PushSubscriptionInfo.from_json(text)


def _read_data(arg: str) -> bytes:
    return sys.stdin.buffer.read() if arg == "-" else arg.encode()


def _vapid_header(pem: Path, endpoint: str, subject: str) -> str:
    key = serialization.load_pem_private_key(pem.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("--vapid-key must be an EC P-256 private key")
    parts = urlsplit(endpoint)
    claims: dict[str, object] = {
        "aud": f"{parts.scheme}://{parts.netloc}",
        "exp": int(time.time()) + VAPID_LIFETIME,
        "sub": subject,
    }
    return sign_vapid(key, claims)


def _refused(reply: HttpReply) -> int:
    reason = reply.body.decode("utf-8", "replace").strip()
    print(f"refused: {reply.status} {reply.reason} {reason}".rstrip(), file=sys.stderr)
    return EXIT_REFUSED


def _wait_receipt(conn: HttpConnection, receipt_url: str, message_url: str, timeout: float) -> int:
    target = urlsplit(receipt_url).path
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = conn.request("GET", target, [])
        if reply.status != 200:
            return _refused(reply)
        for entry in json.loads(reply.body):
            if entry.get("message") == message_url:
                status = entry.get("status")
                meaning = "acknowledged" if status == 204 else "expired undelivered"
                print(f"receipt: {status} {meaning}")
                return EXIT_SENT if status == 204 else EXIT_REFUSED
        time.sleep(RECEIPT_POLL_INTERVAL)
    print(f"no receipt within {timeout:g} s", file=sys.stderr)
    return EXIT_REFUSED


def run(args: argparse.Namespace) -> int:
    """Encrypt, POST over HTTP/1.1, print the message URL (and the receipt)."""
    try:
        sub = _load_subscription(args.subscription)
        data = _read_data(args.data)
        if args.ttl < 0:
            raise ValueError("--ttl must not be negative")
        headers = [("ttl", str(args.ttl)), ("content-encoding", "aes128gcm")]
        headers.append(("content-type", "application/octet-stream"))
        if args.urgency:
            headers.append(("urgency", args.urgency))
        if args.topic:
            headers.append(("topic", args.topic))
        if args.receipt:
            headers.append(("prefer", "respond-async"))
        if args.vapid_key:
            headers.append(
                ("authorization", _vapid_header(args.vapid_key, sub.endpoint, args.vapid_subject))
            )
        body = encrypt(data, p256dh=sub.p256dh, auth_secret=sub.auth)
        conn = HttpConnection(sub.endpoint, ca_file=str(args.ca_file) if args.ca_file else None)
    except (SubscriptionInfoError, ValueError, OSError) as exc:
        print(f"fieldgate send: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        parts = urlsplit(sub.endpoint)
        reply = conn.request("POST", parts.path or "/", headers, body)
        if reply.status not in (201, 202):
            return _refused(reply)
        message_url = reply.header("location") or ""
        print(message_url)
        if not args.receipt:
            return EXIT_SENT
        try:
            receipts = links_with_rel(reply.header_values("link"), REL_RECEIPT)
        except LinkParseError:
            receipts = []
        if not receipts:
            print("the service returned no receipt subscription", file=sys.stderr)
            return EXIT_REFUSED
        return _wait_receipt(conn, receipts[0], message_url, args.receipt_timeout)
    except (OSError, ConnectionError, ValueError) as exc:
        print(f"fieldgate send: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    finally:
        conn.close()
