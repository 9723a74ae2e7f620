"""The one owner of acknowledgements owed upstream.

A message is owed an acknowledgement once the journal has it (``ack = "stored"``) or once every
device confirmed it (``"delivered"``); the store records that durably, this object carries it
out: it holds each owed acknowledgement once (however often the service redelivers the message),
hands them to the current connection at most :data:`MAX_IN_FLIGHT` at a time, takes back what a
connection that ended never answered, and collects the finished ones for the journal to record.

Bounded by construction: a push service that redelivers faster than it accepts acknowledgements
meets backpressure here (the rest wait, deduplicated), never an unbounded request queue.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

from gateway.upstream.contract import Ack, AckCode, Connection

# Acknowledgements handed to connections and not yet answered. An HTTP/2 service allows ~100
# concurrent streams (RFC 9113 §6.5.2's floor); a thousand keeps every stream busy through a
# round trip while bounding what a connection buffers for a slow or hostile service.
MAX_IN_FLIGHT = 1000


class Acknowledgements:
    """Owed, in flight and finished acknowledgements; see the module docstring."""

    def __init__(self, owed: Iterable[str] = ()) -> None:
        self._owed: dict[str, AckCode] = dict.fromkeys(owed, AckCode.TAKEN)  # in order
        # key -> (code, the connection it was handed to)
        self._in_flight: dict[str, tuple[AckCode, Connection]] = {}
        self._finished: list[str] = []
        self._connection: Connection | None = None

    @property
    def owed(self) -> int:
        """Acknowledgements not yet answered (waiting or in flight)."""
        return len(self._owed) + len(self._in_flight)

    @property
    def in_flight(self) -> int:
        """Acknowledgements handed to a connection, not yet answered."""
        return len(self._in_flight)

    @property
    def answered(self) -> frozenset[str]:
        """Keys whose acknowledgement was answered and not yet taken for the journal's record."""
        return frozenset(self._finished)

    def owe(self, acks: Iterable[Ack]) -> None:
        """These messages may be acknowledged now (each at most once however often owed)."""
        for ack in acks:
            if ack.key not in self._in_flight:
                self._owed.setdefault(ack.key, ack.code)
        self._pump()

    def attach(self, connection: Connection) -> None:
        """Send on ``connection`` from now on."""
        self._connection = connection
        self._pump()

    def detach(self, connection: Connection, unsent: Sequence[str] = ()) -> None:
        """No more new acknowledgements on ``connection`` (it is going away); ``unsent`` are
        those it was given and the service certainly never saw (owed again at once)."""
        if self._connection is connection:
            self._connection = None
        returned = {key: self._in_flight.pop(key)[0] for key in unsent if key in self._in_flight}
        self._owed = {**returned, **self._owed}

    def ended(self, connection: Connection) -> None:
        """``connection`` is closed: whatever it did not answer is owed again."""
        self.detach(connection)
        returned = {k: code for k, (code, c) in self._in_flight.items() if c is connection}
        for key in returned:
            del self._in_flight[key]
        self._owed = {**returned, **self._owed}
        self._pump()

    def done(self, key: str, ok: bool) -> None:
        """The service answered one. Not ok: it keeps the message and redelivers it, and the
        journal's dedupe record owes the acknowledgement again then."""
        if self._in_flight.pop(key, None) is not None and ok:
            self._finished.append(key)
        self._pump()

    def take_finished(self) -> list[str]:
        """Keys acknowledged since the last call (the journal records them)."""
        finished, self._finished = self._finished, []
        return finished

    def restore_finished(self, keys: Sequence[str]) -> None:
        """A journal commit that would have recorded ``keys`` failed: keep them for the next."""
        self._finished[:0] = keys

    def _pump(self) -> None:
        connection = self._connection
        if connection is None or not connection.usable or not self._owed:
            return
        room = MAX_IN_FLIGHT - len(self._in_flight)
        if room <= 0:
            return
        batch: list[Ack] = []
        for key in list(itertools.islice(self._owed, room)):
            code = self._owed.pop(key)
            self._in_flight[key] = (code, connection)
            batch.append(Ack(key, code))
        connection.send_acks(batch)
