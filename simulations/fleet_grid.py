"""The fleet's behaviour around any Flower ``Grid``: availability, dropouts, deadlines.

:class:`FleetGrid` wraps the grid a ServerApp is given (our in-process one, or Flower's own
under ``flwr run``) and keeps a simulated clock. It changes only what a real fleet changes:

* ``get_node_ids`` lists the training devices that are online at the current simulated time
  (their availability trace), so the strategy samples from who is connected; when fewer
  than ``min_online`` are, the simulated server waits (the clock advances) until enough
  are — Flower's sampler would otherwise sleep forever on a clock that never moves;
* a sampled device may drop out mid-round (its kind's ``dropout``) and never replies;
* a device whose download + local training + upload would end after the round deadline is a
  straggler: its reply does not reach the server, as with Flower's round timeout. When the
  download and training alone already miss the deadline the ClientApp is not run at all
  (the server could not tell the difference; the simulation saves the work);
* the round takes the slowest accepted device's time, or the whole deadline when someone is
  missing (the server waits for it); the clock advances by that, or to the next round's
  scheduled start (``round_interval_s``) when later.

Per-round participation and timings are kept in :attr:`FleetGrid.rounds`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from shared.errors import ConfigError
from simulations.population import Fleet, SimDevice

log = logging.getLogger(__name__)

__all__ = ["REAL_TIMEOUT_S", "FleetGrid", "RoundParticipation"]

#: Wall-clock seconds a round may take on the inner grid (Ray workers starting up on a busy
#: host can take far longer than a simulated deadline; only a hung worker should hit this).
REAL_TIMEOUT_S = 900.0


@dataclass
class RoundParticipation:
    """Who took part in one training round, in simulated time.

    Attributes:
        round: Server round.
        online: Training devices online when the round was sampled.
        sampled: Devices sent the global model.
        completed: Replies that reached the server before the deadline.
        stragglers: Devices that would have replied after the deadline.
        dropped: Devices that vanished mid-round.
        started_s: Simulated start of the round.
        duration_s: Simulated length of the round.
    """

    round: int
    online: int = 0
    sampled: int = 0
    completed: int = 0
    stragglers: int = 0
    dropped: int = 0
    started_s: float = 0.0
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _array_bytes(content: RecordDict) -> int:
    arrays = content.array_records.get("arrays")
    return sum(len(a.data) for a in arrays.values()) if arrays is not None else 0


def _reply_bytes(reply: Message) -> int:
    if reply.has_error():
        return 0
    update = reply.content.config_records.get("update")
    if update is None:
        return 0
    payload = update.get("sealed", update.get("payload"))
    return len(payload) if isinstance(payload, bytes) else 0


class FleetGrid(Grid):
    """Wrap ``inner`` with the fleet's availability, dropouts and round deadline.

    Args:
        inner: The grid that actually runs ClientApps.
        fleet: The simulated devices; node ``n`` of ``inner`` is ``node_map[n]``.
        deadline_s: Simulated seconds a round waits for replies.
        partition_sizes: Samples per partition id (for the training-time estimate).
        seed: Seeds the dropout draws.
        node_map: ``inner`` node id → device; default ``fleet.by_node`` (our engine).
        on_round: Called with each finished round's participation.
        round_interval_s: Simulated seconds from one round's start to the next's.
        min_online: Training devices the server waits for before it samples.
    """

    def __init__(
        self,
        inner: Grid,
        fleet: Fleet,
        *,
        deadline_s: float,
        partition_sizes: list[int],
        seed: int = 0,
        node_map: dict[int, SimDevice] | None = None,
        on_round: Callable[[RoundParticipation], None] | None = None,
        round_interval_s: float = 0.0,
        min_online: int = 1,
    ) -> None:
        self.inner = inner
        self.fleet = fleet
        self.deadline_s = deadline_s
        self.partition_sizes = partition_sizes
        self.node_map = node_map
        self.rng = np.random.default_rng(seed)
        self.clock_s = 0.0
        self.round_interval_s = round_interval_s
        self.min_online = min_online
        self.rounds: list[RoundParticipation] = []
        self.on_round = on_round or (lambda _p: None)

    def device(self, node_id: int) -> SimDevice:
        """The simulated device behind an inner node id."""
        return self.node_map[node_id] if self.node_map is not None else self.fleet.by_node(node_id)

    def set_run(self, run: Run) -> None:
        """Delegate to the inner grid."""
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        """The inner grid's run."""
        return self.inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Delegate to the inner grid."""
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def _online(self) -> list[int]:
        return [
            n
            for n in self.inner.get_node_ids()
            if (self.node_map is None or n in self.node_map)
            and self.device(n).trains
            and self.device(n).online(self.clock_s)
        ]

    def get_node_ids(self) -> Iterable[int]:
        """Training devices online now (inference-only devices never join rounds).

        Raises:
            ConfigError: fewer than ``min_online`` training devices are ever online together
                (over one whole availability period).
        """
        online = self._online()
        if len(online) >= self.min_online:
            return online
        period = max((d.period_s for d in self.fleet.devices), default=1.0)
        started = self.clock_s
        while self.clock_s - started < period:
            self.clock_s += period / 100
            if len(online := self._online()) >= self.min_online:
                return online
        raise ConfigError(
            f"fewer than {self.min_online} training devices are ever online together; "
            "raise availability or lower learning.min_clients"
        )

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Delegate (the fleet's behaviour is applied in :meth:`send_and_receive`)."""
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Delegate."""
        return self.inner.pull_messages(message_ids)

    def _examples(self, device: SimDevice) -> int:
        if device.partition_id is not None and device.partition_id < len(self.partition_sizes):
            return self.partition_sizes[device.partition_id]
        return int(np.mean(self.partition_sizes)) if self.partition_sizes else 1

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver a round under the fleet's behaviour; advance the simulated clock."""
        batch = list(messages)
        if not batch or batch[0].metadata.message_type != "train":
            return self.inner.send_and_receive(batch, timeout=timeout)
        server_round = int(batch[0].metadata.group_id or len(self.rounds) + 1)
        stats = RoundParticipation(
            round=server_round,
            online=len(list(self.get_node_ids())),
            sampled=len(batch),
            started_s=self.clock_s,
        )
        send: list[Message] = []
        elapsed: dict[int, float] = {}
        for msg in batch:
            device = self.device(msg.metadata.dst_node_id)
            config = cast(ConfigRecord, msg.content["config"])
            epochs = int(cast(int, config.get("local-epochs", 1)))
            busy = device.transfer_s(_array_bytes(msg.content), up=False) + (
                self._examples(device) * epochs / device.train_samples_per_s
            )
            if self.rng.random() < device.dropout:
                stats.dropped += 1
            elif busy > self.deadline_s:
                stats.stragglers += 1
            else:
                send.append(msg)
                elapsed[msg.metadata.dst_node_id] = busy
        # The deadline is simulated; the real wait only guards against a hung worker.
        wait = REAL_TIMEOUT_S if timeout is None else max(timeout, REAL_TIMEOUT_S)
        replies = list(self.inner.send_and_receive(send, timeout=wait)) if send else []
        kept: list[Message] = []
        slowest = 0.0
        for reply in replies:
            node = reply.metadata.src_node_id
            total = elapsed.get(node, 0.0) + self.device(node).transfer_s(
                _reply_bytes(reply), up=True
            )
            if total > self.deadline_s:
                stats.stragglers += 1
                continue
            slowest = max(slowest, total)
            kept.append(reply)
        stats.completed = len(kept)
        missing = stats.sampled - stats.completed
        stats.duration_s = round(self.deadline_s if missing else slowest, 3)
        self.clock_s += max(stats.duration_s, self.round_interval_s)
        self.rounds.append(stats)
        self.on_round(stats)
        return kept
