"""The agent's deployment plane: an A/B :class:`~edge.updater.Updater` on the agent's link.

The agent owns the loop; this module builds the updater from the device's enrollment
bundle and the profile, and adapts the agent's :class:`~edge.messaging.MqttLink` to the
publish/subscribe the updater needs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.keystore import DeviceKeys, load_device_keys
from edge.messaging import MqttLink
from edge.updater import Activate, Updater, UpdateReport
from edge.updater.purposes import OnShadow, OnTrial
from shared.errors import ConfigError
from shared.profiles import DeviceProfile
from shared.protocol import topics

__all__ = ["AgentUpdates", "LinkAdapter"]


class LinkAdapter:
    """The updater's publish/subscribe over the agent's :class:`MqttLink`.

    Remembers its subscriptions so the agent renews them after every connect (a persistent
    session usually keeps them, but a broker without persistence forgets them).
    """

    def __init__(self, link: MqttLink) -> None:
        self._link = link
        self.subscriptions: set[str] = set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 (paho queues it while disconnected)."""
        self._link.publish(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1."""
        self.subscriptions.add(topic)
        self._link.subscribe_topic(topic)

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription."""
        self.subscriptions.discard(topic)
        self._link.unsubscribe(topic)


@dataclass
class AgentUpdates:
    """The device's keys, its updater and the link adapter the updater publishes through."""

    keys: DeviceKeys
    updater: Updater
    link: LinkAdapter

    @classmethod
    def start(
        cls,
        bundle_dir: Path,
        *,
        device_id: str,
        profile: DeviceProfile,
        state_dir: Path,
        link: MqttLink,
        activate: Activate,
        on_status: Callable[[UpdateReport], None],
        now: Callable[[], float] = time.time,
        quiet_s: float = 2.0,
        on_trial: OnTrial | None = None,
        on_shadow: OnShadow | None = None,
    ) -> AgentUpdates:
        """Load the bundle, check it is this device's, and recover the updater from disk.

        ``on_trial`` / ``on_shadow`` handle manifests of purpose ``trial`` / ``shadow``
        (``docs/protocol.md`` §15); without ``on_trial`` the device refuses trials.

        Raises:
            ConfigError: the bundle is unusable or belongs to another device.
        """
        keys = load_device_keys(bundle_dir)
        if keys.device_id != device_id:
            raise ConfigError(f"device bundle is for {keys.device_id!r}, not {device_id!r}")
        adapter = LinkAdapter(link)
        updater = Updater(
            device_id=keys.device_id,
            hardware_id=keys.hardware_id,
            box_key=keys.box_key,
            trust=keys.trust,
            max_model_bytes=profile.max_model_bytes,
            precisions=tuple(str(p) for p in profile.precisions),
            state_dir=state_dir,
            link=adapter,
            activate=activate,
            on_status=on_status,
            now=now,
            quiet_s=quiet_s,
            groups=keys.groups,
            on_trial=on_trial,
            on_shadow=on_shadow,
        )
        return cls(keys, updater, adapter)

    def subscriptions(self) -> list[str]:
        """Topics to (re)subscribe after a connect: the manifest and open downloads."""
        return [topics.device_manifest(self.keys.device_id), *sorted(self.link.subscriptions)]
