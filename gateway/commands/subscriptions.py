"""``fieldgate subscriptions``: print each route's W3C PushSubscription JSON.

Read only: on a state directory where the gateway has not run yet it says so and creates
nothing. Each route's heading carries its push resource's identifier, the one ``/status`` and
``fieldgate status`` show instead of the URL (:func:`gateway.status_schema.capability_id`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.status_schema import capability_id
from gateway.store import JournalMissing, Store, StoreError
from gateway.webpush.crypto import PushSubscriptionInfo, SubscriptionKeys

EXIT_CONFIG = 2
EXIT_NOT_YET = 1


def configure(parser: argparse.ArgumentParser) -> None:
    """``--config FILE [--json] [ROUTE]``."""
    parser.add_argument("--config", type=Path, default=Path("/etc/fieldgate/config.toml"))
    parser.add_argument("--json", action="store_true", help="one JSON object keyed by route")
    parser.add_argument("route", nargs="?", help="only this route (prints its bare JSON)")


def run(args: argparse.Namespace) -> int:
    """Read the subscriptions from the state directory the gateway keeps them in."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    try:
        store = Store.open(config.push.state_dir, journal=config.journal, create=False)
    except JournalMissing:
        names = ", ".join(route.name for route in config.routes) or "no routes"
        print(f"fieldgate: not subscribed yet (start the gateway first): {names}", file=sys.stderr)
        return EXIT_NOT_YET
    except StoreError as exc:
        print(f"fieldgate: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        records = {r.route: r for r in store.subscriptions()}
    finally:
        store.close()
    infos: dict[str, dict[str, object]] = {}
    for route in config.routes:
        record = records.get(route.name)
        if record is None:
            continue
        keys = SubscriptionKeys.from_private_bytes(record.private_key_der, record.auth_secret)
        infos[route.name] = PushSubscriptionInfo(
            record.push_url, keys.p256dh, keys.auth_secret
        ).to_json()
    missing = [r.name for r in config.routes if r.name not in infos]
    if args.route:
        if args.route not in infos:
            print(f"fieldgate: route {args.route!r} has no subscription yet", file=sys.stderr)
            return EXIT_NOT_YET
        print(json.dumps(infos[args.route], indent=2))
        return 0
    if args.json:
        print(json.dumps(infos, indent=2))
    else:
        for name, info in infos.items():
            print(f"# route {name} (push resource id {capability_id(records[name].push_url)})")
            print(json.dumps(info, indent=2))
    if missing:
        print(
            "fieldgate: not subscribed yet (start the gateway first): " + ", ".join(missing),
            file=sys.stderr,
        )
        return EXIT_NOT_YET
    return 0
