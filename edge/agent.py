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

Helpers beside this module: :mod:`edge.agent_config` (settings), :mod:`edge.agent_delivery`
(outbox, link, in-flight table), :mod:`edge.agent_inbox` (incoming messages, subscriptions),
:mod:`edge.agent_reports` (status, telemetry), :mod:`edge.agent_updates` (the updater).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from edge.agent_config import AgentConfig
from edge.agent_delivery import AgentDelivery, Outgoing
from edge.agent_inbox import AgentInbox, MessageHandler
from edge.agent_reports import AgentReports
from edge.agent_updates import AgentUpdates
from edge.inference import InferenceServer, Predictor, SocketServer
from edge.inference.local import LocalInference
from edge.keystore import DeviceKeys
from edge.messaging import EventKind, LinkEvent
from edge.updater import Updater, UpdateReport
from shared.artifacts import Manifest
from shared.errors import FedgeError
from shared.protocol import topics
from shared.protocol.messages import (
    DeviceState,
    MessageKind,
    UpdateInfo,
    UpdateOutcome,
    VariantTiming,
)

if TYPE_CHECKING:  # imported lazily at run time: agents that do not train skip it
    from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor

__all__ = ["Agent", "AgentConfig", "MessageHandler"]  # the last two re-exported for callers

logger = logging.getLogger(__name__)

_STOP_FLUSH_S = 3.0  # how long a clean stop waits for the final offline status's PUBACK


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
        self._events: queue.Queue[LinkEvent | Outgoing | None] = queue.Queue()
        self._stop = threading.Event()
        self.inbox = AgentInbox(config.device_id)
        self._connected = False
        self.reports = AgentReports(config, self.predictor, self.inference, now=wall_clock)
        self.supernode: SuperNodeSupervisor | None = None
        self.delivery = AgentDelivery.open(config, self._events, will=self.reports.will())
        self.outbox, self.link = self.delivery.outbox, self.delivery.link
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
        self.inbox.register(kind, handler)

    def send(
        self, topic: str, message: BaseModel, *, retain: bool = False, droppable: bool = False
    ) -> None:
        """Queue a message for durable, at-least-once delivery (thread-safe)."""
        self._events.put(Outgoing(topic, message, retain, droppable))

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
        self.reports.start_window()
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

    def _handle(self, event: LinkEvent | Outgoing) -> None:
        if isinstance(event, Outgoing):
            self.delivery.store(event)
            return
        kind = event.kind
        if kind is EventKind.PUBLISHED and event.mid is not None:
            self.delivery.published(event.mid, failed=event.failed, reason=event.reason)
        elif kind is EventKind.CONNECTED:
            self._connected = True
            logger.info("connected to broker")
            updater_topics = self.updates.subscriptions() if self.updates is not None else ()
            self.link.subscribe(self.inbox.subscriptions(self._groups(), updater_topics))
            downloading = self.updater is not None and self.updater.downloading is not None
            self._send_status(DeviceState.UPDATING if downloading else DeviceState.ONLINE)
        elif kind is EventKind.DISCONNECTED:
            if self._connected or event.failed:
                logger.warning("disconnected from broker: %s", event.reason)
            self._connected = False
        elif kind is EventKind.REJECTED:
            self.inbox.malformed(event.topic, event.reason)
        elif kind is EventKind.RAW and event.topic is not None and event.payload is not None:
            self.inbox.raw(event.topic, event.payload, updater=self.updater, groups=self._groups())
        elif kind is EventKind.MESSAGE and event.message is not None:
            self.inbox.message(event.topic, event.message)

    def _groups(self) -> set[str]:
        """Groups whose commands this device receives (profile and enrollment bundle)."""
        enrolled = self.keys.groups if self.keys is not None else frozenset()
        return set(self.config.profile.groups) | set(enrolled)

    def _flush(self) -> None:
        """Hand pending outbox messages to paho while connected (see AgentDelivery.flush)."""
        if self._connected:
            self.delivery.flush()

    def _send_status(
        self, state: DeviceState, error: str | None = None, *, update: UpdateInfo | None = None
    ) -> None:
        """Queue the retained status: ``state`` and what the device serves now."""
        status = self.reports.status(state, error, updater=self.updater, update=update)
        topic = topics.device_status(self.config.device_id)
        self.delivery.store(Outgoing(topic, status, True, False))

    def _announce_model_change(self) -> None:
        """Re-announce the status when the serving model changed since the last one."""
        if self.reports.model_changed() and self._connected:
            self._send_status(DeviceState.ONLINE)

    def _emit_telemetry(self) -> None:
        """Queue the telemetry of the window that just ended (droppable when the outbox is full)."""
        telemetry = self.reports.telemetry(
            updater=self.updater,
            outbox_pending=len(self.outbox),
            rejected=self.inbox.rejected,
            supernode_restarts=self.supernode.restarts if self.supernode is not None else None,
        )
        topic = topics.device_telemetry(self.config.device_id)
        self.delivery.store(Outgoing(topic, telemetry, False, True))

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
                if self.delivery.settled:
                    break
                self._drain_events(0.05)
        except FedgeError as exc:
            logger.error("could not record the offline status: %s", exc)
        finally:
            self.link.stop()
            self.outbox.close()
