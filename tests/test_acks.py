"""Acknowledgements owed upstream: what is answered and not yet recorded (pure logic)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gateway.upstream.acks import Acknowledgements
from gateway.upstream.contract import Ack


class _Line:
    """The part of a connection Acknowledgements uses: it takes acks and is usable."""

    usable = True

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send_acks(self, acks: Sequence[Ack]) -> None:
        self.sent += [ack.key for ack in acks]

    async def subscribe(self, *args: Any) -> Any:
        raise NotImplementedError

    async def unsubscribe(self, *args: Any) -> Any:
        raise NotImplementedError


def test_answered_are_the_keys_finished_and_not_yet_taken_for_the_record() -> None:
    acks = Acknowledgements(owed=["a"])
    line = _Line()
    acks.attach(line)
    acks.owe([Ack("b"), Ack("c"), Ack("b")])  # owed once however often
    assert line.sent == ["a", "b", "c"] and acks.owed == 3 and acks.answered == frozenset()
    acks.done("a", True)
    acks.done("b", False)  # not answered: not recorded as done
    assert acks.answered == {"a"} and acks.owed == 1
    taken = acks.take_finished()
    assert taken == ["a"] and acks.answered == frozenset()
    acks.done("c", True)
    acks.restore_finished(taken)  # the commit that would have recorded "a" failed
    assert acks.answered == {"a", "c"} and acks.owed == 0
