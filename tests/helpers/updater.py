"""A real :class:`~edge.updater.Updater` without a broker: a fake link, a fake clock and a
recording probation, rebuilt from disk on :meth:`Device.restart`.

Shared by the updater unit tests (``tests/edge/test_updater.py``) and the attack catalogue
(``tests/security/test_attacks.py``), so attacks run through the code that ships.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.updater import Updater, UpdateReport
from shared.artifacts import Envelope, Release, TrustStore
from shared.errors import ModelLoadError
from shared.protocol.codec import encode_chunk, encode_message
from shared.protocol.messages import ManifestMessage
from tests.helpers.release import HW, NOW, Fleet

__all__ = ["Device", "FakeLink", "Serving", "manifest_payload", "snapshot"]


@dataclass
class FakeLink:
    """Records what the updater publishes and subscribes to."""

    published: list[tuple[str, bytes]] = field(default_factory=list)
    subscriptions: set[str] = field(default_factory=set)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def subscribe(self, topic: str) -> None:
        self.subscriptions.add(topic)

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.discard(topic)


@dataclass
class Serving:
    """Stands in for the Predictor: 'loads' the slot file; refuses versions in ``fail``."""

    fail: set[str] = field(default_factory=set)
    current: tuple[str, bytes] | None = None
    loads: int = 0

    def __call__(self, path: Path, version: str) -> None:
        data = path.read_bytes()
        self.loads += 1
        if version in self.fail:
            raise ModelLoadError(f"smoke test failed for {version}")
        self.current = (version, data)


@dataclass
class Device:
    """One updater under test with its fakes, rebuilt from disk by :meth:`restart`.

    ``trust`` is the pinned trust store of the enrollment bundle (default: the fleet
    root alone, no revocation list).
    """

    fleet: Fleet
    state_dir: Path
    link: FakeLink = field(default_factory=FakeLink)
    serving: Serving = field(default_factory=Serving)
    reports: list[UpdateReport] = field(default_factory=list)
    clock: list[float] = field(default_factory=lambda: [float(NOW)])
    max_model_bytes: int = 1_000_000
    download_timeout_s: float = 3600.0
    updater: Any = None
    trust: TrustStore | None = None

    def restart(self) -> Updater:
        self.updater = Updater(
            device_id="dev-a",
            hardware_id=HW,
            box_key=self.fleet.devices["dev-a"],
            trust=self.trust or self.fleet.trust(),
            max_model_bytes=self.max_model_bytes,
            precisions=("int8",),
            state_dir=self.state_dir,
            link=self.link,
            activate=self.serving,
            on_status=self.reports.append,
            now=lambda: self.clock[0],
            quiet_s=2.0,
            download_timeout_s=self.download_timeout_s,
        )
        active = self.updater.active_model()
        self.serving.current = (active[1], active[0].read_bytes()) if active else None
        return self.updater

    def deliver(self, release: Release, envelope: Envelope | None = None) -> None:
        self.updater.handle_manifest(manifest_payload(self.fleet, release, envelope))
        for chunk in release.chunks:
            self.updater.handle_chunk(encode_chunk(chunk))

    @property
    def last(self) -> UpdateReport:
        return self.reports[-1]


def manifest_payload(fleet: Fleet, release: Release, envelope: Envelope | None = None) -> bytes:
    env = envelope or fleet.sign(release.manifest.for_devices(["dev-a"]))
    return encode_message(ManifestMessage(device_id="dev-a", sent_at=NOW, envelope=env))


def snapshot(state_dir: Path) -> dict[str, bytes]:
    """Every committed file: state.json and the slots."""
    out = {p.name: p.read_bytes() for p in (state_dir / "slots").glob("*")}
    out["state.json"] = (state_dir / "state.json").read_bytes()
    return out
