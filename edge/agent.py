"""The edge agent's lifecycle: serve inference, report status and telemetry, survive outages.

One main loop (the thread that calls :meth:`Agent.run`) owns all state changes: it reads
events from the MQTT network thread (connected, PUBACK, message), puts outgoing messages
into the durable :class:`~edge.outbox.Outbox`, publishes from the outbox while connected
and emits telemetry on the profile's interval. Other threads talk to it only through its
event queue (:meth:`Agent.send`, :meth:`Agent.request_stop`), so no lock guards the
outbox or the in-flight table.

Status is retained on ``devices/{id}/status``: ``online`` after each connect and on every
model change, ``offline`` as the last will (lost connection, killed process) and as the
final message of a clean stop.

With a device bundle (``AgentConfig.bundle_dir``) the agent also runs the A/B
:class:`~edge.updater.Updater` on its loop: it subscribes to its retained manifest, passes
manifests, artifact chunks and signed commands (``devices/{id}/cmd``, ``groups/{g}/cmd``)
to the updater undecoded (:attr:`EventKind.RAW`), serves the committed slot at start-up,
and reports every update or command outcome on its retained status.

Inference: the updater-managed model is the default of a :class:`~edge.inference.ModelSet`
(named by its ``model_id`` once installed), beside any extra models loaded from files
(``AgentConfig.extra_models``: a camera's detector and classifier); HTTP and the Unix
socket serve them all by name. When the updater holds a shadow candidate it calls
:meth:`Agent.shadow_candidate`, and each telemetry window then carries the
:class:`~shared.protocol.messages.ShadowReport`; for variant choice it calls
:meth:`Agent.trial_variant`, which times the file on this CPU.

On a device whose profile trains, ``AgentConfig.supernode`` makes the agent start and
supervise the device's Flower SuperNode (:class:`~edge.learning.supernode.SuperNodeSupervisor`)
for as long as it runs, independently of MQTT, and end its process tree on a clean stop.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from pydantic import BaseModel

from edge.agent_updates import AgentUpdates
from edge.inference import InferenceServer, Predictor, ShadowConfig, SocketServer
from edge.inference.local import LocalInference
from edge.keystore import DeviceKeys, load_device_keys
from edge.messaging import EventKind, LinkEvent, MqttLink, parse_broker_url
from edge.outbox import Outbox
from edge.status import build_status
from edge.updater import Updater, UpdateReport
from edge.updater.routing import dispatch
from shared.artifacts import Manifest
from shared.errors import FedgeError
from shared.profiles import DeviceProfile
from shared.protocol import topics
from shared.protocol.codec import encode_message
from shared.protocol.messages import (
    DeviceState,
    LatencyStats,
    Message,
    MessageKind,
    StatusMessage,
    TelemetryMessage,
    UpdateInfo,
    UpdateOutcome,
    VariantTiming,
)

if TYPE_CHECKING:  # imported lazily at run time: agents that do not train skip it
    from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor

__all__ = ["Agent", "AgentConfig", "MessageHandler"]

logger = logging.getLogger(__name__)

MessageHandler = Callable[[str, Message], None]
"""Called on the agent loop with (topic, message) for a registered message kind."""

_STOP_FLUSH_S = 3.0  # how long a clean stop waits for the final offline status's PUBACK


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to run (built by the CLI from flags and FEDGE_* vars)."""

    device_id: str
    broker_url: str
    profile: DeviceProfile
    state_dir: Path
    model_path: Path | None = None
    model_version: str | None = None
    http_port: int | None = None
    http_max_connections: int = 32  # local API: connections past it get 503 at once
    http_timeout_s: float = 10.0  # local API: seconds to deliver each whole request
    socket_path: Path | None = None  # local Unix-socket inference API (binary frames)
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    keepalive_s: int = 30
    max_inflight: int = 20
    outbox_max_messages: int = 10_000
    bundle_dir: Path | None = None  # device enrollment bundle: enables signed model updates
    update_quiet_s: float = 2.0  # seconds without a chunk before asking for missing ones
    supernode: SuperNodeConfig | None = None  # Flower SuperNode to supervise (trains only)
    extra_models: tuple[tuple[str, Path], ...] = ()  # (name, .tflite) served beside the default
    shadow: ShadowConfig = dataclasses.field(default_factory=ShadowConfig)
    trial_budget_s: float = 2.0  # wall time to time one variant (§15)

    def with_bundle(self, bundle_dir: Path) -> AgentConfig:
        """This config with signed model updates from the device's enrollment bundle.

        What ``fedge edge run --bundle`` does: the bundle also supplies the broker username
        and password and the TLS files (CA, client certificate and key) not set here.

        Raises:
            ConfigError: the bundle is unreadable or incomplete.
        """
        keys = load_device_keys(bundle_dir)
        return dataclasses.replace(
            self,
            username=self.username if self.username is not None else keys.broker_username,
            password=self.password if self.password is not None else keys.broker_password,
            cafile=self.cafile or str(keys.ca_file),
            certfile=self.certfile or str(keys.client_cert),
            keyfile=self.keyfile or str(keys.client_key),
            bundle_dir=bundle_dir,
        )


