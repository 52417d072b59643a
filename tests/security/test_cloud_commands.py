"""``cloud.deployment.commands``: signed commands a device accepts, ``seq`` strictly rising."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

from cloud.deployment.commands import build_command, next_seq
from cloud.keys import KeyHome
from shared.errors import NotFoundError
from shared.protocol.commands import CommandAction, verify_command


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> KeyHome:
    home = KeyHome(tmp_path_factory.mktemp("cmd") / "keys")
    home.init()
    home.enroll_device("dev-a", hardware_id="hw-a")
    return home


def test_device_accepts_the_signed_command(home: KeyHome) -> None:
    command, message = build_command(home, CommandAction.ROLLBACK, "dev-a", to_version=3)
    verified = verify_command(
        message.envelope,
        home.trust_store(),
        device_id="dev-a",
        last_seq=0,
        now=command.issued_at + 1,
    )
    assert verified == command and verified.to_version == 3


def test_seq_strictly_increases_even_if_the_clock_steps_back(home: KeyHome) -> None:
    first = next_seq(home, now=2_000_000_000)
    assert next_seq(home, now=1_000_000_000) == first + 1  # K6 on the device would refuse
    assert (home.path / "coordinator" / "command_seq").read_text().strip() == str(first + 1)


def _allocate(home_path: str, count: int) -> list[int]:
    home = KeyHome(Path(home_path))
    return [next_seq(home, now=3_000_000_000) for _ in range(count)]


def test_concurrent_coordinators_never_share_a_seq(home: KeyHome) -> None:
    """Four processes on one key home, same clock: every number handed out once."""
    with mp.get_context("spawn").Pool(4) as pool:
        runs = pool.starmap(_allocate, [(str(home.path), 40)] * 4)
    issued = [seq for run in runs for seq in run]
    assert len(set(issued)) == len(issued) == 160
    assert all(run == sorted(run) for run in runs)  # each caller sees them increase


def test_unknown_device_refused(home: KeyHome) -> None:
    with pytest.raises(NotFoundError):
        build_command(home, CommandAction.ROLLBACK, "dev-zz")
