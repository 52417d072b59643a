"""The agent's local inference: named models, the endpoints, shadow evaluation, trials.

:class:`LocalInference` is what :class:`~edge.agent.Agent` delegates to, so the agent stays
a lifecycle: it owns the default :class:`Predictor` (the updater-managed model) and the
extra models loaded from files, in one :class:`ModelSet`; starts and stops the HTTP and
Unix-socket endpoints over that set; and answers the updater's two callbacks —
:meth:`shadow_candidate` (a held ``shadow`` candidate, ``docs/protocol.md`` §16) and
:meth:`trial_variant` (time a ``trial`` file on this CPU, §15).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from edge.inference.catalog import ModelSet
from edge.inference.predictor import Predictor
from edge.inference.server import InferenceServer
from edge.inference.shadow import ShadowConfig
from edge.inference.socket_server import SocketServer
from edge.inference.timing import DEFAULT_BUDGET_S, time_variant
from shared.artifacts import Manifest
from shared.errors import ConfigError, ModelLoadError
from shared.profiles import DeviceProfile
from shared.protocol.messages import ServingInfo, ShadowReport, VariantTiming

__all__ = ["LocalInference"]

logger = logging.getLogger(__name__)


class LocalInference:
    """Models served by name, their endpoints, and the updater's evaluation callbacks.

    Args:
        predictor: The default (updater-managed) model's predictor.
        profile: Threads for extra models, candidates and trials.
        extra_models: ``(name, .tflite path)`` served beside the default (loaded by
            :meth:`load_extra_models`; the names are checked now).
        shadow: Sampling and deadline of shadow evaluation.
        trial_budget_s: Wall time to time one variant.

    Raises:
        ConfigError: an invalid or repeated model name.
    """

    def __init__(
        self,
        predictor: Predictor,
        profile: DeviceProfile,
        *,
        extra_models: tuple[tuple[str, Path], ...] = (),
        shadow: ShadowConfig | None = None,
        trial_budget_s: float = DEFAULT_BUDGET_S,
    ) -> None:
        self.predictor = predictor
        self.profile = profile
        self.shadow_config = shadow or ShadowConfig()
        self.trial_budget_s = trial_budget_s
        self.models = ModelSet(predictor)
        self._extra = extra_models
        for name, _path in extra_models:
            self.models.add(name, Predictor.from_profile(profile))
        self.server: InferenceServer | None = None
        self.socket_server: SocketServer | None = None

    # --- models and endpoints ----------------------------------------------------------

    def load_extra_models(self) -> None:
        """Load every extra model from its file.

        Raises:
            ModelLoadError: one cannot be loaded (the agent does not start half-configured).
        """
        for name, path in self._extra:
            predictor = self.models.get(name)
            assert predictor is not None  # added in __init__
            predictor.load(path)

    def name_default_model(self, model_id: str | None) -> None:
        """Serve the default model under ``model_id`` too (the updater's installed model)."""
        if model_id is None or model_id == self.models.default_name:
            return
        try:
            self.models.set_default_name(model_id)
        except ConfigError as exc:  # an extra model took the name: keep serving as "default"
            logger.warning("cannot serve the installed model by name: %s", exc)

    def start_servers(
        self,
        *,
        http_port: int | None,
        socket_path: Path | None,
        max_connections: int,
        request_timeout: float,
    ) -> None:
        """Start the endpoints asked for; on a failure none is left running.

        Raises:
            ConfigError: a port or socket path cannot be bound.
        """
        try:
            if http_port is not None:
                self.server = InferenceServer(
                    self.models,
                    port=http_port,
                    max_connections=max_connections,
                    request_timeout=request_timeout,
                )
                self.server.start()
            if socket_path is not None:
                self.socket_server = SocketServer(
                    self.models,
                    socket_path,
                    max_connections=max_connections,
                    request_timeout=request_timeout,
                )
                self.socket_server.start()
        except BaseException:
            self.socket_server = None
            self.stop()
            raise

    def stop(self) -> None:
        """Stop the endpoints and any shadow evaluation."""
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.socket_server is not None:
            self.socket_server.stop()
            self.socket_server = None
        self.predictor.stop_shadow()

    # --- the updater's callbacks (called on the agent loop) ----------------------------

    def shadow_candidate(self, path: Path | None, manifest: Manifest | None) -> None:
        """Start shadow evaluation of a held candidate, or stop it (``path`` None).

        The candidate gets its own interpreter; requests keep being answered by the
        serving model only. A candidate that cannot be loaded is logged and not
        evaluated: the serving model is untouched either way.
        """
        if path is None or manifest is None:
            self.predictor.stop_shadow()
            return
        if path.stem not in ("a", "b"):
            logger.error("shadow candidate %s is not in an A/B slot: not evaluated", path.name)
            return
        slot: Literal["a", "b"] = "a" if path.stem == "a" else "b"
        info = ServingInfo(
            model_id=manifest.model_id,
            version=manifest.version,
            artifact_id=manifest.artifact_id,
            sha256=manifest.sha256,
            precision=manifest.precision,
            slot=slot,
        )
        try:
            self.predictor.start_shadow(path, info, config=self.shadow_config)
        except ModelLoadError as exc:
            logger.error("shadow candidate v%d cannot be loaded: %s", manifest.version, exc)

    def trial_variant(self, path: Path, manifest: Manifest) -> VariantTiming:
        """Time a variant on this CPU with the profile's threads (§15).

        Raises:
            ModelLoadError: the file cannot be loaded or invoked.
        """
        threads = self.profile.inference_threads
        runs, median_us, p99_us = time_variant(path, threads=threads, budget_s=self.trial_budget_s)
        return VariantTiming(
            model_id=manifest.model_id,
            version=manifest.version,
            artifact_id=manifest.artifact_id,
            precision=manifest.precision,
            threads=threads,
            runs=runs,
            median_us=min(median_us, 1e9),
            p99_us=min(p99_us, 1e9),
        )

    def shadow_report(self, *, serving_version: int) -> ShadowReport | None:
        """The window's shadow report (None without a candidate; never raises)."""
        try:
            return self.predictor.shadow_report(serving_version=serving_version)
        except Exception:  # a report bug must never cost the window's telemetry
            logger.exception("could not build the shadow report")
            return None
