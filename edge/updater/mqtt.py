"""Run an :class:`~edge.updater.engine.Updater` over MQTT 5 (TLS + device credentials).

A standalone device-side client for the deployment plane: used by the integration tests,
the OTA benchmark and ``python -m edge.updater.mqtt`` (a minimal update daemon). The
paho callbacks only enqueue raw payloads; one worker thread owns the updater.

The session is persistent (``clean_start=False``, session expiry one hour) so chunks
published while the device is briefly offline are queued by the broker (§1).
"""

from __future__ import annotations

import argparse
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.keystore import DeviceKeys, load_device_keys
from edge.status import build_status
from edge.updater.engine import Activate, Updater, UpdateReport
from edge.updater.routing import dispatch
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import DeviceState, StatusMessage, UpdateOutcome

__all__ = ["MqttUpdaterLink", "UpdaterClient"]

logger = logging.getLogger(__name__)

SESSION_EXPIRY_S = 3600
_IDLE_WAKE_S = 1.0  # longest sleep of the worker between ticks
_CONNECTED = "$connected"  # inbox marker: announce the status from the worker thread


class MqttUpdaterLink:
    """:class:`~edge.updater.engine.UpdaterLink` over a paho client (QoS 1)."""

    def __init__(self, client: mqtt.Client) -> None:
        self._client = client
        self.subscriptions: set[str] = set()

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 (paho queues it while disconnected)."""
        self._client.publish(topic, payload, qos=1, retain=retain)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and remember it for reconnects."""
        self.subscriptions.add(topic)
        self._client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        """Drop a subscription."""
        self.subscriptions.discard(topic)
        self._client.unsubscribe(topic)


class UpdaterClient:
    """An updater connected to the fleet broker with one device's bundle.

    Args:
        keys: The device's enrollment bundle.
        host, port: Broker (TLS listener).
        state_dir: The updater's state directory.
        max_model_bytes, precisions: Profile limits.
        activate: Probation callback.
        on_report: Also called with every report (after it is published).
        quiet_s: Resend quiet period.
    """

    def __init__(
        self,
        keys: DeviceKeys,
        *,
        host: str,
        port: int,
        state_dir: Path,
        max_model_bytes: int,
        precisions: tuple[str, ...] = ("int8",),
        activate: Activate,
        on_report: Callable[[UpdateReport], None] = lambda _r: None,
        quiet_s: float = 1.0,
    ) -> None:
        self.keys = keys
        self._precisions, self._max_model_bytes = tuple(precisions), max_model_bytes
        self._host, self._port = host, port
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._stop = threading.Event()
        self._on_report = on_report
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=keys.device_id, protocol=mqtt.MQTTv5
        )
        client.tls_set(
            ca_certs=str(keys.ca_file),
            certfile=str(keys.client_cert),
            keyfile=str(keys.client_key),
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.username_pw_set(keys.broker_username, keys.broker_password)
        offline = StatusMessage(
            device_id=keys.device_id,
            sent_at=time.time(),
            state=DeviceState.OFFLINE,
            hardware_id=keys.hardware_id,
        )
        client.will_set(
            topics.device_status(keys.device_id), encode_message(offline), qos=1, retain=True
        )
        client.reconnect_delay_set(min_delay=1, max_delay=2)
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self._client = client
        self.link = MqttUpdaterLink(client)
        self.link.subscriptions.add(topics.device_manifest(keys.device_id))
        self.link.subscriptions.add(topics.device_cmd(keys.device_id))
        self.link.subscriptions.update(topics.group_cmd(g) for g in keys.groups)
        self.updater = Updater(
            device_id=keys.device_id,
            hardware_id=keys.hardware_id,
            box_key=keys.box_key,
            trust=keys.trust,
            max_model_bytes=max_model_bytes,
            precisions=precisions,
            state_dir=state_dir,
            link=self.link,
            activate=activate,
            on_status=self._publish_status,
            quiet_s=quiet_s,
            groups=keys.groups,
        )
        self._worker = threading.Thread(target=self._run, name=f"updater-{keys.device_id}")

    # paho thread: enqueue only, never raise
    def _on_connect(self, client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not getattr(reason, "is_failure", False):
            subs = sorted(self.link.subscriptions)
            client.subscribe([(t, 1) for t in subs])
            self._inbox.put((_CONNECTED, b""))

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        self._inbox.put((str(msg.topic), bytes(msg.payload)))

    def _status(self, update: UpdateReport | None) -> StatusMessage:
        updater: Updater | None = getattr(self, "updater", None)  # None while it recovers
        downloading = update is not None and update.outcome in (
            UpdateOutcome.DOWNLOADING,
            UpdateOutcome.CHUNK_REJECTED,
        )
        if update is None and updater is not None:
            downloading = updater.downloading is not None
        return build_status(
            device_id=self.keys.device_id,
            hardware_id=self.keys.hardware_id,
            state=DeviceState.UPDATING if downloading else DeviceState.ONLINE,
            sent_at=time.time(),
            updater_state=updater.state if updater is not None else None,
            precisions=self._precisions,
            max_model_bytes=self._max_model_bytes,
            update=update.to_info() if update is not None else None,
        )

    def _publish_status(self, report: UpdateReport) -> None:
        message = self._status(report)
        self.link.publish(
            topics.device_status(self.keys.device_id), encode_message(message), retain=True
        )
        self._on_report(report)

    def _announce(self) -> None:
        """Retained status after each connect: what this device serves (the coordinator
        reads it to choose a delta base, and to stop waiting for devices it has heard)."""
        message = self._status(None)
        self.link.publish(
            topics.device_status(self.keys.device_id), encode_message(message), retain=True
        )

    def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == _CONNECTED:
            self._announce()
            return
        known = dispatch(
            self.updater, topic, payload, device_id=self.keys.device_id, groups=self.keys.groups
        )
        if not known:
            logger.warning("ignoring a message on an unexpected topic")

    def _run(self) -> None:
        while not self._stop.is_set():
            due = self.updater.due_in()
            wait = _IDLE_WAKE_S if due is None else min(due, _IDLE_WAKE_S)
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is not None:
                self._dispatch(*item)
            self.updater.tick()

    def start(self) -> None:
        """Connect (persistent session) and start the worker."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self._host, self._port, keepalive=10, clean_start=False, properties=props
        )
        self._client.loop_start()
        self._worker.start()

    def stop(self) -> None:
        """Stop the worker and disconnect."""
        self._stop.set()
        self._inbox.put(None)
        if self._worker.is_alive():
            self._worker.join(5)
        self._client.disconnect()
        self._client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m edge.updater.mqtt``: a minimal update daemon serving with LiteRT."""
    from edge.inference import Predictor

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--max-model-bytes", type=int, default=4_000_000)
    ap.add_argument("--quiet-s", type=float, default=1.0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    predictor = Predictor()

    def activate(path: Path, version: str) -> None:
        predictor.load(path, version)  # load + smoke test; the old model serves on failure

    client = UpdaterClient(
        load_device_keys(args.bundle),
        host=args.host,
        port=args.port,
        state_dir=args.state_dir,
        max_model_bytes=args.max_model_bytes,
        activate=activate,
        quiet_s=args.quiet_s,
    )
    active = client.updater.active_model()
    if active is not None:
        predictor.load(*active)
    client.start()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        client.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
