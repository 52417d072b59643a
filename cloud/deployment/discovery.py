"""Discovery, and what it decides before anything is sent (``docs/protocol.md`` rules Q1, Q2).

:func:`discover` collects each target's newest status (retained or live), attributed by its
topic (:mod:`cloud.deployment.evidence`); from it, :func:`already_served` says a device
already has an approved variant of the version (Q1: it is done) and :func:`below_floor`
says it would refuse the version as a rollback (Q2). Both are pure and shared by the trial
phase (:mod:`cloud.deployment.trials`) and the plans (:mod:`cloud.deployment.planning`).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable, Sequence

from cloud.deployment.evidence import Attribution, DeviceStatus
from cloud.deployment.link import CoordinatorTransport
from cloud.deployment.release import Target
from cloud.keys import DeviceRecord
from cloud.registry.registry import ArtifactInfo, VersionInfo
from shared.artifacts import Purpose

__all__ = ["already_served", "below_floor", "discover"]


def discover(
    transport: CoordinatorTransport,
    attribution: Attribution,
    devices: Sequence[DeviceRecord],
    wait_s: float,
    *,
    observe: Callable[[DeviceStatus], None],
) -> dict[str, DeviceStatus]:
    """Each target's newest status (retained or live), attributed by its topic.

    Stops early once every target has spoken; ``observe`` receives each target's status
    (e.g. to record its ``variants`` timings).
    """
    wanted = {d.device_id for d in devices}
    heard: dict[str, DeviceStatus] = {}
    deadline = time.monotonic() + wait_s
    while wanted - heard.keys() and time.monotonic() < deadline:
        try:
            msg = transport.inbox.get(timeout=0.05)
        except queue.Empty:
            continue
        status = attribution.status(msg)
        if status is not None and status.device_id in wanted:
            heard[status.device_id] = status
            observe(status)
    return heard


def below_floor(version: int, heard: DeviceStatus | None) -> str | None:
    """Q2: why the device would refuse ``version`` as a rollback, if it would."""
    if heard is None:
        return None
    status = heard.status
    floor = status.floor
    if floor is None and status.serving is not None:
        floor = status.serving.version
    if floor is None or version > floor:
        return None
    return "replay" if version == floor else "older_than_installed"


def already_served(
    info: VersionInfo,
    approved: Sequence[ArtifactInfo],
    heard: DeviceStatus | None,
    purpose: Purpose,
) -> ArtifactInfo | None:
    """Q1: the approved variant the device already serves (or holds, for ``shadow``)."""
    if heard is None:
        return None
    for a in approved:
        target = Target(info.model, info.number, a.precision, a.sha256, purpose)
        if purpose is not Purpose.TRIAL and target.reached(heard.status, None):
            return a
    return None
