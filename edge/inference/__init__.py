"""Local inference: the only package that imports a TFLite runtime.

* :class:`Predictor` — thread-safe inference with quantized I/O handling, request
  validation and atomic hot swap;
* :class:`ModelSet` — several predictors served by name, one of them the default;
* :class:`InferenceServer` — loopback HTTP (``POST /v1/infer``,
  ``POST /v1/models/{name}/predict``, ``GET /v1/health``);
* :class:`SocketServer` — Unix domain socket, length-prefixed binary frames (and
  :class:`SocketClient`);
* :class:`InferenceStats` — counts and latency percentiles for telemetry;
* :class:`ShadowEvaluator` — a candidate run beside the serving model, off the caller's path;
* :func:`time_variant`, :func:`cpu_features` — the evidence for measured variant choice;
* :class:`LocalInference` — the agent's side of it all: models, endpoints, the updater's
  ``on_shadow`` / ``on_trial`` callbacks.
"""

from edge.inference.catalog import DEFAULT_MODEL_NAME, ModelSet
from edge.inference.cpu import cpu_features
from edge.inference.local import LocalInference
from edge.inference.model import LoadedModel, ModelInfo, QuantParams
from edge.inference.predictor import Predictor, Probe
from edge.inference.runtime import RUNTIME_NAME
from edge.inference.server import DEFAULT_MAX_BODY_BYTES, InferenceServer
from edge.inference.shadow import ShadowConfig, ShadowEvaluator
from edge.inference.socket_client import SocketClient, SocketClientError
from edge.inference.socket_server import SocketServer
from edge.inference.stats import InferenceStats, StatsSnapshot
from edge.inference.timing import time_variant

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_MODEL_NAME",
    "RUNTIME_NAME",
    "InferenceServer",
    "InferenceStats",
    "LoadedModel",
    "LocalInference",
    "ModelInfo",
    "ModelSet",
    "Predictor",
    "Probe",
    "QuantParams",
    "ShadowConfig",
    "ShadowEvaluator",
    "SocketClient",
    "SocketClientError",
    "SocketServer",
    "StatsSnapshot",
    "cpu_features",
    "time_variant",
]
