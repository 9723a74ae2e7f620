"""The sans-IO autopush client core against a sans-IO wsproto server, in memory."""

from __future__ import annotations

import base64
import json

import pytest
import wsproto
import wsproto.events as ws
from hypothesis import given
from hypothesis import strategies as st

from gateway.webpush.autopush import (
    ACK_DECRYPTION_ERROR,
    BACKOFF_CLOSE_CODE,
    MAX_ACKS_PER_MESSAGE,
    SUBPROTOCOL,
    Ack,
    AutopushProtocol,
    BroadcastReceived,
    Connected,
    ConnectionClosed,
    ConnectionGone,
    HandshakeRejected,
    HelloAccepted,
    NotificationReceived,
    NotificationRefused,
    PongReceived,
    ProtocolPong,
    ProtocolViolation,
    Registered,
    RegisterFailed,
    ServerClosed,
    UnknownMessage,
    Unregistered,
)

CHID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
CHID2 = "a4b1c9d2-0000-4000-8000-00000000beef"
UAID = "0123456789abcdef0123456789abcdef"
MAX = 16 * 1024


class Service:
    """The service side: a wsproto server fed by and feeding one client core."""

    def __init__(self) -> None:
        self.conn = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
        self.request: ws.Request | None = None
        self.received: list[object] = []  # JSON messages, in order
        self.frames: list[ws.Event] = []  # everything else the client sent

    def feed(self, data: bytes) -> None:
        if not data:
            return
        self.conn.receive_data(data)
        for event in self.conn.events():
            if isinstance(event, ws.Request):
                self.request = event
            elif isinstance(event, ws.TextMessage):
                self.received.append(json.loads(event.data))
            else:
                self.frames.append(event)

    def accept(self) -> bytes:
        return self.conn.send(ws.AcceptConnection())

    def text(self, message: object) -> bytes:
        data = message if isinstance(message, str) else json.dumps(message)
        return self.conn.send(ws.TextMessage(data=data))


def pump(client: AutopushProtocol, service: Service, data: bytes = b"") -> list[object]:
    """Deliver ``data`` to the client, then everything the client queued to the service."""
    events: list[object] = list(client.receive_data(data)) if data else []
    service.feed(client.data_to_send())
    return events


def opened(uaid: str | None = None, max_body: int = 5630) -> tuple[AutopushProtocol, Service]:
    """A client whose handshake was accepted and whose hello is on its way."""
    client = AutopushProtocol("push.example.test", max_message_bytes=MAX, max_body=max_body)
    service = Service()
    client.initiate()
    client.hello(uaid)
    service.feed(client.data_to_send())
    events = pump(client, service, service.accept())
    assert events == [Connected(None)]
    assert service.received[-1]["messageType"] == "hello"  # type: ignore[index]
    return client, service


def connect(uaid: str | None = UAID, answer: str | None = None) -> tuple[AutopushProtocol, Service]:
    """A client that said hello and got its reply."""
    client, service = opened(uaid)
    reply = {
        "messageType": "hello",
        "uaid": answer or uaid or UAID,
        "status": 200,
        "use_webpush": True,
        "broadcasts": {},
    }
    events = pump(client, service, service.text(reply))
    assert isinstance(events[0], HelloAccepted)
    return client, service


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# ------------------------------------------------------------------------------ handshake


def test_handshake_asks_for_the_push_subprotocol_and_sends_hello_once_open() -> None:
    client = AutopushProtocol("push.example.test:8443", "/ws", max_message_bytes=MAX)
    service = Service()
    client.initiate()
    client.hello(None)
    service.feed(client.data_to_send())
    assert service.request is not None
    assert service.request.host == "push.example.test:8443"
    assert service.request.target == "/ws"
    assert service.request.subprotocols == [SUBPROTOCOL]
    assert service.received == []  # nothing before the 101
    assert pump(client, service, service.accept()) == [Connected(None)]
    # The first connect carries no uaid: the service issues one.
    assert service.received == [{"messageType": "hello", "use_webpush": True, "broadcasts": {}}]


def test_user_agent_header_only_when_given() -> None:
    client = AutopushProtocol("h", max_message_bytes=MAX, user_agent="fieldgate/1")
    client.initiate()
    assert b"User-Agent: fieldgate/1\r\n" in client.data_to_send()
    plain = AutopushProtocol("h", max_message_bytes=MAX)
    plain.initiate()
    assert b"user-agent" not in plain.data_to_send().lower()


