"""Fakes for the rollout engine's unit tests: a scripted device link and a manual clock.

:class:`FakeFleet` stands in for the deployment plane (:class:`cloud.rollout.delivery.
RolloutLink`): each device has a behaviour, and a delivered install writes the telemetry
(and a shadow delivery the shadow reports) that device would send, into the real store, so
the gates read their evidence from the database exactly as in production. Like the real
publisher (its rule Q1), a device already serving the target answers ``committed`` without
being sent anything; ``installs`` counts what each device was actually sent. A shadow
delivery leaves the device holding the candidate until a ``drop_candidate`` (``drops``
lists every device asked) or an install; asked again, it answers as the real device does
(``command_failed no_candidate``, which the link reports as ``dropped``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

from cloud.fleet.records import StatusRecord, TelemetryRecord
from cloud.fleet.store import FleetStore
from cloud.rollout.delivery import Answer, DeviceAnswer
from cloud.rollout.records import ShadowRecord

MODEL, VERSION = "digits", 2
REF = f"{MODEL}@{VERSION}"


class Clock:
    """Manual Unix time."""

    def __init__(self, t: float = 10_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Crash(BaseException):
    """The coordinator process dies here (not a FedgeError: nothing catches it)."""


@dataclass
class Device:
    """How one fake device behaves."""

    behaviour: str = "ok"  # ok | fail_probation | offline
    p95_ms: float = 10.0  # latency of the candidate once installed
    error_rate: float = 0.0
    agreement: float = 0.99  # shadow agreement of the candidate
    serving: bool = False  # serves the target already
    holding: bool = False  # holds the target as its shadow candidate


@dataclass
class FakeFleet:
    """A scripted :class:`~cloud.rollout.delivery.RolloutLink` over a real store."""

    store: FleetStore
    clock: Clock
    devices: dict[str, Device]
    installs: Counter[str] = field(default_factory=Counter)
    shadows: Counter[str] = field(default_factory=Counter)
    rollbacks: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    crash_after_commits: int | None = None  # die inside deliver after this many commits
    drops: list[str] = field(default_factory=list)
    crash_after_drops: bool = False  # die inside drop_candidate, after the devices dropped
    crash_in_rollback: bool = False  # die inside rollback (the drops are answered by then)
    ref: str = REF  # the version the rollout under test delivers

    def telemetry(self, device_id: str, at: float, p95_ms: float, error_rate: float) -> None:
        """One 100-request telemetry window of ``device_id`` received at ``at``."""
        errors = round(100 * error_rate)
        self.store.record_telemetry(
            [
                TelemetryRecord(
                    device_id, uuid.uuid4().hex, at, at, str(VERSION), 100, errors,
                    p95_ms / 2, p95_ms, p95_ms * 1.2, 100 - errors, {},
                )
            ]
        )  # fmt: skip

    def deliver(
        self, version_ref: str, device_ids: list[str], *, purpose: str, timeout_s: float
    ) -> dict[str, DeviceAnswer]:
        assert version_ref == self.ref
        out: dict[str, DeviceAnswer] = {}
        commits = 0
        for device_id in device_ids:
            dev = self.devices[device_id]
            if dev.serving:  # Q1: nothing is sent to a device serving the target
                out[device_id] = DeviceAnswer(Answer.COMMITTED)
                continue
            if dev.behaviour == "offline":
                out[device_id] = DeviceAnswer(Answer.TIMEOUT, "no_answer")
                continue
            if purpose == "shadow":
                self.shadows[device_id] += 1
                dev.holding = True
                self._shadow(device_id, dev)
                out[device_id] = DeviceAnswer(Answer.HELD)
                continue
            self.installs[device_id] += 1
            if dev.behaviour == "fail_probation":
                out[device_id] = DeviceAnswer(Answer.FAILED, "probation_failed")
                continue
            dev.serving, dev.holding = True, False
            self.telemetry(device_id, self.clock() + 1.0, dev.p95_ms, dev.error_rate)
            out[device_id] = DeviceAnswer(Answer.COMMITTED)
            commits += 1
            if self.crash_after_commits is not None and commits >= self.crash_after_commits:
                self.crash_after_commits = None
                raise Crash
        return out

    def _shadow(self, device_id: str, dev: Device) -> None:
        at = self.clock() + 1.0
        self.store.record_shadow_reports(
            [
                ShadowRecord(
                    device_id, uuid.uuid4().hex, at, at, MODEL, VERSION, "a" * 64, 1,
                    "classifier", 100, dev.agreement, None, dev.p95_ms, 10.0, 0, 0, 0,
                )
            ]
        )  # fmt: skip

    def drop_candidate(
        self, version_ref: str, device_ids: list[str], *, timeout_s: float
    ) -> dict[str, DeviceAnswer]:
        assert version_ref == self.ref
        self.drops.extend(device_ids)
        out: dict[str, DeviceAnswer] = {}
        for d in device_ids:
            dev = self.devices[d]
            if dev.behaviour == "offline":
                out[d] = DeviceAnswer(Answer.DROP_FAILED, "no_answer")
                continue
            out[d] = DeviceAnswer(Answer.DROPPED, None if dev.holding else "no_candidate")
            dev.holding = False
        if self.crash_after_drops:
            self.crash_after_drops = False
            raise Crash
        return out

    def rollback(self, device_ids: list[str], *, timeout_s: float) -> dict[str, DeviceAnswer]:
        if self.crash_in_rollback:
            self.crash_in_rollback = False
            raise Crash
        self.rollbacks.extend(device_ids)
        for d in device_ids:
            self.devices[d].serving = False
        return {d: DeviceAnswer(Answer.ROLLED_BACK) for d in device_ids}

    def withdraw(self, device_ids: list[str]) -> None:
        self.withdrawn.extend(device_ids)


def serving_status(device_id: str, at: float) -> StatusRecord:
    """A status saying ``device_id`` serves the target."""
    serving = {
        "model_id": MODEL, "version": VERSION, "artifact_id": "0" * 32, "sha256": "a" * 64,
        "precision": "int8", "slot": "b",
    }  # fmt: skip
    return StatusRecord(
        device_id, uuid.uuid4().hex, at, at, "serving", {"state": "serving", "serving": serving}
    )
