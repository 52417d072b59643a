"""Local inference: the only package that imports a TFLite runtime.

* :class:`Predictor` — thread-safe inference with quantized I/O handling, request
  validation and atomic hot swap;
* :class:`InferenceServer` — loopback HTTP (``POST /v1/infer``, ``GET /v1/health``);
* :class:`SocketServer` — Unix domain socket, length-prefixed binary frames (and
  :class:`SocketClient`);
* :class:`InferenceStats` — counts and latency percentiles for telemetry.
"""

from edge.inference.model import LoadedModel, ModelInfo, QuantParams
from edge.inference.predictor import Predictor, Probe
from edge.inference.runtime import RUNTIME_NAME
from edge.inference.server import DEFAULT_MAX_BODY_BYTES, InferenceServer
from edge.inference.socket_client import SocketClient, SocketClientError
from edge.inference.socket_server import SocketServer
from edge.inference.stats import InferenceStats, StatsSnapshot

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "RUNTIME_NAME",
    "InferenceServer",
    "InferenceStats",
    "LoadedModel",
    "ModelInfo",
    "Predictor",
    "Probe",
    "QuantParams",
    "SocketClient",
    "SocketClientError",
    "SocketServer",
    "StatsSnapshot",
]