def test_hello_with_a_stored_uaid_and_the_reply_keeping_it() -> None:
    client, service = connect(UAID)
    assert service.received[0] == {
        "messageType": "hello",
        "uaid": UAID,
        "use_webpush": True,
        "broadcasts": {},
    }
    assert client.uaid == UAID and client.ready


def test_reset_is_a_different_uaid_than_requested() -> None:
    client, service = opened(UAID)
    other = "f" * 32
    reply = {"messageType": "hello", "uaid": other, "status": 200, "broadcasts": {"x": "v1"}}
    events = pump(client, service, service.text(reply))
    hello = events[0]
    assert isinstance(hello, HelloAccepted)
    assert hello.reset and hello.uaid == other and hello.requested_uaid == UAID
    assert hello.broadcasts == (("x", "v1"),)
    assert not HelloAccepted(UAID, UAID, 200, ()).reset
    assert not HelloAccepted(UAID, None, 200, ()).reset  # first connect: nothing was lost


def test_handshake_refused_with_retry_after() -> None:
    client = AutopushProtocol("h", max_message_bytes=MAX)
    client.initiate()
    client.data_to_send()
    refusal = (
        b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 120\r\nContent-Length: 4\r\n\r\nbusy"
    )
    events = client.receive_data(refusal)
    assert events[0] == HandshakeRejected(503, 120.0)
    assert isinstance(events[-1], ConnectionClosed)
    assert client.closed


# ------------------------------------------------------------------------------- requests


def test_requests_wait_for_the_hello_reply_then_go_in_order() -> None:
    client = AutopushProtocol("h", max_message_bytes=MAX)
    service = Service()
    client.initiate()
    client.hello(None)
    client.register(CHID, "BAAA")
    client.protocol_ping()
    service.feed(client.data_to_send())
    pump(client, service, service.accept())
    assert [m["messageType"] for m in service.received] == ["hello"]  # type: ignore[index]
    pump(client, service, service.text({"messageType": "hello", "uaid": UAID, "status": 200}))
    assert service.received[1:] == [
        {"messageType": "register", "channelID": CHID, "key": "BAAA"},
        {},
    ]


def test_register_without_key_and_the_endpoint() -> None:
    client, service = connect()
    client.register(CHID)
    service.feed(client.data_to_send())
    assert service.received[-1] == {"messageType": "register", "channelID": CHID}
    assert client.awaiting_replies == {CHID}
    endpoint = "https://updates.push.example.test/wpush/v1/gAAAA"
    reply = {"messageType": "register", "channelID": CHID, "status": 200, "pushEndpoint": endpoint}
    assert pump(client, service, service.text(reply)) == [Registered(CHID, endpoint, 200)]
    assert client.awaiting_replies == frozenset()


@pytest.mark.parametrize(
    ("reply", "status", "reason"),
    [
        ({"status": 400, "pushEndpoint": "Failed to generate endpoint"}, 400, "status 400"),
        ({"status": 200}, 200, "status 200 without a usable pushEndpoint"),
        ({"status": 200, "pushEndpoint": "ftp://x/y"}, 200, "status 200 without a usable"),
        ({"status": 200, "pushEndpoint": "https:// spaced"}, 200, "status 200 without a usable"),
        ({"status": "200", "pushEndpoint": "https://x/"}, 0, "register reply without a status"),
    ],
)
def test_register_failures(reply: dict[str, object], status: int, reason: str) -> None:
    client, service = connect()
    client.register(CHID)
    service.feed(client.data_to_send())
    events = pump(
        client, service, service.text({"messageType": "register", "channelID": CHID} | reply)
    )
    assert len(events) == 1 and isinstance(events[0], RegisterFailed)
    assert events[0].status == status and events[0].reason.startswith(reason)


def test_register_refuses_what_autopush_would_refuse() -> None:
    client, _ = connect()
    with pytest.raises(ValueError, match="lowercase dashed UUID"):
        client.register(CHID.upper())
    with pytest.raises(ValueError, match="lowercase dashed UUID"):
        client.register(CHID.replace("-", ""))
    with pytest.raises(ValueError, match="key"):
        client.register(CHID, "not base64!")
    client.register(CHID)
    with pytest.raises(ValueError, match="already waiting"):
        client.register(CHID)


def test_unregister() -> None:
    client, service = connect()
    client.unregister(CHID)
    service.feed(client.data_to_send())
    assert service.received[-1] == {"messageType": "unregister", "channelID": CHID, "code": 200}
    reply = {"messageType": "unregister", "channelID": CHID, "status": 200}
    assert pump(client, service, service.text(reply)) == [Unregistered(CHID, 200)]
    with pytest.raises(ValueError, match="unregister code"):
        client.unregister(CHID, 999)


