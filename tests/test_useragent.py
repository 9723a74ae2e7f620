"""The sans-IO user agent against an in-memory h2 server: no sockets, no clocks."""

from __future__ import annotations

from collections.abc import Sequence

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hpack import NeverIndexedHeaderTuple

from gateway.webpush import useragent as ua
from gateway.webpush.links import REL_PUSH, REL_SET, parse_link_header

ORIGIN = "https://push.example.net"


class Server:
    """A scripted HTTP/2 server: records requests, answers what each test tells it to."""

    def __init__(self, max_concurrent_streams: int = 100) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_concurrent_streams
            },
        )
        self.conn.initiate_connection()
        self.requests: dict[int, dict[str, str]] = {}
        self.never_indexed: dict[int, set[str]] = {}  # names the client marked so (RFC 7541)
        self.order: list[int] = []
        self.resets: list[int] = []

    def feed(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                self.requests[ev.stream_id] = dict(ev.headers)
                self.never_indexed[ev.stream_id] = {
                    h[0] for h in ev.headers if isinstance(h, NeverIndexedHeaderTuple)
                }
                self.order.append(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.resets.append(ev.stream_id)

    def respond(
        self, stream_id: int, status: int, headers: Sequence[tuple[str, str]] = (), body=b""
    ) -> None:
        self.conn.send_headers(stream_id, [(":status", str(status)), *headers], end_stream=not body)
        if body:
            self.conn.send_data(stream_id, body, end_stream=True)

    def push(
        self,
        parent: int,
        path: str,
        body: bytes,
        *,
        response_headers: Sequence[tuple[str, str]] = (),
        promise_headers: Sequence[tuple[str, str]] = (),
        status: int = 200,
        end: bool = True,
    ) -> int:
        promised = self.conn.get_next_available_stream_id()
        self.conn.push_stream(
            parent,
            promised,
            [
                (":method", "GET"),
                (":path", path),
                (":authority", "push.example.net"),
                (":scheme", "https"),
                *promise_headers,
            ],
        )
        self.conn.send_headers(
            promised,
            [(":status", str(status)), ("content-length", str(len(body))), *response_headers],
        )
        self.conn.send_data(promised, body, end_stream=end)
        return promised


def connect(max_concurrent_streams: int = 100, max_body: int = 4096):
    server = Server(max_concurrent_streams)
    client = ua.UserAgentProtocol(ORIGIN, max_body=max_body)
    client.initiate()
    events = exchange(client, server)
    assert events == []
    return client, server


def exchange(client: ua.UserAgentProtocol, server: Server) -> list[ua.Event]:
    """Shuttle bytes both ways until both sides are quiet; return the client's events."""
    events: list[ua.Event] = []
    for _ in range(20):
        out = client.data_to_send()
        if out:
            server.feed(out)
        back = server.conn.data_to_send()
        if back:
            events.extend(client.receive_data(back))
        if not out and not back:
            return events
    raise AssertionError("the exchange did not settle")


def last_request(server: Server) -> tuple[int, dict[str, str]]:
    sid = server.order[-1]
    return sid, server.requests[sid]


def test_subscribe_resolves_relative_links_and_location():
    client, server = connect()
    rid = client.subscribe(f"{ORIGIN}/subscribe", tag="valves")
    exchange(client, server)
    sid, req = last_request(server)
    assert req[":method"] == "POST" and req[":path"] == "/subscribe"
    assert "link" not in req
    server.respond(
        sid,
        201,
        [
            ("location", "/subscription/abc"),
            (
                "link",
                '</push/p1>; rel="urn:ietf:params:push", </set/s1>; rel="urn:ietf:params:push:set"',
            ),
        ],
    )
    events = exchange(client, server)
    assert events == [
        ua.Subscribed(
            rid, "valves", f"{ORIGIN}/subscription/abc", f"{ORIGIN}/push/p1", f"{ORIGIN}/set/s1"
        )
    ]


def test_subscribe_with_set_and_vapid_sends_link_and_options_body():
    client, server = connect()
    client.subscribe(f"{ORIGIN}/subscribe", set_url=f"{ORIGIN}/set/s1", vapid_key="BKEY")
    exchange(client, server)
    _, req = last_request(server)
    links = parse_link_header(req["link"])
    assert links[0].target == f"{ORIGIN}/set/s1" and REL_SET in links[0].rels
    assert req["content-type"] == "application/webpush-options+json"


def test_subscribe_follows_307_on_the_same_origin():
    client, server = connect()
    rid = client.subscribe(f"{ORIGIN}/subscribe")
    exchange(client, server)
    sid, _ = last_request(server)
    server.respond(sid, 307, [("location", "/elsewhere/subscribe")])
    assert exchange(client, server) == []
    sid2, req2 = last_request(server)
    assert sid2 != sid and req2[":path"] == "/elsewhere/subscribe"
    server.respond(sid2, 201, [("location", "/s/1"), ("link", f'</p/1>; rel="{REL_PUSH}"')])
    (event,) = exchange(client, server)
    assert isinstance(event, ua.Subscribed) and event.request_id == rid


def test_subscribe_400_with_a_set_is_flagged_as_set_rejected():
    client, server = connect()
    client.subscribe(f"{ORIGIN}/subscribe", set_url=f"{ORIGIN}/set/old")
    exchange(client, server)
    sid, _ = last_request(server)
    server.respond(sid, 400, body=b"invalid set")
    (event,) = exchange(client, server)
    assert isinstance(event, ua.SubscribeFailed)
    assert event.set_rejected and event.status == 400 and "invalid set" in event.reason


@pytest.mark.parametrize("status", [429, 503])
def test_subscribe_failure_carries_retry_after(status):
    client, server = connect()
    client.subscribe(f"{ORIGIN}/subscribe")
    exchange(client, server)
    sid, _ = last_request(server)
    server.respond(sid, status, [("retry-after", "17")])
    (event,) = exchange(client, server)
    assert isinstance(event, ua.SubscribeFailed)
    assert event.retry_after == 17.0 and not event.set_rejected


def test_201_without_push_link_is_a_failure():
    client, server = connect()
    client.subscribe(f"{ORIGIN}/subscribe")
    exchange(client, server)
    sid, _ = last_request(server)
    server.respond(sid, 201, [("location", "/s/1")])
    (event,) = exchange(client, server)
    assert isinstance(event, ua.SubscribeFailed) and "urn:ietf:params:push" in event.reason


def test_pushed_message_from_response_headers():
    client, server = connect()
    client.monitor(f"{ORIGIN}/set/s1", urgency="high", wait0=True)
    exchange(client, server)
    sid, req = last_request(server)
    assert req[":method"] == "GET" and req["urgency"] == "high" and req["prefer"] == "wait=0"
    server.push(
        sid,
        "/message/m1",
        b"ciphertext",
        response_headers=[
            ("link", f'</push/p1>; rel="{REL_PUSH}"'),
            ("content-encoding", "aes128gcm"),
            ("last-modified", "Thu, 11 Dec 2014 23:56:55 GMT"),
        ],
    )
    (event,) = exchange(client, server)
    assert isinstance(event, ua.MessageReceived)
    assert event.message_url == f"{ORIGIN}/message/m1"
    assert event.push_url == f"{ORIGIN}/push/p1"
    assert event.set_url == f"{ORIGIN}/set/s1"
    assert event.body == b"ciphertext" and event.content_encoding == "aes128gcm"
    assert ("last-modified", "Thu, 11 Dec 2014 23:56:55 GMT") in event.headers


def test_pushed_message_falls_back_to_promise_headers():
    client, server = connect()
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    server.push(
        sid,
        "/message/m2",
        b"x",
        promise_headers=[
            ("link", f'</push/p2>; rel="{REL_PUSH}"'),
            ("content-encoding", "aes128gcm"),
        ],
    )
    (event,) = exchange(client, server)
    assert isinstance(event, ua.MessageReceived)
    assert event.push_url == f"{ORIGIN}/push/p2" and event.content_encoding == "aes128gcm"


def test_promise_without_push_link_still_delivers_with_no_push_url():
    client, server = connect()
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    server.push(sid, "/message/m3", b"x")
    (event,) = exchange(client, server)
    assert isinstance(event, ua.MessageReceived) and event.push_url is None


def test_body_over_the_limit_is_refused_and_the_stream_reset():
    client, server = connect(max_body=100)
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    promised = server.push(
        sid,
        "/message/big",
        b"x" * 101,
        response_headers=[("link", f'</push/p1>; rel="{REL_PUSH}"')],
        end=False,  # a body that has not ended yet: the reset must stop it
    )
    events = exchange(client, server)
    assert len(events) == 1 and isinstance(events[0], ua.MessageRefused)
    assert events[0].reason == "too_large" and events[0].push_url == f"{ORIGIN}/push/p1"
    assert promised in server.resets


def test_monitor_end_reports_status():
    client, server = connect()
    rid = client.monitor(f"{ORIGIN}/set/s1", wait0=True)
    exchange(client, server)
    sid, _ = last_request(server)
    server.respond(sid, 404)
    assert exchange(client, server) == [ua.MonitorEnded(rid, f"{ORIGIN}/set/s1", 404, None)]


@pytest.mark.parametrize("status", [204, 404, 410])
def test_ack_statuses_that_mean_gone(status):
    client, server = connect()
    rid = client.acknowledge(f"{ORIGIN}/message/m1")
    exchange(client, server)
    sid, req = last_request(server)
    assert req[":method"] == "DELETE" and req[":path"] == "/message/m1"
    server.respond(sid, status)
    (event,) = exchange(client, server)
    assert event == ua.AckCompleted(rid, f"{ORIGIN}/message/m1", status) and event.ok


def test_capability_paths_are_never_indexed_and_stay_out_of_the_hpack_tables():
    client, server = connect()
    client.subscribe(f"{ORIGIN}/subscribe")
    client.monitor(f"{ORIGIN}/set/s1")
    for i in range(50):
        client.acknowledge(f"{ORIGIN}/message/m{i}")
    client.unsubscribe(f"{ORIGIN}/subscription/p1")
    exchange(client, server)
    assert len(server.order) == 53
    assert all(server.never_indexed[sid] == {":path"} for sid in server.order)
    # Nothing of any path entered the service's decoding table (nor, so, our encoding one).
    table = server.conn.decoder.header_table.dynamic_entries
    assert table and not any(b"/" in value for _, value in table)


def test_ack_500_is_not_ok():
    client, server = connect()
    client.acknowledge(f"{ORIGIN}/message/m1")
    exchange(client, server)
    sid, _ = last_request(server)
    server.respond(sid, 500)
    (event,) = exchange(client, server)
    assert isinstance(event, ua.AckCompleted) and not event.ok


def test_two_concurrent_streams_serialise_management_requests_beside_the_monitor():
    client, server = connect(max_concurrent_streams=2)
    client.monitor(f"{ORIGIN}/set/s1")
    for i in range(4):
        client.acknowledge(f"{ORIGIN}/message/m{i}")
    exchange(client, server)
    assert len(server.order) == 2  # the monitor and one ack
    done = []
    for _ in range(4):
        sid = server.order[-1]
        assert server.requests[sid][":method"] == "DELETE"
        server.respond(sid, 204)
        done.extend(exchange(client, server))
    assert [e.message_url for e in done] == [f"{ORIGIN}/message/m{i}" for i in range(4)]
    assert len(server.order) == 5


def test_goaway_is_reported_and_unsent_acks_can_be_taken_back():
    client, server = connect(max_concurrent_streams=2)
    client.monitor(f"{ORIGIN}/set/s1")
    client.acknowledge(f"{ORIGIN}/message/a")
    client.acknowledge(f"{ORIGIN}/message/b")
    exchange(client, server)
    server.conn.close_connection(last_stream_id=1)
    events = exchange(client, server)
    assert isinstance(events[-1], ua.GoAway) and events[-1].last_stream_id == 1
    assert client.take_unsent_acks(last_stream_id=1) == [
        f"{ORIGIN}/message/b",
        f"{ORIGIN}/message/a",
    ]


def test_ping_is_acknowledged():
    client, server = connect()
    client.ping(b"12345678")
    assert exchange(client, server) == [ua.PingAcknowledged(b"12345678")]


def test_garbage_from_the_service_is_a_protocol_violation():
    client, _server = connect()
    with pytest.raises(ua.ProtocolViolation):
        client.receive_data(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")  # DATA on stream 0


def test_end_of_stream_is_connection_closed():
    client, _server = connect()
    assert isinstance(client.receive_data(b"")[0], ua.ConnectionClosed)


def test_urls_on_another_origin_are_refused():
    client, _server = connect()
    with pytest.raises(ValueError):
        client.acknowledge("https://evil.example/message/1")


def test_retry_after_http_date():
    assert ua.parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert ua.parse_retry_after("soon") is None
    assert ua.parse_retry_after("5") == 5.0


def test_a_flood_of_promises_beyond_the_limit_is_refused(monkeypatch):
    monkeypatch.setattr(ua, "MAX_PUSHED_STREAMS", 3)
    client, server = connect()
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    promised = []
    for i in range(5):
        stream = server.conn.get_next_available_stream_id()
        server.conn.push_stream(
            sid,
            stream,
            [
                (":method", "GET"),
                (":path", f"/message/{i}"),
                (":authority", "x"),
                (":scheme", "https"),
            ],
        )
        promised.append(stream)
    exchange(client, server)
    assert client.open_pushes() == frozenset(promised[:3])
    assert client.pushes_refused == 2


def test_stalled_pushes_can_be_cancelled():
    client, server = connect()
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    promised = server.push(sid, "/message/slow", b"part", end=False)
    exchange(client, server)
    assert client.open_pushes() == {promised}
    assert client.cancel_pushes([promised, 999]) == 1
    exchange(client, server)
    assert client.open_pushes() == frozenset()
    assert promised in server.resets


def test_nothing_is_sent_before_the_preface():
    client = ua.UserAgentProtocol(ORIGIN, max_body=4096)
    client.acknowledge(f"{ORIGIN}/message/early")
    assert client.data_to_send() == b""
    client.initiate()
    data = client.data_to_send()
    assert data.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    server = Server()
    server.feed(data)
    assert [r[":path"] for r in server.requests.values()] == ["/message/early"]


def test_before_the_service_settings_at_most_100_requests_are_open():
    client = ua.UserAgentProtocol(ORIGIN, max_body=4096)
    client.initiate()
    for i in range(150):
        client.acknowledge(f"{ORIGIN}/message/{i}")
    server = Server(max_concurrent_streams=100)
    server.feed(client.data_to_send())  # h2 would raise TooManyStreamsError beyond 100
    assert len(server.requests) == ua.ASSUMED_MAX_CONCURRENT_STREAMS


def test_a_frame_announced_over_the_limit_is_refused_before_it_is_buffered():
    client, _server = connect()
    # A DATA frame header announcing 16 MiB - 1 bytes, and only a few bytes of it.
    header = (2**24 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    with pytest.raises(ua.ProtocolViolation, match="overlong frame"):
        client.receive_data(header + b"x" * 10)


def _lax_server() -> Server:
    """A server whose h2 sends whatever it is given (a hostile or broken push service)."""
    server = Server()
    server.conn.config.validate_outbound_headers = False
    server.conn.config.normalize_outbound_headers = False
    return server


@pytest.mark.parametrize("path", ["/message/a b", "/message/\r\nx: y", "/message/\x00", "//é"])
def test_a_promised_path_that_could_not_be_sent_back_is_refused(path):
    # h2's inbound header validation is off for speed: the user agent checks what it reuses.
    server = _lax_server()
    client = ua.UserAgentProtocol(ORIGIN, max_body=4096)
    client.initiate()
    exchange(client, server)
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    server.push(sid, path, b"x")
    with pytest.raises(ua.ProtocolViolation, match="unusable :path"):
        exchange(client, server)


def test_header_names_are_read_case_insensitively_without_h2_normalising_them():
    server = _lax_server()
    client = ua.UserAgentProtocol(ORIGIN, max_body=4096)
    client.initiate()
    exchange(client, server)
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    server.push(
        sid,
        "/message/m9",
        b"x",
        response_headers=[
            ("Link", f'</push/p9>; rel="{REL_PUSH}"'),
            ("Content-Encoding", "aes128gcm"),
        ],
    )
    (event,) = exchange(client, server)
    assert isinstance(event, ua.MessageReceived)
    assert event.push_url == f"{ORIGIN}/push/p9" and event.content_encoding == "aes128gcm"


def test_pushed_streams_are_forgotten_even_when_nothing_is_sent():
    # Under ack = "delivered" with a device down nothing is acknowledged: h2 must still forget
    # the closed pushed streams (it prunes only when it counts streams for a new one of ours).
    client, server = connect()
    client.monitor(f"{ORIGIN}/set/s1")
    exchange(client, server)
    sid, _ = last_request(server)
    for i in range(2000):
        server.push(sid, f"/message/m{i}", b"x")
        exchange(client, server)
        server.conn.increment_flow_control_window(1)  # keep the server's window open
    assert len(client._conn.streams) < 2 * ua.MAX_PUSHED_STREAMS
