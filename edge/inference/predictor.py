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
from edge.inference.stats import InferenceStats
from shared.errors import InferenceError, ModelLoadError, RequestError
from shared.profiles import DeviceProfile

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

    def load(
        self, path: str | Path, version: str | None = None, *, probe: Probe | None = None
    ) -> ModelInfo:
        """Load, check and activate a ``.tflite`` file (version defaults to the file stem).

        Raises:
            ModelLoadError: unreadable file, or any reason of :meth:`load_bytes`.
        """
        path = Path(path)
        limit = self._profile.max_model_bytes if self._profile else None
        try:
            size = path.stat().st_size
            if limit is not None and size > limit:  # never read an oversized file in
                raise ModelLoadError(
                    f"model file {path.name} is {size} bytes, over the profile's "
                    f"max_model_bytes={limit}",
                    code="model_too_large",
                )
            content = path.read_bytes()
        except OSError as exc:
            raise ModelLoadError(f"cannot read model file {path}: {exc.strerror}") from exc
        return self.load_bytes(content, version or path.stem, probe=probe)

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
        self.stats.record_ok(time.perf_counter() - start)
        return out, model.version
