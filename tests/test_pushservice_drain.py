"""Regression: a ``Prefer: wait=0`` drain of 30,000 stored messages delivers every one of them.

The service used to answer the drain (ending its stream) while pushes were still queued behind
the client's SETTINGS_MAX_CONCURRENT_STREAMS; those could then never be promised, and stayed
"in flight" until ``redelivery_after``: 5,293 of 30,000 arrived in one measurement. The client
here limits concurrent streams to 128, as the gateway does, and its window to 1 MiB.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import h2.config
import h2.connection
import h2.events
import h2.settings
import psycopg
import pytest
import trio

from pushservice.service import PushService
from pushservice.settings import ServiceSettings
from tests.postgres import pg_url_fixture, postgres_fixture  # noqa: F401
from tests.pushservice_client import REL_PUSH, REL_SET, h2_client, link_of, path_of, subscribe

STORED = 30_000
BODY = bytes(200)  # ~ a 100-byte message encrypted (aes128gcm adds 86 bytes)
CLIENT_STREAMS = 128  # gateway/webpush/useragent.py MAX_PUSHED_STREAMS
# HTTP/2's default connection window (RFC 9113 §6.9.2): pushes wait on the client's
# WINDOW_UPDATEs, so at the end of the drain some are still queued behind it. The gateway's 1 MiB
# window only moves the stall (the 5,293 ≈ 1 MiB / 200 bytes).
CLIENT_WINDOW = 65535
# Generous: the drain takes ~10 s of pure-Python h2 on both sides of a loaded 2-core machine.
DRAIN_LIMIT = 120.0

_COLUMNS = "id, sub_id, push_id, set_id, body, content_encoding, urgency, created, expires"


def _store_directly(service: PushService, sub_url: str, push_url: str, set_url: str) -> None:
    """30,000 messages straight into the database (the POST path is not what is tested)."""
    sub_id, push_id, set_id = (u.rsplit("/", 1)[1] for u in (sub_url, push_url, set_url))
    rows = [
        (f"m{i:06d}", sub_id, push_id, set_id, BODY, "aes128gcm", 2, 1.0 * i, 9e9)
        for i in range(STORED)
    ]
    store = service.db.store
    if store.shared:
        with psycopg.connect(service._storage, autocommit=True) as conn:  # type: ignore[arg-type]
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO messages ({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    rows,
                )
            conn.execute("UPDATE subscriptions SET pending = %s WHERE id = %s", (STORED, sub_id))
    else:
        db: sqlite3.Connection = store._db  # type: ignore[attr-defined]
        with store._lock:  # type: ignore[attr-defined]
            db.executemany(f"INSERT INTO messages ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
            db.execute("UPDATE subscriptions SET pending = ? WHERE id = ?", (STORED, sub_id))


async def _drain(origin: str, set_path: str) -> tuple[int, int, int]:
    """Monitor with wait=0 as the gateway does.

    Returns the pushes promised before the final answer, its status, and the pushes completed
    in the end (bodies may follow the answer: they wait on flow control, the answer does not).
    """
    host, port = origin.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(
        client=True,
        initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: CLIENT_STREAMS},
    )
    conn.initiate_connection()
    if CLIENT_WINDOW > 65535:
        conn.increment_flow_control_window(CLIENT_WINDOW - 65535)
    sid = conn.get_next_available_stream_id()
    headers = [
        (":method", "GET"),
        (":path", set_path),
        (":authority", f"{host}:{port}"),
        (":scheme", "http"),
        ("prefer", "wait=0"),
    ]
    conn.send_headers(sid, headers, end_stream=True)
    await stream.send_all(conn.data_to_send())
    pushed: set[int] = set()
    completed = 0
    status = 0
    promised_before = 0
    while status == 0 or completed < len(pushed):
        data = await stream.receive_some(1 << 16)
        assert data, f"the service closed the connection after {completed} pushes"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.PushedStreamReceived):
                pushed.add(event.pushed_stream_id)
            elif isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id in pushed:
                completed += 1
            elif isinstance(event, h2.events.ResponseReceived) and event.stream_id == sid:
                status = int(dict(event.headers)[b":status"])
                promised_before = len(pushed)
        await stream.send_all(conn.data_to_send())
    await stream.aclose()
    return promised_before, status, completed


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_a_drain_of_30000_stored_messages_delivers_them_all(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    storage = (
        request.getfixturevalue("pg_url")
        if backend == "postgres"
        else f"sqlite://{tmp_path / 'push.sqlite3'}"
    )
    service = PushService(ServiceSettings(redelivery_after=3600), storage=storage)
    async with trio.open_nursery() as nursery:
        await nursery.start(service.serve)
        async with h2_client(service.origin) as ua:
            sub = await subscribe(ua)
        location = sub.header("location")
        assert location is not None
        set_url = link_of(sub, REL_SET)
        push_url = link_of(sub, REL_PUSH)
        _store_directly(service, location, push_url, set_url)
        with trio.fail_after(DRAIN_LIMIT):
            promised, status, completed = await _drain(service.origin, path_of(set_url))
        assert (promised, status, completed) == (STORED, 200, STORED)
        nursery.cancel_scope.cancel()
    service.close()
