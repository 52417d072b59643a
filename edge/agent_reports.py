"""What the agent reports about itself: its retained status and its telemetry windows.

:func:`edge.status.build_status` turns an updater's state into a status; this module
gathers what the agent knows at send time (the model serving, the updater, this process's
CPU and memory, the outbox backlog, the shadow evaluation) into the
:class:`~shared.protocol.messages.StatusMessage` and
:class:`~shared.protocol.messages.TelemetryMessage` the agent queues in its outbox.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psutil

from edge.agent_config import AgentConfig
from edge.inference import Predictor
from edge.inference.local import LocalInference
from edge.status import build_status
from edge.updater import Updater
from shared.protocol.messages import (
    DeviceState,
    LatencyStats,
    StatusMessage,
    TelemetryMessage,
    UpdateInfo,
)

__all__ = ["AgentReports"]


class AgentReports:
    """Builds the agent's status and telemetry messages (called only on the agent loop).

    Remembers the model version its last status named, so the loop can re-announce a
    model that changed without one (:meth:`model_changed`), and samples this process's CPU
    and memory once per telemetry window.

    Args:
        config: The agent's settings (device id and profile).
        predictor: The default model's predictor: its active model and request stats.
        inference: The agent's local inference: its shadow report.
        now: Returns Unix seconds for ``sent_at``.
    """

    def __init__(
        self,
        config: AgentConfig,
        predictor: Predictor,
        inference: LocalInference,
        *,
        now: Callable[[], float],
    ) -> None:
        self._config = config
        self._predictor = predictor
        self._inference = inference
        self._now = now
        self._announced_version: str | None = None
        self._started = time.monotonic()
        self._process = psutil.Process()

    def start_window(self) -> None:
        """Start the first CPU window (psutil measures CPU since its previous call)."""
        self._process.cpu_percent(None)

    def will(self) -> StatusMessage:
        """The ``offline`` status the broker publishes if the device's connection is lost."""
        return StatusMessage(
            device_id=self._config.device_id,
            sent_at=self._now(),
            state=DeviceState.OFFLINE,
            hardware_id=self._config.profile.hardware_id,
        )

    def status(
        self,
        state: DeviceState,
        error: str | None = None,
        *,
        updater: Updater | None,
        update: UpdateInfo | None = None,
    ) -> StatusMessage:
        """The status naming what serves now (remembered for :meth:`model_changed`).

        Args:
            state: Lifecycle state.
            error: Short description of the last error.
            updater: The agent's updater (None without a device bundle, or while it is
                still being built).
            update: The updater's outcome this status announces.
        """
        info = self._predictor.active
        self._announced_version = info.version if info else None
        profile = self._config.profile
        return build_status(
            device_id=self._config.device_id,
            hardware_id=profile.hardware_id,
            state=state,
            sent_at=self._now(),
            updater_state=updater.state if updater is not None else None,
            precisions=[str(p) for p in profile.precisions],
            max_model_bytes=profile.max_model_bytes,
            model_label=self._announced_version,
            update=update,
            last_error=error,
            timings=updater.timings if updater is not None else (),
            pin_precision=profile.pin_precision,
        )

    def model_changed(self) -> bool:
        """Whether the active model is not the one the last :meth:`status` named."""
        info = self._predictor.active
        version = info.version if info else None
        return version != self._announced_version

    def telemetry(
        self,
        *,
        updater: Updater | None,
        outbox_pending: int,
        rejected: int,
        supernode_restarts: int | None,
    ) -> TelemetryMessage:
        """The telemetry of the window since the previous call (it resets the window).

        Args:
            updater: The agent's updater, whose serving version the shadow report names.
            outbox_pending: Messages waiting in the outbox.
            rejected: Incoming messages the agent dropped since it started.
            supernode_restarts: Restarts of the supervised SuperNode (None without one).
        """
        snap = self._predictor.stats.snapshot(reset=True)
        info = self._predictor.active
        with self._process.oneshot():
            cpu = self._process.cpu_percent(None)
            rss = self._process.memory_info().rss
        return TelemetryMessage(
            device_id=self._config.device_id,
            sent_at=self._now(),
            interval_s=self._config.profile.telemetry_interval_s,
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
            outbox_pending=outbox_pending,
            messages_rejected=rejected,
            supernode_restarts=supernode_restarts,
            shadow=self._inference.shadow_report(serving_version=_serving_version(updater)),
        )


def _serving_version(updater: Updater | None) -> int:
    """Version of the committed model the updater serves (0: none, or no updater)."""
    record = updater.serving()[0] if updater is not None else None
    return record.version if record is not None else 0
