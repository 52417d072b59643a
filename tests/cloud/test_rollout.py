"""How a rollout reads device statuses (pure logic; the MQTT paths are in tests/security).

A live status answers the manifest through its ``update``; a retained one may predate the
publish, so only "serves the target now, did not before" counts from it.
"""

from __future__ import annotations

import time

import pytest

from cloud.coordinator_mqtt import Incoming
from cloud.publish_report import DeviceResult, Outcome, PublishReport
from cloud.rollout import Rollout
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import DeviceState, StatusMessage, UpdateInfo, UpdateOutcome

TARGET = 2


def _rollout(*, preexisting: frozenset[str] = frozenset()) -> tuple[Rollout, list[int]]:
    report = PublishReport(
        "m@2", "0" * 64, {d: DeviceResult(d) for d in ("dev-a", "dev-b", "dev-old")}
    )
    calls: list[int] = []
    rollout = Rollout(
        None,  # type: ignore[arg-type]  # only needed to send plans; there are none
        None,  # type: ignore[arg-type]
        [],
        report,
        ("m", TARGET, "int8"),
        b"",
        preexisting,
        on_progress=lambda r: calls.append(len(r.devices)),
    )
    return rollout, calls


def _status(
    device_id: str,
    *,
    serving: int | None,
    update: tuple[int, UpdateOutcome] | None = None,
    retained: bool,
) -> Incoming:
    message = StatusMessage(
        device_id=device_id,
        sent_at=time.time(),
        state=DeviceState.ONLINE,
        model_version=str(serving) if serving is not None else None,
        update=UpdateInfo(version=update[0], outcome=update[1]) if update else None,
    )
    return Incoming(topics.device_status(device_id), encode_message(message), retained)


def _outcome(rollout: Rollout, device_id: str) -> Outcome:
    return rollout.report.devices[device_id].outcome


@pytest.mark.parametrize("answer", [UpdateOutcome.COMMITTED, UpdateOutcome.UP_TO_DATE])
def test_live_answer_to_the_manifest_commits(answer: UpdateOutcome) -> None:
    rollout, calls = _rollout()
    rollout._on_status(_status("dev-a", serving=TARGET, update=(TARGET, answer), retained=False))
    assert _outcome(rollout, "dev-a") is Outcome.COMMITTED
    assert calls  # the progress callback heard about it


def test_retained_status_serving_the_target_counts_when_it_did_not_before() -> None:
    """A commit made while the coordinator was reconnecting reaches it only as retained."""
    rollout, calls = _rollout(preexisting=frozenset({"dev-old"}))
    rollout._on_status(_status("dev-a", serving=TARGET, retained=True))
    assert _outcome(rollout, "dev-a") is Outcome.COMMITTED
    assert calls == [3]


def test_retained_status_proves_nothing_by_its_update() -> None:
    """A stale retained "committed v2" from an earlier publish does not count."""
    rollout, calls = _rollout()
    stale = _status("dev-b", serving=1, update=(TARGET, UpdateOutcome.COMMITTED), retained=True)
    rollout._on_status(stale)
    assert _outcome(rollout, "dev-b") is Outcome.TIMEOUT
    assert not calls


def test_retained_status_of_a_device_already_at_this_number_does_not_count() -> None:
    """It may serve another model line with the same version number."""
    rollout, _ = _rollout(preexisting=frozenset({"dev-old"}))
    rollout._on_status(_status("dev-old", serving=TARGET, retained=True))
    assert _outcome(rollout, "dev-old") is Outcome.TIMEOUT


def test_retained_status_never_overrides_a_live_failure() -> None:
    rollout, _ = _rollout()
    failed = _status("dev-a", serving=None, update=(TARGET, UpdateOutcome.FAILED), retained=False)
    rollout._on_status(failed)
    assert _outcome(rollout, "dev-a") is Outcome.FAILED
    rollout._on_status(_status("dev-a", serving=TARGET, retained=True))
    assert _outcome(rollout, "dev-a") is Outcome.FAILED
