"""The application server of the end-to-end benchmark (a child process).

``python -m bench.e2e_sender KEYS_FILE TTL`` then JSON commands on stdin:

* ``{"cmd": "encrypt", "route": R, "count": N}``: grow route R's pool of pre-encrypted messages
  to N (``gateway.webpush.crypto.encrypt``, a fresh sender key each, as pywebpush does); the
  payload of message i carries i (``e2e_common.payload``). Answers ``encrypted``.
* ``{"cmd": "post", "route": R, "count": N, "rate": X, "times": bool}``: POST messages 0, 1,
  ... over one HTTP/1.1 keep-alive connection, at X messages/s on a fixed schedule (0: each as
  soon as the last was answered). Answers ``sent`` with the send time of each message when
  ``times`` (time.monotonic(), taken just before the request is written: the latency figures
  start here).

Every POST carries a ciphertext never sent before, as a real application server's would (the
gateway drops a repeated record salt as a replay): a pooled one when there is one, else one
encrypted on the spot; after answering ``sent`` the pool is refilled for the next command.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import h11

from bench.agent_sender import KeepAliveSender as BaseSender
from bench.e2e_common import CORE_PEERS, commands, emit, payload, pin, read_keys
from gateway.webpush.crypto import encrypt

RECEIVE_SIZE = 65536


class KeepAliveSender(BaseSender):
    """The agent benchmark's sender, opening the connection again once if the service closed
    it, as an application server's HTTP client would (counted in ``reconnects``)."""

    def __init__(self, host: str, port: int, ttl: int) -> None:
        self.reconnects = 0
        super().__init__(host, port, ttl)

    def post(self, path: str, body: bytes) -> int:
        """One POST; returns the status code."""
        try:
            return super().post(path, body)
        except (ConnectionError, h11.ProtocolError):
            self.sock.close()
            self.reconnects += 1
            self._connect()
            return super().post(path, body)


class Pool:
    """One route's unused ciphertexts, per message index (each is POSTed once)."""

    def __init__(self, p256dh: bytes, auth: bytes) -> None:
        self.p256dh, self.auth = p256dh, auth
        self.slots: list[list[bytes]] = []

    def fresh(self, i: int) -> bytes:
        return encrypt(payload(i), p256dh=self.p256dh, auth_secret=self.auth)

    def take(self, i: int) -> bytes:
        slot = self.slots[i] if i < len(self.slots) else None
        return slot.pop() if slot else self.fresh(i)

    def refill(self, count: int) -> None:
        while len(self.slots) < count:
            self.slots.append([])
        for i in range(count):
            if not self.slots[i]:
                self.slots[i].append(self.fresh(i))


def main() -> None:
    keys_file, ttl = Path(sys.argv[1]), int(sys.argv[2])
    pin(CORE_PEERS)
    routes = read_keys(keys_file)
    pools = {
        name: Pool(bytes.fromhex(k.p256dh_hex), bytes.fromhex(k.auth_secret_hex))
        for name, k in routes.items()
    }
    origin = urlsplit(next(iter(routes.values())).push_url)
    assert origin.hostname is not None and origin.port is not None
    sender = KeepAliveSender(origin.hostname, origin.port, ttl)
    emit("ready")
    for command in commands():
        cmd = command["cmd"]
        if cmd == "quit":
            break
        keys = routes[command["route"]]
        pool = pools[keys.route]
        if cmd == "encrypt":
            started = time.perf_counter()
            pool.refill(command["count"])
            size = len(pool.slots[0][0]) if pool.slots else 0
            emit("encrypted", seconds=time.perf_counter() - started, body_bytes=size)
        elif cmd == "post":
            path = urlsplit(keys.push_url).path
            count, rate, want_times = command["count"], command["rate"], command["times"]
            send_times: list[float] = []
            refused = 0
            t_start = time.monotonic()
            for i in range(count):
                if rate:
                    delay = t_start + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                now = time.monotonic()
                if want_times:
                    send_times.append(now)
                if sender.post(path, pool.take(i)) not in (201, 202):
                    refused += 1
            emit(
                "sent",
                t_start=t_start,
                t_end=time.monotonic(),
                count=count,
                refused=refused,
                reconnects=sender.reconnects,
                send_times=send_times,
            )
            pool.refill(min(count, len(pool.slots)))


if __name__ == "__main__":
    main()
