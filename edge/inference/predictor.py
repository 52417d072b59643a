"""The :class:`Predictor`: serves the active model and hot-swaps it without dropping requests.

Swap protocol:

1. the new model is read, loaded into fresh interpreters *beside* the active one, checked
   against the device profile (size, precision) and smoke-tested (plus an optional
   caller-supplied probe, e.g. the updater's accuracy check);
2. only then is ``self._active`` rebound, a single atomic reference assignment;
3. a request reads ``self._active`` once at its start, so in-flight requests finish on the
   model they started with; the old interpreters are freed when the last one returns.

A model that fails any step raises :class:`~shared.errors.ModelLoadError` and never
becomes active: the old one keeps serving.

Shadow evaluation (:mod:`edge.inference.shadow`): :meth:`Predictor.start_shadow` loads a
candidate into its own interpreter; each successful request is then offered to it after
the serving model answered, and the caller's answer is never the candidate's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.inference.model import LoadedModel, ModelInfo
from edge.inference.shadow import CandidateRunner, ShadowConfig, ShadowEvaluator, Task
from edge.inference.stats import InferenceStats
from shared.errors import InferenceError, ModelLoadError, RequestError
from shared.profiles import DeviceProfile
from shared.protocol.messages import ServingInfo, ShadowReport

__all__ = ["Predictor", "Probe"]

logger = logging.getLogger(__name__)

Probe = Callable[[LoadedModel], None]
"""Extra check run on a candidate before activation; raise to reject it."""


class Predictor:
    """Thread-safe inference on the active model, with atomic hot swap.

    Args:
        num_threads: Interpreter threads; :meth:`from_profile` takes them from the profile.
        replicas: Interpreter instances per model (see :class:`LoadedModel`).
        profile: If given, models over ``max_model_bytes`` or in a precision the profile
            does not accept are rejected.
        stats: Where request counts and latencies go (a fresh one by default).
    """

    def __init__(
        self,
        *,
        num_threads: int = 1,
        replicas: int = 1,
        profile: DeviceProfile | None = None,
        stats: InferenceStats | None = None,
    ) -> None:
        self._num_threads = num_threads
        self._replicas = replicas
        self._profile = profile
        self.stats = stats if stats is not None else InferenceStats()
        self._active: LoadedModel | None = None
        self._shadow: ShadowEvaluator | None = None
        self._swap_lock = threading.Lock()  # one load at a time; never held by requests

    @classmethod
    def from_profile(cls, profile: DeviceProfile, *, replicas: int = 1) -> Predictor:
        """A predictor using the profile's thread count and model limits."""
        return cls(num_threads=profile.inference_threads, replicas=replicas, profile=profile)

    @property
    def active(self) -> ModelInfo | None:
        """The active model's info, or None before the first successful load."""
        model = self._active
        return model.info if model is not None else None

    def _check_profile(self, content: bytes, model: LoadedModel | None) -> None:
        profile = self._profile
        if profile is None:
            return
        if model is None:
            if len(content) > profile.max_model_bytes:
                raise ModelLoadError(
                    f"model is {len(content)} bytes, over the profile's max_model_bytes="
                    f"{profile.max_model_bytes}",
                    code="model_too_large",
                )
            return
        if model.info.precision not in profile.precisions:
            raise ModelLoadError(
                f"model precision {model.info.precision} is not accepted by profile "
                f"{profile.name} ({', '.join(profile.precisions)})",
                code="precision_not_accepted",
            )

    def load_bytes(self, content: bytes, version: str, *, probe: Probe | None = None) -> ModelInfo:
        """Load, check and activate a model held in memory.

        Raises:
            ModelLoadError: the model cannot load, breaks a profile limit, or fails the
                smoke test or probe. The previously active model stays active.
        """
        with self._swap_lock:
            self._check_profile(content, None)
            candidate = LoadedModel(
                content, version, num_threads=self._num_threads, replicas=self._replicas
            )
            self._check_profile(content, candidate)
            candidate.smoke_test()
            if probe is not None:
                try:
                    probe(candidate)
                except ModelLoadError:
                    raise
                except Exception as exc:  # a probe's failure of any kind rejects the model
                    raise ModelLoadError(f"probe rejected model {version}: {exc}") from exc
            old = self._active
            self._active = candidate  # the atomic swap
        logger.info(
            "model %s active (%s, %d bytes, sha256 %s…), replaced %s",
            version,
            candidate.info.precision,
            candidate.info.size_bytes,
            candidate.info.sha256[:12],
            old.version if old else "nothing",
        )
        return candidate.info

    def _read(self, path: Path) -> bytes:
        limit = self._profile.max_model_bytes if self._profile else None
        try:
            size = path.stat().st_size
            if limit is not None and size > limit:  # never read an oversized file in
                raise ModelLoadError(
                    f"model file {path.name} is {size} bytes, over the profile's "
                    f"max_model_bytes={limit}",
                    code="model_too_large",
                )
            return path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc

    def load(
        self, path: str | Path, version: str | None = None, *, probe: Probe | None = None
    ) -> ModelInfo:
        """Load, check and activate a ``.tflite`` file (version defaults to the file stem).

        Raises:
            ModelLoadError: unreadable file, or any reason of :meth:`load_bytes`.
        """
        path = Path(path)
        return self.load_bytes(self._read(path), version or path.stem, probe=probe)

    # --- shadow evaluation -------------------------------------------------------------

    @property
    def shadow(self) -> ShadowEvaluator | None:
        """The shadow evaluation in progress, if any."""
        return self._shadow

    def start_shadow(
        self,
        candidate: str | Path | CandidateRunner,
        info: ServingInfo,
        *,
        config: ShadowConfig | None = None,
        task: Task | None = None,
    ) -> ShadowEvaluator:
        """Evaluate a candidate in shadow, replacing any evaluation in progress.

        Args:
            candidate: A ``.tflite`` file (loaded into its own interpreter with this
                predictor's thread count; never smoke-tested here, since a candidate that
                hangs must not hang the caller) or a ready :class:`CandidateRunner`.
            info: What the candidate is, for the report.
            config: Sampling and deadline (defaults of :class:`ShadowConfig`).
            task: ``classifier`` or ``regressor``; by default from the output shape.

        Raises:
            ModelLoadError: the candidate file cannot be read or loaded; nothing changes.
        """
        shape: tuple[int, ...] | None = None
        if isinstance(candidate, (str, Path)):
            path = Path(candidate)
            model = LoadedModel(self._read(path), str(info.version), num_threads=self._num_threads)
            runner: CandidateRunner = model
            shape = model.info.output_shape
        else:
            runner = candidate
            active = self._active
            shape = active.info.output_shape if active is not None else None
        evaluator = ShadowEvaluator(runner, info, config=config, task=task, output_shape=shape)
        evaluator.start()
        old, self._shadow = self._shadow, evaluator
        if old is not None:
            old.close()
        logger.info("shadow evaluation of %s v%d started", info.model_id, info.version)
        return evaluator

    def stop_shadow(self) -> ShadowEvaluator | None:
        """End the shadow evaluation in progress; returns it (for a last report) or None."""
        old, self._shadow = self._shadow, None
        if old is not None:
            old.close()
            logger.info("shadow evaluation of %s v%d stopped", old.info.model_id, old.info.version)
        return old

    def shadow_report(self, *, serving_version: int, reset: bool = True) -> ShadowReport | None:
        """The window's shadow report, or None when no candidate is being evaluated."""
        shadow = self._shadow
        return shadow.report(serving_version=serving_version, reset=reset) if shadow else None

    def predict(self, x: Any, *, dequantize: bool = True) -> np.ndarray:
        """Run one request on the active model.

        Args:
            x: Input of the model's input shape (batch dimension optional when 1), float32
                or the model's native dtype.
            dequantize: Return real values for a quantized output (default True).

        Raises:
            RequestError: wrong type, shape, dtype or non-finite values.
            InferenceError: no model is active (code ``no_model``).
        """
        return self.predict_versioned(x, dequantize=dequantize)[0]

    def predict_versioned(self, x: Any, *, dequantize: bool = True) -> tuple[np.ndarray, str]:
        """Like :meth:`predict`, also returning the version of the model that served it."""
        model = self._active  # read once: this request finishes on this model
        if model is None:
            self.stats.record_error()
            raise InferenceError("no model is active", code="no_model")
        start = time.perf_counter()
        try:
            out = model.run(x, dequantize=dequantize)
        except RequestError:
            self.stats.record_error()
            raise
        except Exception as exc:  # a runtime failure must not escape as a foreign type
            self.stats.record_error()
            raise InferenceError(f"inference failed: {exc}") from exc
        elapsed = time.perf_counter() - start
        self.stats.record_ok(elapsed)
        shadow = self._shadow
        if shadow is not None and dequantize:  # raw integer outputs are not compared
            try:
                shadow.offer(x, out, elapsed)
            except Exception:  # the answer exists: shadow trouble must never cost it
                logger.exception("shadow sampling failed: evaluation stopped, request answered")
                if self._shadow is shadow:
                    self.stop_shadow()
        return out, model.version
