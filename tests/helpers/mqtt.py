"""A recording MQTT 5 subscriber for integration tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@dataclass(frozen=True)
class Received:
    """One received message."""

    topic: str
    payload: bytes
    retain: bool


class Recorder:
    """Subscribes to ``topic_filter`` and records every message; ``wait_for`` polls."""

    def __init__(self, host: str, port: int, topic_filter: str, client_id: str = "recorder"):
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        self._client.on_connect = lambda c, *_: c.subscribe(topic_filter, qos=1)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(host, port)
        self._client.loop_start()
        if not self._subscribed.wait(10):
            raise RuntimeError("recorder could not subscribe")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def snapshot(self) -> list[Received]:
        """A copy of everything received so far."""
        with self._lock:
            return list(self.messages)

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout: float = 15.0
    ) -> list[Received]:
        """Poll until ``predicate(messages)`` holds; raise AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msgs = self.snapshot()
            if predicate(msgs):
                return msgs
            time.sleep(0.05)
        raise AssertionError(f"timed out; received {len(self.snapshot())} messages")

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish from the recorder's connection and wait for completion."""
        self._client.publish(topic, payload, qos=qos).wait_for_publish(5)

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()