def test_ack_carries_every_update_with_its_code_and_splits_large_ones() -> None:
    client, service = connect()
    client.ack([Ack(CHID, "v1"), Ack(CHID2, "v2", ACK_DECRYPTION_ERROR)])
    service.feed(client.data_to_send())
    assert service.received[-1] == {
        "messageType": "ack",
        "updates": [
            {"channelID": CHID, "version": "v1", "code": 100},
            {"channelID": CHID2, "version": "v2", "code": 101},
        ],
    }
    many = [Ack(CHID, f"v{i}") for i in range(MAX_ACKS_PER_MESSAGE + 1)]
    client.ack(many)
    service.feed(client.data_to_send())
    sizes = [len(m["updates"]) for m in service.received[-2:]]  # type: ignore[index]
    assert sizes == [MAX_ACKS_PER_MESSAGE, 1]
    with pytest.raises(ValueError, match="ack code"):
        client.ack([Ack(CHID, "v", 200)])
    with pytest.raises(ValueError, match="channel id and the version"):
        client.ack([Ack(CHID, "")])


def test_nack_and_protocol_ping() -> None:
    client, service = connect()
    client.nack("v9", 301)
    client.protocol_ping()
    service.feed(client.data_to_send())
    assert service.received[-2:] == [{"messageType": "nack", "version": "v9", "code": 301}, {}]
    assert pump(client, service, service.text("{}")) == [ProtocolPong()]
    assert pump(client, service, service.text({"messageType": "ping"})) == [ProtocolPong()]
    with pytest.raises(ValueError, match="nack code"):
        client.nack("v9", 100)


# -------------------------------------------------------------------------- notifications


def test_notification_body_is_the_decoded_data() -> None:
    client, service = connect()
    body = bytes(range(256)) * 3
    message = {
        "messageType": "notification",
        "channelID": CHID,
        "version": "gAAAAB-1",
        "data": b64(body),
        "headers": {"encoding": "aes128gcm"},
        "ttl": 60,
    }
    assert pump(client, service, service.text(message)) == [
        NotificationReceived(CHID, "gAAAAB-1", body, "aes128gcm", (("encoding", "aes128gcm"),), 60)
    ]


def test_notification_without_data_is_an_empty_body_and_padding_is_accepted() -> None:
    client, service = connect()
    bare = {"messageType": "notification", "channelID": CHID, "version": "v1"}
    assert pump(client, service, service.text(bare)) == [
        NotificationReceived(CHID, "v1", b"", None, (), None)
    ]
    aesgcm = {"encoding": "aesgcm", "encryption": "salt=x"}
    padded = bare | {"version": "v2", "data": "AQI=", "headers": aesgcm}
    (event,) = pump(client, service, service.text(padded))
    assert isinstance(event, NotificationReceived)
    assert event.body == b"\x01\x02" and event.encoding == "aesgcm"
    assert event.headers == (("encoding", "aesgcm"), ("encryption", "salt=x"))


def test_notification_for_an_unknown_channel_is_reported_as_is() -> None:
    client, service = connect()
    other = "99999999-9999-4999-8999-999999999999"
    message = {"messageType": "notification", "channelID": other, "version": "v"}
    (event,) = pump(client, service, service.text(message))
    assert isinstance(event, NotificationReceived) and event.channel_id == other


@pytest.mark.parametrize(
    ("fields", "reason", "ackable"),
    [
        ({"data": "@@@@"}, "bad_base64", True),
        ({"data": 42}, "bad_base64", True),
        ({"data": b64(b"x" * 5000)}, "too_large", True),
        ({"headers": ["encoding"]}, "bad_headers", True),
        ({"headers": {"encoding": 1}}, "bad_headers", True),
        ({"version": None}, "missing_fields", False),
        ({"version": "v" * 5000}, "missing_fields", False),
        ({"channelID": 7}, "missing_fields", False),
    ],
)
def test_notifications_the_core_refuses(
    fields: dict[str, object], reason: str, ackable: bool
) -> None:
    client, service = opened(max_body=4096)
    pump(client, service, service.text({"messageType": "hello", "uaid": UAID, "status": 200}))
    message = {"messageType": "notification", "channelID": CHID, "version": "v1"} | fields
    (event,) = pump(client, service, service.text(message))
    assert isinstance(event, NotificationRefused)
    assert event.reason == reason and event.ackable is ackable
    assert client.ready  # refused, not dropped: the caller acks it and goes on


