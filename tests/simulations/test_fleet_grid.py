"""The fleet's behaviour around a grid: who is online, stragglers past the deadline, dropouts.

The inner grid is our real InProcessGrid; its executor is a recording stand-in for the
ClientApp (replies with an update of a fixed size) so the timing logic is tested alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from shared.errors import ConfigError
from simulations.engine import ClientCall, InProcessGrid
from simulations.fleet_grid import FleetGrid
from simulations.population import Fleet, SimDevice


class RecordingExecutor:
    """Replies to every call with a 1,000-byte update; remembers who was asked."""

    def __init__(self) -> None:
        self.ran: list[int] = []

    def run(self, calls: Sequence[ClientCall]) -> list[Message]:
        out = []
        for msg, ctx in calls:
            self.ran.append(ctx.node_id)
            update = ConfigRecord({"payload": b"x" * 1000})
            out.append(Message(RecordDict({"update": update}), reply_to=msg))
        return out

    def close(self) -> None:
        pass


def _device(index: int, **kw: object) -> SimDevice:
    base = SimDevice(
        index=index,
        device_id=f"sim-{index:05d}",
        profile="hub",
        trains=True,
        partition_id=index,
        groups=("home",),
        train_samples_per_s=100.0,
        down_bps=1e6,
        up_bps=1e6,
        latency_s=0.0,
        availability=1.0,
        phase=0.0,
        period_s=100.0,
        dropout=0.0,
        install_scale=1.0,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def _grid(fleet: Fleet, executor: RecordingExecutor) -> FleetGrid:
    nodes: dict[int, dict[str, bool | float | int | str]] = {
        d.node_id: {"partition-id": d.index} for d in fleet.devices if d.trains
    }
    inner: Grid = InProcessGrid(nodes, executor)
    return FleetGrid(inner, fleet, deadline_s=10.0, partition_sizes=[100] * len(fleet.devices))


def _train_messages(grid: FleetGrid, nodes: list[int]) -> list[Message]:
    arrays = ArrayRecord({"w": Array(np.zeros(250, dtype=np.float32))})  # 1,000 bytes down
    content = RecordDict({"arrays": arrays, "config": ConfigRecord({"local-epochs": 1})})
    return [Message(content, n, "train", group_id="1") for n in nodes]


def test_stragglers_miss_the_deadline_and_the_round_waits_for_it() -> None:
    fleet = Fleet(
        (
            _device(0),  # 100 samples at 100/s: 1 s, well within 10 s
            _device(1, train_samples_per_s=5.0),  # 20 s of training: a straggler
            _device(2, trains=False, partition_id=None),  # inference only: never a node
        ),
        profiles={},
    )
    executor = RecordingExecutor()
    grid = _grid(fleet, executor)
    assert list(grid.get_node_ids()) == [1, 2]

    replies = list(grid.send_and_receive(_train_messages(grid, [1, 2])))
    assert [r.metadata.src_node_id for r in replies] == [1]
    assert executor.ran == [1]  # the straggler's work is never simulated
    (stats,) = grid.rounds
    assert (stats.sampled, stats.completed, stats.stragglers, stats.dropped) == (2, 1, 1, 0)
    assert stats.duration_s == 10.0 and grid.clock_s == 10.0  # the server waited out the deadline


def test_a_slow_upload_also_makes_a_straggler() -> None:
    fleet = Fleet((_device(0, up_bps=50.0),), profiles={})  # 1,000 bytes at 50 B/s: 20 s
    executor = RecordingExecutor()
    grid = _grid(fleet, executor)
    assert list(grid.send_and_receive(_train_messages(grid, [1]))) == []
    assert executor.ran == [1] and grid.rounds[0].stragglers == 1


def test_offline_devices_are_not_sampled_and_dropouts_never_reply() -> None:
    fleet = Fleet(
        (
            _device(0, availability=0.5, phase=0.6),  # offline for t in [0, 40)
            _device(1, dropout=1.0),
            _device(2),
        ),
        profiles={},
    )
    executor = RecordingExecutor()
    grid = _grid(fleet, executor)
    assert list(grid.get_node_ids()) == [2, 3]
    grid.clock_s = 45.0
    assert list(grid.get_node_ids()) == [1, 2, 3]  # the duty cycle brought device 0 back
    replies = list(grid.send_and_receive(_train_messages(grid, [2, 3])))
    assert [r.metadata.src_node_id for r in replies] == [3]
    assert executor.ran == [3] and grid.rounds[0].dropped == 1


def test_rounds_start_on_the_schedule_so_availability_changes_between_them() -> None:
    fleet = Fleet((_device(0, availability=0.5, phase=0.0), _device(1)), profiles={})
    executor = RecordingExecutor()
    grid = _grid(fleet, executor)
    grid.round_interval_s = 60.0
    assert list(grid.get_node_ids()) == [1, 2]
    grid.send_and_receive(_train_messages(grid, [1, 2]))
    assert grid.rounds[0].duration_s == 1.002 and grid.clock_s == 60.0  # 1 s train + 2 ms link
    assert list(grid.get_node_ids()) == [2]  # device 0's duty cycle is off at t = 60 s


def test_the_server_waits_on_the_simulated_clock_for_enough_devices() -> None:
    # Both devices are offline at t = 0 and online again from t = 50 s.
    fleet = Fleet(
        (_device(0, availability=0.5, phase=0.5), _device(1, availability=0.5, phase=0.5)),
        profiles={},
    )
    grid = _grid(fleet, RecordingExecutor())
    grid.min_online = 2
    assert list(grid.get_node_ids()) == [1, 2]
    assert grid.clock_s == 50.0


def test_a_fleet_that_is_never_online_enough_is_a_config_error() -> None:
    fleet = Fleet((_device(0, availability=0.0), _device(1)), profiles={})
    grid = _grid(fleet, RecordingExecutor())
    grid.min_online = 2
    with pytest.raises(ConfigError, match="fewer than 2 training devices"):
        grid.get_node_ids()
