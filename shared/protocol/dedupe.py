"""Receiver-side duplicate suppression by ``msg_id``.

MQTT QoS 1 and the device outbox give *at-least-once* delivery: a message whose PUBACK
was lost (connection drop, agent killed right after the broker accepted it) is sent again,
with the same ``msg_id``. A receiver that passes every message through a
:class:`Deduplicator` processes each one exactly once, as long as the duplicate arrives
within the last ``capacity`` distinct ids (re-sends happen right after a reconnect, so a
window of a few thousand per device is ample).
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["Deduplicator"]


class Deduplicator:
    """Remembers the last ``capacity`` message ids (LRU) and flags repeats.

    Not thread-safe: use one per consumer thread.
    """

    def __init__(self, capacity: int = 10_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self._capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def first_time(self, msg_id: str) -> bool:
        """Record ``msg_id``; return True the first time it is seen, False for a repeat."""
        if msg_id in self._seen:
            self._seen.move_to_end(msg_id)
            return False
        self._seen[msg_id] = None
        if len(self._seen) > self._capacity:
            self._seen.popitem(last=False)
        return True

    def __len__(self) -> int:
        return len(self._seen)