def test_unknown_message_types_and_broadcasts_are_reported() -> None:
    client, service = connect()
    assert pump(client, service, service.text({"messageType": "future_thing"})) == [
        UnknownMessage("future_thing")
    ]
    bc = {"messageType": "broadcast", "broadcasts": {"remote-settings": "v3", "errors": {}}}
    assert pump(client, service, service.text(bc)) == [
        BroadcastReceived((("remote-settings", "v3"),))
    ]


# ------------------------------------------------------------------------- pings and close


def test_service_pings_are_answered_and_our_pings_reported() -> None:
    client, service = connect()
    assert pump(client, service, service.conn.send(ws.Ping(payload=b"svc"))) == []
    assert ws.Pong(payload=b"svc") in service.frames
    client.ping(b"ours")
    service.feed(client.data_to_send())
    assert ws.Ping(payload=b"ours") in service.frames
    assert pump(client, service, service.conn.send(ws.Pong(payload=b"ours"))) == [
        PongReceived(b"ours")
    ]
    with pytest.raises(ValueError, match="125"):
        client.ping(b"x" * 126)


def test_close_4774_means_do_not_reconnect() -> None:
    client, service = connect()
    closing = service.conn.send(ws.CloseConnection(code=BACKOFF_CLOSE_CODE, reason="go away"))
    events = pump(client, service, closing)
    assert events == [ServerClosed(BACKOFF_CLOSE_CODE, "go away")]
    assert isinstance(events[0], ServerClosed) and events[0].do_not_reconnect
    assert any(isinstance(f, ws.CloseConnection) for f in service.frames)  # our reply
    assert not client.ready
    with pytest.raises(ConnectionGone):
        client.register(CHID)
    assert client.receive_data(b"") == [ConnectionClosed("the service closed the connection")]
    assert client.receive_data(b"more") == []


def test_our_close_is_answered() -> None:
    client, service = connect()
    client.close()
    service.feed(client.data_to_send())
    assert ws.CloseConnection(code=1000, reason="") in service.frames
    reply = service.conn.send(ws.CloseConnection(code=1000))
    assert pump(client, service, reply) == [ConnectionClosed("closed (code 1000)")]
    assert client.closed


def test_messages_after_our_close_are_ignored() -> None:
    client, service = connect()
    late = service.text({"messageType": "notification", "channelID": CHID, "version": "v"})
    client.close()  # crosses the notification on the wire
    assert client.receive_data(late) == []
    assert client.data_to_send().startswith(b"\x88")  # only our close frame went out


# ------------------------------------------------------------------------- hostile service


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ("not json {", "not JSON"),
        ("[1, 2]", "not an object"),
        ('{"messageType": 5}', "not a string"),
        ("[" * 5000 + "]" * 5000, "not JSON"),  # nesting deeper than the JSON parser's stack
        ('{"messageType": "hello", "uaid": "x", "status": 200}', "second hello"),
        (json.dumps({"messageType": "register", "channelID": CHID, "status": 200}), "did not ask"),
        ('{"messageType": "unregister", "channelID": null}', "did not ask"),
    ],
)
def test_garbage_from_the_service_is_a_violation(payload: str, match: str) -> None:
    client, service = connect()
    with pytest.raises(ProtocolViolation, match=match):
        client.receive_data(service.text(payload))
    service.feed(client.data_to_send())
    assert ws.CloseConnection(code=1002, reason="") not in service.frames  # a reason is given
    assert any(isinstance(f, ws.CloseConnection) and f.code == 1002 for f in service.frames)
    assert client.closed and client.receive_data(b"x") == []
    with pytest.raises(ConnectionGone):
        client.ack([Ack(CHID, "v")])


def test_binary_frames_are_refused_with_1003() -> None:
    client, service = connect()
    with pytest.raises(ProtocolViolation, match="binary"):
        client.receive_data(service.conn.send(ws.BytesMessage(data=b"\x00\x01")))
    service.feed(client.data_to_send())
    assert any(isinstance(f, ws.CloseConnection) and f.code == 1003 for f in service.frames)


def test_oversized_messages_are_refused_with_1009_before_they_are_complete() -> None:
    client, service = connect()
    huge = service.text("x" * (MAX * 4))
    with pytest.raises(ProtocolViolation, match="over"):
        client.receive_data(huge[: MAX + 100])  # the frame is far from complete
    service.feed(client.data_to_send())
    assert any(isinstance(f, ws.CloseConnection) and f.code == 1009 for f in service.frames)


