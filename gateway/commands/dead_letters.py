"""``fieldgate dead-letters``: list, show, replay or purge dead letters.

Opens the journal in the configuration's ``push.state_dir`` (beside a running gateway is fine:
SQLite WAL lets both in; the command never takes the gateway's run lock and never creates a
journal). After a replay it wakes the running gateway (:func:`gateway.statedir.nudge_gateway`),
which then reads its journal again and delivers the message at once, and says so; with no
gateway running the message goes out when it starts. ``purge`` without ids deletes nothing
unless told ``--all`` (or confirmed at a terminal).
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from pathlib import Path

from gateway.config import ConfigError, load_config
from gateway.routes import RouteTable
from gateway.statedir import nudge_gateway
from gateway.store import DeadLetter, JournalMissing, Store, StoreError

DEFAULT_CONFIG = Path("/etc/fieldgate/config.toml")
EXIT_OK = 0
EXIT_FAILED = 1  # no such dead letter, cannot replay, journal unusable
EXIT_CONFIG = 2  # the configuration is invalid (as check-config)
EXIT_USAGE = 2  # as argparse: the command line does not say what to do


def configure(parser: argparse.ArgumentParser) -> None:
    """``list|show ID|replay ID|purge [ID ...]``, each with ``--config FILE``."""
    config_help = f"the gateway's configuration (default {DEFAULT_CONFIG})"
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help=config_help)
    # The same option after the action too; SUPPRESS keeps the parent's value when absent.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, default=argparse.SUPPRESS, help=config_help)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="one line per dead letter")
    listing.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    show = actions.add_parser("show", parents=[common], help="everything about one dead letter")
    show.add_argument("id", type=int, metavar="ID")
    show.add_argument(
        "--body", action="store_true", help="also print the plaintext (text, else base64)"
    )
    replay = actions.add_parser(
        "replay", parents=[common], help="put one back into its route's journal"
    )
    replay.add_argument("id", type=int, metavar="ID")
    purge = actions.add_parser(
        "purge", parents=[common], help="delete the given ones, or all with --all"
    )
    purge.add_argument("ids", type=int, nargs="*", metavar="ID")
    purge.add_argument(
        "--all", action="store_true", help="delete every dead letter (asked at a terminal)"
    )
    purge.add_argument("--yes", action="store_true", help="do not ask before deleting all")


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def _summary(dead: DeadLetter) -> dict[str, object]:
    return {
        "id": dead.id,
        "reason": dead.reason,
        "route": dead.route,
        "target": dead.target,
        "push_message_url": dead.push_message_url,
        "received_at": dead.received_at,
        "dead_at": dead.dead_at,
        "expires_at": dead.expires_at,
        "raw_bytes": len(dead.raw_body),
        "plaintext_bytes": None if dead.plaintext is None else len(dead.plaintext),
        "replayable": dead.plaintext is not None and dead.route is not None,
    }


def _print_list(store: Store, as_json: bool) -> None:
    dead_letters = store.dead_letters()
    if as_json:
        for dead in dead_letters:
            print(json.dumps(_summary(dead)))
        return
    if not dead_letters:
        print("no dead letters")
        return
    print(f"{'ID':>6}  {'DIED':19}  {'ROUTE':16}  {'BYTES':>7}  REASON")
    for dead in dead_letters:
        size = len(dead.plaintext) if dead.plaintext is not None else len(dead.raw_body)
        route = dead.route or "-"
        print(f"{dead.id:>6}  {_when(dead.dead_at)}  {route:16}  {size:>7}  {dead.reason}")


def _print_one(dead: DeadLetter, with_body: bool) -> None:
    for key, value in _summary(dead).items():
        if key in ("received_at", "dead_at", "expires_at") and isinstance(value, float):
            value = f"{_when(value)} ({value:.3f})"
        print(f"{key}: {value}")
    for name, value in dead.headers:
        print(f"header: {name}: {value}")
    if with_body and dead.plaintext is not None:
        try:
            print(f"body: {dead.plaintext.decode('utf-8')}")
        except UnicodeDecodeError:
            print(f"body_b64: {base64.b64encode(dead.plaintext).decode('ascii')}")


def _act(store: Store, routes: RouteTable, args: argparse.Namespace) -> int:
    if args.action == "list":
        _print_list(store, args.json)
        return EXIT_OK
    if args.action == "show":
        dead = store.dead_letter(args.id)
        if dead is None:
            print(f"fieldgate: no dead letter {args.id}", file=sys.stderr)
            return EXIT_FAILED
        _print_one(dead, args.body)
        return EXIT_OK
    if args.action == "replay":
        message_id = store.replay_dead_letter(args.id, routes)
        print(f"dead letter {args.id} replayed as message {message_id}")
        print(_when_it_goes_out(store.path.parent))
        return EXIT_OK
    return _purge(store, args)


def _when_it_goes_out(state_dir: Path) -> str:
    nudge = nudge_gateway(state_dir)
    if nudge.pid is None:
        return f"no gateway is running on {state_dir}: it is delivered when the gateway starts"
    if nudge.woken:
        return f"woke the running gateway (pid {nudge.pid}): it is being delivered now"
    who = f"pid {nudge.pid}" if nudge.pid else "pid unknown"
    return (
        f"the running gateway ({who}) could not be woken (another user's process?): it is "
        "delivered when the next pushed message arrives or the gateway restarts"
    )


def _purge(store: Store, args: argparse.Namespace) -> int:
    if args.ids and args.all:
        print("fieldgate: give dead letter ids or --all, not both", file=sys.stderr)
        return EXIT_USAGE
    if not args.ids:
        if not args.all:
            print(
                "fieldgate: purge needs the ids of the dead letters to delete, or --all "
                "(`fieldgate dead-letters list` shows them)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        count = len(store.dead_letters())
        if count and not args.yes and not _confirmed(count):
            print("nothing purged")
            return EXIT_FAILED
    ids = args.ids or None
    removed = store.purge_dead_letters(ids)
    print(f"purged {removed} dead letter{'s' if removed != 1 else ''}")
    return EXIT_OK if ids is None or removed == len(ids) else EXIT_FAILED


def _confirmed(count: int) -> bool:
    """Ask at a terminal; without one (a script), --yes is required."""
    if not sys.stdin.isatty():
        print(
            f"fieldgate: purge --all would delete {count} dead letters; add --yes to confirm "
            "(stdin is not a terminal to ask)",
            file=sys.stderr,
        )
        return False
    try:
        answer = input(f"delete all {count} dead letters? [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def run(args: argparse.Namespace) -> int:
    """Do the action; 0 on success, 1 when it failed, 2 for an invalid configuration."""
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"fieldgate: {args.config}: invalid configuration:\n{error}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as error:
        print(f"fieldgate: cannot read {args.config}: {error.strerror}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        store = Store.open(config.push.state_dir, journal=config.journal, create=False)
    except JournalMissing:
        print(f"fieldgate: no journal in {config.push.state_dir}: nothing dead yet")
        return EXIT_OK if args.action == "list" else EXIT_FAILED
    except StoreError as error:
        print(f"fieldgate: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return _act(store, RouteTable(config.routes), args)
    except StoreError as error:
        print(f"fieldgate: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        store.close()
