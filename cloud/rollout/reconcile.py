"""Devices that were away during their cohort, once the rollout has completed.

A device that timed out (or was skipped under ``offline = skip``) kept the retained
manifest and usually installs it when it reconnects: it is then marked committed. One that
is back online and still does not serve the target (its retained manifest was another
purpose's, or was withdrawn) is sent the version now; the publisher sends nothing to a
device that already serves it (rule Q1). The leader runs this every few polls.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from cloud.rollout.delivery import Answer, DeviceAnswer
from cloud.rollout.gates import DeviceProgress
from cloud.rollout.policy import OfflinePolicy, RolloutPolicy
from cloud.rollout.records import RolloutState
from shared.errors import FedgeError

if TYPE_CHECKING:
    from cloud.fleet.store import FleetStore
    from cloud.rollout.delivery import RolloutLink

__all__ = ["reconcile"]

logger = logging.getLogger(__name__)

P = DeviceProgress
_ANSWER = {Answer.COMMITTED: P.COMMITTED, Answer.FAILED: P.FAILED}


def _target(version_ref: str) -> tuple[str, int]:
    model, _, number = version_ref.rpartition("@")
    return model, int(number) if number.isdigit() else 0


def reconcile(
    store: FleetStore, link: RolloutLink, rollout_id: str, *, clock: Callable[[], float]
) -> int:
    """A completed rollout's devices that timed out or were skipped and are back.

    One that already serves the target (it found the retained manifest) is marked
    committed; one that is online again but does not is sent the version now (the
    publisher answers ``committed`` without sending to a device that serves it).
    Returns how many devices were marked committed.
    """
    rollout = store.get_rollout(rollout_id)
    if rollout.state is not RolloutState.COMPLETED:
        return 0
    model, version = _target(rollout.version_ref)
    late: dict[str, tuple[DeviceProgress, str | None]] = {}
    back: list[str] = []
    for d in rollout.devices:
        if d.state not in (P.TIMEOUT, P.SKIPPED):
            continue
        device = store.get_device(d.device_id)
        serving = device.serving or {}
        if serving.get("model_id") == model and serving.get("version") == version:
            late[d.device_id] = (P.COMMITTED, "committed_after_rollout")
        elif device.online and (device.last_seen or 0.0) > d.updated_at:
            back.append(d.device_id)
    if back:
        policy = RolloutPolicy.model_validate(rollout.policy)
        timeout = policy.cohort(len(policy.cohorts) - 1).device_timeout_s
        store.set_device_progress(
            rollout_id, {d: (P.SENT, None) for d in back}, now=clock(), sent=True
        )
        try:
            answers = link.deliver(rollout.version_ref, back, purpose="install", timeout_s=timeout)
        except FedgeError as exc:
            logger.warning("rollout %s: late delivery failed: %s", rollout_id, exc)
            answers = {}
        timed_out = P.SKIPPED if policy.offline is OfflinePolicy.SKIP else P.TIMEOUT
        for device_id in back:
            answer = answers.get(device_id, DeviceAnswer(Answer.TIMEOUT, "no_answer"))
            state = _ANSWER.get(answer.answer, timed_out)
            if state is P.COMMITTED:
                late[device_id] = (P.COMMITTED, "committed_after_rollout")
            else:
                store.set_device_progress(
                    rollout_id, {device_id: (state, answer.reason)}, now=clock()
                )
    if late:
        store.set_device_progress(rollout_id, late, now=clock())
        store.add_rollout_event(
            rollout_id, "devices_caught_up", now=clock(), detail={"devices": sorted(late)}
        )
    return len(late)