def test_oversized_messages_split_into_fragments_are_refused_too() -> None:
    client, service = connect()
    fragments = b"".join(
        service.conn.send(ws.TextMessage(data="y" * 4000, message_finished=False)) for _ in range(5)
    )
    with pytest.raises(ProtocolViolation, match="over"):
        client.receive_data(fragments)


def test_anything_before_the_hello_reply_is_a_violation() -> None:
    client, service = opened()
    early = {"messageType": "notification", "channelID": CHID, "version": "v"}
    with pytest.raises(ProtocolViolation, match="before the hello reply"):
        client.receive_data(service.text(early))


@pytest.mark.parametrize(
    "reply",
    [
        {"messageType": "hello", "status": 200},
        {"messageType": "hello", "uaid": "", "status": 200},
        {"messageType": "hello", "uaid": "u" * 129, "status": 200},
        {"messageType": "hello", "uaid": "bad uaid\n", "status": 200},
        {"messageType": "hello", "uaid": UAID, "status": 503},
    ],
)
def test_unusable_hello_replies(reply: dict[str, object]) -> None:
    client, service = opened()
    with pytest.raises(ProtocolViolation, match="hello"):
        client.receive_data(service.text(reply))
    assert client.uaid is None


def test_a_masked_frame_from_the_service_breaks_rfc_6455() -> None:
    client, _ = connect()
    # A client-side encoder masks its frames, which a server must never do (RFC 6455 §5.1).
    masked = wsproto.frame_protocol.FrameProtocol(client=True, extensions=[]).send_data("{}", True)
    with pytest.raises(ProtocolViolation, match="bad WebSocket frame"):
        client.receive_data(bytes(masked))


def test_constructor_and_call_order_checks() -> None:
    with pytest.raises(ValueError, match="max_message_bytes"):
        AutopushProtocol("h", max_message_bytes=100)
    with pytest.raises(ValueError, match="host"):
        AutopushProtocol("h/x", max_message_bytes=MAX)
    client = AutopushProtocol("h", max_message_bytes=MAX)
    with pytest.raises(RuntimeError, match="initiate"):
        client.hello(None)
    client.initiate()
    with pytest.raises(ValueError, match="uaid"):
        client.hello("no spaces allowed")
    client.hello(None)
    with pytest.raises(RuntimeError, match="already"):
        client.hello(None)
    with pytest.raises(ConnectionGone, match="handshake"):
        client.ping(b"")
    client.register(CHID)
    assert [json.loads(t) for t in client.take_unsent()] == [
        {"messageType": "register", "channelID": CHID}
    ]


# ---------------------------------------------------------------------- property tests


def _only_violations(client: AutopushProtocol, chunks: list[bytes]) -> None:
    for chunk in chunks:
        try:
            client.receive_data(chunk)
        except ProtocolViolation:
            return
        client.data_to_send()


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_property_random_bytes_during_the_handshake_raise_only_violations(
    chunks: list[bytes],
) -> None:
    client = AutopushProtocol("h", max_message_bytes=MAX)
    client.initiate()
    client.hello(None)
    client.data_to_send()
    _only_violations(client, chunks)


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8))
def test_property_random_bytes_on_an_open_connection_raise_only_violations(
    chunks: list[bytes],
) -> None:
    client, _ = connect()
    _only_violations(client, chunks)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_messages = st.fixed_dictionaries(
    {},
    optional={
        "messageType": st.sampled_from(
            ["hello", "register", "unregister", "notification", "broadcast", "ping", "zz"]
        )
        | _json,
        "channelID": st.sampled_from([CHID, CHID2]) | _json,
        "version": st.text(max_size=8) | _json,
        "status": st.sampled_from([200, 400]) | _json,
        "pushEndpoint": st.sampled_from(["https://p/x"]) | _json,
        "data": st.sampled_from(["", "AQID", "====", "A"]) | _json,
        "headers": _json,
        "uaid": _json,
        "ttl": _json,
    },
)


@given(st.lists(_messages | _json, max_size=6))
def test_property_random_json_messages_raise_only_violations(messages: list[object]) -> None:
    client, service = connect()
    client.register(CHID)
    client.unregister(CHID2)
    service.feed(client.data_to_send())
    _only_violations(client, [service.text(json.dumps(m)) for m in messages])