@dataclass(frozen=True)
class _Send:
    topic: str
    message: BaseModel
    retain: bool
    droppable: bool


class Agent:
    """The device agent. Build it, then call :meth:`run` on the thread that should own it.

    Args:
        config: Agent settings.
        predictor: An existing predictor (default: one built from the profile).
        wall_clock: Returns Unix seconds for ``sent_at`` (injectable for tests).
        on_update: Also called, on the agent loop, with every update or command outcome
            of the updater, after its status is queued (for tests and benchmarks).

    Raises:
        FedgeError: the outbox cannot be opened, the broker URL is invalid or the device
            bundle is unusable (``ConfigError``).
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        predictor: Predictor | None = None,
        wall_clock: Callable[[], float] = time.time,
        on_update: Callable[[UpdateReport], None] | None = None,
    ) -> None:
        topics.validate_segment(config.device_id, what="device id")
        self.config = config
        self._on_update_hook = on_update
        self.predictor = predictor or Predictor.from_profile(config.profile)
        self.inference = LocalInference(
            self.predictor,
            config.profile,
            extra_models=config.extra_models,
            shadow=config.shadow,
            trial_budget_s=config.trial_budget_s,
        )
        self.models = self.inference.models
        self._now = wall_clock
        self._events: queue.Queue[LinkEvent | _Send | None] = queue.Queue()
        self._stop = threading.Event()
        self._handlers: dict[MessageKind, MessageHandler] = {}
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._connected = False
        self._announced_version: str | None = None
        self._rejected = 0
        self._started = time.monotonic()
        self._process = psutil.Process()
        self.outbox = Outbox(
            config.state_dir / "outbox.sqlite3", max_messages=config.outbox_max_messages
        )
        self.supernode: SuperNodeSupervisor | None = None
        will = StatusMessage(
            device_id=config.device_id,
            sent_at=self._now(),
            state=DeviceState.OFFLINE,
            hardware_id=config.profile.hardware_id,
        )
        self.link = MqttLink(
            client_id=config.device_id,
            broker=parse_broker_url(config.broker_url),
            events=self._events,  # type: ignore[arg-type]  # the queue also carries _Send
            will=(topics.device_status(config.device_id), encode_message(will)),
            username=config.username,
            password=config.password,
            cafile=config.cafile,
            certfile=config.certfile,
            keyfile=config.keyfile,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
            keepalive_s=config.keepalive_s,
        )
        self.keys: DeviceKeys | None = None
        self.updater: Updater | None = None
        self.updates: AgentUpdates | None = None
        if config.bundle_dir is not None:
            self._start_updater(config.bundle_dir)

    def _start_updater(self, bundle_dir: Path) -> None:
        self.updates = AgentUpdates.start(
            bundle_dir,
            device_id=self.config.device_id,
            profile=self.config.profile,
            state_dir=self.config.state_dir / "updater",
            link=self.link,
            activate=self._activate_model,
            on_status=self._on_update,
            now=self._now,
            quiet_s=self.config.update_quiet_s,
            on_trial=self.inference.trial_variant,
            on_shadow=self.inference.shadow_candidate,
        )
        self.keys, self.updater = self.updates.keys, self.updates.updater

    def _activate_model(self, path: Path, version: str) -> None:
        """Probation: load + smoke-test; the previous model keeps serving on failure."""
        self.predictor.load(path, version)

    @property
    def server(self) -> InferenceServer | None:
        """The loopback HTTP endpoint, while running."""
        return self.inference.server

    @property
    def socket_server(self) -> SocketServer | None:
        """The Unix-socket endpoint, while running."""
        return self.inference.socket_server

    def shadow_candidate(self, path: Path | None, manifest: Manifest | None) -> None:
        """The updater's ``on_shadow``: see :meth:`LocalInference.shadow_candidate`."""
        self.inference.shadow_candidate(path, manifest)

    def trial_variant(self, path: Path, manifest: Manifest) -> VariantTiming:
        """The updater's ``on_trial``: see :meth:`LocalInference.trial_variant`."""
        return self.inference.trial_variant(path, manifest)

    def _serving_record_model_id(self) -> str | None:
        record = self.updater.serving()[0] if self.updater is not None else None
        return record.model_id if record is not None else None

    def _serving_version(self) -> int:
        record = self.updater.serving()[0] if self.updater is not None else None
        return record.version if record is not None else 0

    def _on_update(self, report: UpdateReport) -> None:
        """Announce an update outcome on the retained status (called on the agent loop)."""
        downloading = report.outcome in (UpdateOutcome.DOWNLOADING, UpdateOutcome.CHUNK_REJECTED)
        state = DeviceState.UPDATING if downloading else DeviceState.ONLINE
        if report.outcome in (UpdateOutcome.COMMITTED, UpdateOutcome.ROLLED_BACK):
            self.inference.name_default_model(self._serving_record_model_id())
        self._send_status(state, update=report.to_info())
        if self._on_update_hook is not None:
            self._on_update_hook(report)

    # --- API for other threads -------------------------------------------------------

    def register_handler(self, kind: MessageKind, handler: MessageHandler) -> None:
        """Route incoming messages of ``kind`` (on the agent's subscriptions) to ``handler``."""
        self._handlers[kind] = handler

    def send(
        self, topic: str, message: BaseModel, *, retain: bool = False, droppable: bool = False
    ) -> None:
        """Queue a message for durable, at-least-once delivery (thread-safe)."""
        self._events.put(_Send(topic, message, retain, droppable))

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop cleanly (thread- and signal-safe)."""
        self._stop.set()
        self._events.put(None)  # wake the loop

    # --- lifecycle -------------------------------------------------------------------

    def run(self) -> int:
        """Run until :meth:`request_stop`; return a process exit code (0 = clean stop)."""
        cfg = self.config
        active = self.updater.active_model() if self.updater is not None else None
        if active is not None:  # the committed slot wins over --model
            self.predictor.load(*active)
        elif cfg.model_path is not None:
            self.predictor.load(cfg.model_path, cfg.model_version)
        self.inference.name_default_model(self._serving_record_model_id())
        self.inference.load_extra_models()
        self.inference.start_servers(
            http_port=cfg.http_port,
            socket_path=cfg.socket_path,
            max_connections=cfg.http_max_connections,
            request_timeout=cfg.http_timeout_s,
        )
        logger.info(
            "agent %s starting (profile %s, %d messages in outbox)",
            cfg.device_id,
            cfg.profile.name,
            len(self.outbox),
        )
        self._process.cpu_percent(None)  # start the first CPU window
        interval = cfg.profile.telemetry_interval_s
        next_telemetry = time.monotonic() + interval
        try:
            if cfg.supernode is not None:
                self._start_supernode(cfg.supernode)
            self.link.start()
            while not self._stop.is_set():
                timeout = max(0.0, min(next_telemetry - time.monotonic(), 0.5))
                self._drain_events(timeout)
                if time.monotonic() >= next_telemetry:
                    next_telemetry += interval
                    if next_telemetry < time.monotonic():  # we fell behind: skip, don't burst
                        next_telemetry = time.monotonic() + interval
                    self._safely(self._emit_telemetry)
                if self.updater is not None:
                    self._safely(self.updater.tick)
                self._safely(self._announce_model_change)
                self._safely(self._flush)
        finally:
            self._shutdown()
        return 0

    def _start_supernode(self, config: SuperNodeConfig) -> None:
        """Start the device's SuperNode; it runs whether or not the broker is reachable."""
        from edge.learning.supernode import SuperNodeSupervisor  # lazy: see module docs

        self.supernode = SuperNodeSupervisor(config)
        self.supernode.start()

    def _safely(self, step: Callable[..., None], *args: object) -> None:
        try:
            step(*args)
        except FedgeError as exc:  # e.g. outbox disk full: log, keep serving
            logger.error("agent step %s failed: %s", getattr(step, "__name__", step), exc)

    def _drain_events(self, timeout: float) -> None:
        """Handle every queued event, waiting up to ``timeout`` for the first one."""
        try:
            event = self._events.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            if event is not None:  # None only wakes the loop (request_stop)
                self._safely(self._handle, event)
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                return

    def _handle(self, event: LinkEvent | _Send) -> None:
        if isinstance(event, _Send):
            self._store(event)
            return
        kind = event.kind
        if kind is EventKind.PUBLISHED and event.mid is not None:
            row_id = self._inflight.pop(event.mid, None)
            if row_id is not None:
                if event.failed:  # the broker refused it for good (e.g. ACL): retrying is futile
                    logger.error("broker rejected outbox message %d: %s", row_id, event.reason)
                self.outbox.ack(row_id)
        elif kind is EventKind.CONNECTED:
            self._connected = True
            logger.info("connected to broker")
            subs = [topics.device_cmd(self.config.device_id)]
            subs += [topics.group_cmd(g) for g in sorted(self._groups())]
            if self.updates is not None:
                subs += self.updates.subscriptions()
            self.link.subscribe(subs)
            downloading = self.updater is not None and self.updater.downloading is not None
            self._send_status(DeviceState.UPDATING if downloading else DeviceState.ONLINE)
        elif kind is EventKind.DISCONNECTED:
            if self._connected or event.failed:
                logger.warning("disconnected from broker: %s", event.reason)
            self._connected = False
        elif kind is EventKind.REJECTED:
            self._rejected += 1
            logger.warning("dropped a malformed message on %s: %s", event.topic, event.reason)
        elif kind is EventKind.RAW and event.topic is not None and event.payload is not None:
            self._handle_raw(event.topic, event.payload)
        elif kind is EventKind.MESSAGE and event.message is not None:
            handler = self._handlers.get(event.message.kind)
            if handler is None:
                self._rejected += 1
                logger.warning("no handler for %s message on %s", event.message.kind, event.topic)
                return
            try:
                handler(event.topic or "", event.message)
            except Exception:  # a handler bug must not stop the agent
                logger.exception("handler for %s failed", event.message.kind)

    def _groups(self) -> set[str]:
        """Groups whose commands this device receives (profile and enrollment bundle)."""
        enrolled = self.keys.groups if self.keys is not None else frozenset()
        return set(self.config.profile.groups) | set(enrolled)

    def _handle_raw(self, topic: str, payload: bytes) -> None:
        """A manifest, chunk or command: the updater verifies it (never raises here)."""
        updater = self.updater
        if updater is None:
            self._rejected += 1
            logger.warning("no updater for a message on %s", topic)
            return
        try:
            known = dispatch(
                updater, topic, payload, device_id=self.config.device_id, groups=self._groups()
            )
            if not known:
                self._rejected += 1
                logger.warning("ignoring a message on an unexpected topic %s", topic)
        except Exception:  # an updater bug must not stop the agent
            logger.exception("updater failed on a message on %s", topic)

    def _store(self, send: _Send) -> None:
        payload = encode_message(send.message)
        msg_id = str(getattr(send.message, "msg_id", "")) or payload.hex()[:32]
        self.outbox.enqueue(
            send.topic, payload, msg_id=msg_id, retain=send.retain, droppable=send.droppable
        )

    def _flush(self) -> None:
        """Hand the oldest pending outbox messages to paho, up to ``max_inflight``."""
        if not self._connected:
            return
        room = self.config.max_inflight - len(self._inflight)
        if room <= 0:
            return
        in_flight_rows = frozenset(self._inflight.values())
        for item in self.outbox.pending(limit=room, exclude=in_flight_rows):
            mid = self.link.publish(item.topic, item.payload, qos=item.qos, retain=item.retain)
            if mid is None:
                return
            self._inflight[mid] = item.row_id
            self.outbox.mark_attempt(item.row_id)

    def _send_status(
        self, state: DeviceState, error: str | None = None, *, update: UpdateInfo | None = None
    ) -> None:
        info = self.predictor.active
        self._announced_version = info.version if info else None
        profile = self.config.profile
        status = build_status(
            device_id=self.config.device_id,
            hardware_id=profile.hardware_id,
            state=state,
            sent_at=self._now(),
            updater_state=self.updater.state if self.updater is not None else None,
            precisions=[str(p) for p in profile.precisions],
            max_model_bytes=profile.max_model_bytes,
            model_label=self._announced_version,
            update=update,
            last_error=error,
            timings=self.updater.timings if self.updater is not None else (),
            pin_precision=profile.pin_precision,
        )
        self._store(_Send(topics.device_status(self.config.device_id), status, True, False))

    def _announce_model_change(self) -> None:
        info = self.predictor.active
        version = info.version if info else None
        if version != self._announced_version and self._connected:
            self._send_status(DeviceState.ONLINE)

    def _emit_telemetry(self) -> None:
        snap = self.predictor.stats.snapshot(reset=True)
        info = self.predictor.active
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss
        telemetry = TelemetryMessage(
            device_id=self.config.device_id,
            sent_at=self._now(),
            interval_s=self.config.profile.telemetry_interval_s,
            model_version=info.version if info else None,
            requests=snap.requests,
            errors=snap.errors,
            requests_total=snap.requests_total,
            latency=LatencyStats(
                count=snap.latency_count,
                p50_ms=snap.p50_ms,
                p95_ms=snap.p95_ms,
                p99_ms=snap.p99_ms,
                max_ms=snap.max_ms,
            ),
            cpu_percent=cpu,
            memory_rss_bytes=rss,
            memory_percent=psutil.virtual_memory().percent,
            uptime_s=time.monotonic() - self._started,
            outbox_pending=len(self.outbox),
            messages_rejected=self._rejected,
            supernode_restarts=self.supernode.restarts if self.supernode is not None else None,
            shadow=self.inference.shadow_report(serving_version=self._serving_version()),
        )
        topic = topics.device_telemetry(self.config.device_id)
        self._store(_Send(topic, telemetry, False, True))

    def _shutdown(self) -> None:
        logger.info("agent %s stopping", self.config.device_id)
        self.inference.stop()  # endpoints and any shadow evaluation
        if self.supernode is not None:
            self.supernode.stop()  # the SuperNode, its SuperExec and any ClientApp
        try:
            self._drain_events(0)  # store anything other threads queued before the stop
            self._send_status(DeviceState.OFFLINE)
            deadline = time.monotonic() + _STOP_FLUSH_S
            while self._connected and time.monotonic() < deadline:
                self._flush()
                if not self._inflight and not len(self.outbox):
                    break
                self._drain_events(0.05)
        except FedgeError as exc:
            logger.error("could not record the offline status: %s", exc)
        finally:
            self.link.stop()
            self.outbox.close()
