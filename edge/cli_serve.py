"""Local inference without the agent (no MQTT): ``infer`` one input, or ``serve`` models."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from edge.cli_common import (
    HttpMaxConnections,
    HttpTimeout,
    ModelsOpt,
    SocketPathOpt,
    fail,
    parse_models,
    setup_logging,
)
from edge.cli_profile import load_profile
from shared.errors import ConfigError, FedgeError, ProfileError

__all__ = ["infer", "load_predictor", "serve"]


def load_predictor(model: Path, threads: int, profile: Path | None) -> Any:
    """A :class:`~edge.inference.Predictor` with ``model`` loaded.

    Its threads and limits come from ``profile`` when one is given, else ``threads``.

    Raises:
        FedgeError: the profile or the model cannot be loaded.
    """
    from edge.inference import Predictor

    if profile is not None:
        predictor = Predictor.from_profile(load_profile(profile))
    else:
        predictor = Predictor(num_threads=threads)
    predictor.load(model)
    return predictor


def infer(
    model: Annotated[Path, typer.Option(help=".tflite model.")],
    input_path: Annotated[Path, typer.Option("--input", help=".npy input (float32 or int8).")],
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    profile: Annotated[Path | None, typer.Option(help="Take threads/limits from it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Run one inference locally and print the output."""
    try:
        predictor = load_predictor(model, threads, profile)
        try:
            x = np.load(input_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProfileError(f"cannot read input {input_path}: {exc}") from exc
        out = predictor.predict(x)
    except FedgeError as exc:
        fail(exc, as_json)
        return
    version = predictor.active.version
    if as_json:
        typer.echo(json.dumps({"model_version": version, "outputs": out.tolist()}))
    else:
        typer.echo(f"model {version}: argmax={int(np.argmax(out))} outputs={out.tolist()}")


def serve(
    model: ModelsOpt = None,
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = any free port).")] = 8470,
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    profile: Annotated[Path | None, typer.Option(help="Take threads/limits from it.")] = None,
    http_max_connections: HttpMaxConnections = 32,
    http_timeout: HttpTimeout = 10.0,
    socket_path: SocketPathOpt = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve a model on the loopback HTTP endpoint (and --socket) only, no MQTT, until Ctrl-C."""
    from edge.inference import InferenceServer, ModelSet, SocketServer

    setup_logging(log_level)
    sock_server = None
    try:
        default_model, extra_models = parse_models(model)
        if default_model is None:
            raise ConfigError("--model PATH (the default model) is required")
        predictor = ModelSet(load_predictor(default_model, threads, profile))
        for name, path in extra_models:
            predictor.add(name, load_predictor(path, threads, profile))
        server = InferenceServer(
            predictor,
            port=port,
            max_connections=http_max_connections,
            request_timeout=http_timeout,
        )
        if socket_path is not None:
            sock_server = SocketServer(
                predictor,
                socket_path,
                max_connections=http_max_connections,
                request_timeout=http_timeout,
            )
            sock_server.start()
        server.start()
    except FedgeError as exc:
        if sock_server is not None:
            sock_server.stop()
        fail(exc)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(
        f"serving on {server.url} (POST /v1/infer, POST /v1/models/NAME/predict, GET /v1/health)"
    )
    if sock_server is not None:
        typer.echo(f"serving on unix socket {sock_server.path}")
    stop.wait()
    server.stop()
    if sock_server is not None:
        sock_server.stop()
