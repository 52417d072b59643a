"""``fedge edge …`` commands: run the agent, serve or try a model, check a profile.

Every option of ``run`` can also come from a ``FEDGE_*`` environment variable (shown in
``--help``), so a device's service unit can keep secrets such as the broker password out
of its command line.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from shared.errors import ConfigError, FedgeError, ProfileError
from shared.profiles import DeviceProfile, profile_from_toml

__all__ = ["edge_app", "load_profile"]

logger = logging.getLogger(__name__)

edge_app = typer.Typer(
    name="edge",
    help="Edge device agent: local LiteRT inference, status/telemetry over MQTT.",
    no_args_is_help=True,
    add_completion=False,
)


def load_profile(path: Path) -> DeviceProfile:
    """Read and validate a device profile file.

    Raises:
        ProfileError: unreadable file, invalid TOML or an invalid field (named).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    return profile_from_toml(text, source=str(path))


def _fail(exc: FedgeError, as_json: bool = False) -> None:
    if as_json:
        typer.echo(json.dumps({"error": {"code": exc.code, "message": exc.message}}))
    else:
        typer.echo(f"error ({exc.code}): {exc.message}", err=True)  # as every fedge command
    raise typer.Exit(2)


def _setup_logging(level: str) -> None:
    # force: the command's own --log-level wins over anything configured before it (e.g.
    # the ``fedge`` root command's default WARNING).
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )


ProfileOpt = Annotated[
    Path, typer.Option("--profile", envvar="FEDGE_PROFILE", help="Device profile (TOML).")
]
HttpMaxConnections = Annotated[
    int,
    typer.Option(
        "--http-max-connections",
        envvar="FEDGE_HTTP_MAX_CONNECTIONS",
        min=1,
        help="Simultaneous HTTP connections; more are answered 503 at once.",
    ),
]
HttpTimeout = Annotated[
    float,
    typer.Option(
        "--http-timeout",
        envvar="FEDGE_HTTP_TIMEOUT",
        min=0.1,
        help="Seconds a connection has to deliver each whole request (idle keep-alive too).",
    ),
]

ModelsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--model",
        envvar="FEDGE_MODEL",
        help="A .tflite to serve: PATH once for the default model, NAME=PATH (repeatable) for "
        "more models served by name (HTTP /v1/models/NAME/predict, socket model name).",
    ),
]


def parse_models(values: list[str] | None) -> tuple[Path | None, tuple[tuple[str, Path], ...]]:
    """``--model`` values → (the default model's path, ``(name, path)`` of the others).

    ``NAME=PATH`` names a model when ``NAME`` is a valid model name; any other value is
    the default model's path (write ``./a=b.tflite`` for a file whose name has ``=``).

    Raises:
        ConfigError: two default models, or a name given twice.
    """
    from edge.inference.frames import MODEL_NAME_RE  # deferred: keeps `--help` fast

    default: Path | None = None
    named: dict[str, Path] = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if sep and MODEL_NAME_RE.fullmatch(name) and path:
            if name in named:
                raise ConfigError(f"--model {name}=... is given twice")
            named[name] = Path(path)
        elif default is not None:
            raise ConfigError("--model PATH (the default model) is given twice; name the others")
        else:
            default = Path(value)
    return default, tuple(named.items())


SocketPathOpt = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        envvar="FEDGE_SOCKET",
        help="Also serve inference on this Unix socket (binary frames, mode 0600).",
    ),
]


@edge_app.command()
def run(
    profile: ProfileOpt,
    device_id: Annotated[str, typer.Option(envvar="FEDGE_DEVICE_ID", help="This device's id.")],
    broker: Annotated[
        str, typer.Option(envvar="FEDGE_BROKER", help="mqtt://host:port or mqtts://host:port")
    ],
    username: Annotated[str | None, typer.Option(envvar="FEDGE_USERNAME")] = None,
    password: Annotated[str | None, typer.Option(envvar="FEDGE_PASSWORD")] = None,
    cafile: Annotated[str | None, typer.Option(envvar="FEDGE_CAFILE", help="CA bundle.")] = None,
    certfile: Annotated[
        str | None, typer.Option(envvar="FEDGE_CERTFILE", help="Client certificate.")
    ] = None,
    keyfile: Annotated[
        str | None, typer.Option(envvar="FEDGE_KEYFILE", help="Client private key.")
    ] = None,
    model: ModelsOpt = None,
    model_version: Annotated[
        str | None, typer.Option(envvar="FEDGE_MODEL_VERSION", help="Version label of --model.")
    ] = None,
    http_port: Annotated[
        int | None,
        typer.Option(envvar="FEDGE_HTTP_PORT", help="Serve HTTP on 127.0.0.1:PORT (0 = any)."),
    ] = None,
    http_max_connections: HttpMaxConnections = 32,
    http_timeout: HttpTimeout = 10.0,
    socket_path: SocketPathOpt = None,
    state_dir: Annotated[
        Path, typer.Option(envvar="FEDGE_STATE_DIR", help="Outbox and device state.")
    ] = Path(".fedge/edge"),
    reconnect_max: Annotated[
        float, typer.Option(envvar="FEDGE_RECONNECT_MAX", help="Max reconnect backoff (s).")
    ] = 30.0,
    bundle: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDGE_BUNDLE",
            help="Device enrollment bundle: enables signed model updates; also supplies "
            "the broker credentials and TLS files not given otherwise.",
        ),
    ] = None,
    update_quiet: Annotated[
        float,
        typer.Option(envvar="FEDGE_UPDATE_QUIET", help="Seconds before re-asking for chunks."),
    ] = 2.0,
    superlink: Annotated[
        str | None,
        typer.Option(
            envvar="FEDGE_SUPERLINK",
            help="Coordinator's Flower SuperLink HOST:PORT: run and supervise this device's "
            "SuperNode (profiles with trains = true; needs --bundle and --train-data).",
        ),
    ] = None,
    train_data: Annotated[
        Path | None,
        typer.Option(
            envvar="FEDGE_TRAIN_DATA", help="Local training .npz, or DIR/train.npz (--superlink)."
        ),
    ] = None,
    supernode_port: Annotated[
        int,
        typer.Option(
            envvar="FEDGE_SUPERNODE_PORT", help="Loopback port of the SuperNode's runtime API."
        ),
    ] = 9094,
    shadow_rate: Annotated[
        float,
        typer.Option(
            envvar="FEDGE_SHADOW_RATE",
            min=0.0,
            max=1.0,
            help="Share of requests also run on a shadow candidate (off the caller's path).",
        ),
    ] = 0.25,
    shadow_max_per_s: Annotated[
        float,
        typer.Option(
            envvar="FEDGE_SHADOW_MAX_PER_S", min=0.1, help="Cap on shadow samples per second."
        ),
    ] = 100.0,
    log_level: Annotated[str, typer.Option(envvar="FEDGE_LOG_LEVEL")] = "info",
) -> None:
    """Run the agent until SIGTERM or Ctrl-C."""
    from edge.agent import Agent, AgentConfig  # deferred: keeps `--help` fast
    from edge.inference import ShadowConfig

    _setup_logging(log_level)
    try:
        default_model, extra_models = parse_models(model)
        device_profile = load_profile(profile)
        supernode_config = None
        if superlink is not None:
            supernode_config = _supernode_config(
                superlink, device_profile, bundle, train_data, state_dir, supernode_port
            )
        config = AgentConfig(
            device_id=device_id,
            broker_url=broker,
            profile=device_profile,
            state_dir=state_dir,
            model_path=default_model,
            model_version=model_version,
            extra_models=extra_models,
            shadow=ShadowConfig(sample_rate=shadow_rate, max_samples_per_s=shadow_max_per_s),
            http_port=http_port,
            http_max_connections=http_max_connections,
            http_timeout_s=http_timeout,
            socket_path=socket_path,
            username=username,
            password=password,
            cafile=cafile,
            certfile=certfile,
            keyfile=keyfile,
            reconnect_max_s=reconnect_max,
            update_quiet_s=update_quiet,
            supernode=supernode_config,
        )
        if bundle is not None:  # signed updates; the bundle fills in credentials not given
            config = config.with_bundle(bundle)
        agent = Agent(config)
    except FedgeError as exc:
        _fail(exc)
        return
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: agent.request_stop())
    try:
        code = agent.run()
    except FedgeError as exc:
        _fail(exc)
        return
    raise typer.Exit(code)


def _supernode_config(
    superlink: str,
    profile: DeviceProfile,
    bundle: Path | None,
    train_data: Path | None,
    state_dir: Path,
    runtime_port: int,
) -> Any:
    """The SuperNode the agent supervises (imported lazily: it is only for training devices).

    Raises:
        ConfigError: the profile does not train, or the bundle or training data is missing.
    """
    if not profile.trains:
        raise ConfigError(
            f"--superlink given, but profile {profile.name!r} does not train (trains = false): "
            "only training devices run a Flower SuperNode"
        )
    if bundle is None:
        raise ConfigError("--superlink needs --bundle (ca.crt and supernode.key)")
    if train_data is None:
        raise ConfigError("--superlink needs --train-data (a local .npz, or DIR/train.npz)")
    from edge.learning.supernode import SuperNodeConfig

    return SuperNodeConfig.from_bundle(
        superlink,
        bundle,
        train_data,
        runtime_port=runtime_port,
        log_path=state_dir / "supernode.log",
        flwr_home=state_dir / "flower",
    )


@edge_app.command("check-profile")
def check_profile(
    path: Annotated[Path, typer.Argument(help="Profile file(s) to validate.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
) -> None:
    """Validate a device profile; print it, or the field that is wrong."""
    try:
        prof = load_profile(path)
    except FedgeError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        typer.echo(prof.model_dump_json(indent=2))
    else:
        typer.echo(f"{path}: ok ({prof.name}, {prof.device_class}, {prof.hardware_id})")


def _load_predictor(model: Path, threads: int, profile: Path | None) -> Any:
    from edge.inference import Predictor

    if profile is not None:
        predictor = Predictor.from_profile(load_profile(profile))
    else:
        predictor = Predictor(num_threads=threads)
    predictor.load(model)
    return predictor


@edge_app.command()
def infer(
    model: Annotated[Path, typer.Option(help=".tflite model.")],
    input_path: Annotated[Path, typer.Option("--input", help=".npy input (float32 or int8).")],
    threads: Annotated[int, typer.Option(help="Interpreter threads.")] = 1,
    profile: Annotated[Path | None, typer.Option(help="Take threads/limits from it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Run one inference locally and print the output."""
    try:
        predictor = _load_predictor(model, threads, profile)
        try:
            x = np.load(input_path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ProfileError(f"cannot read input {input_path}: {exc}") from exc
        out = predictor.predict(x)
    except FedgeError as exc:
        _fail(exc, as_json)
        return
    version = predictor.active.version
    if as_json:
        typer.echo(json.dumps({"model_version": version, "outputs": out.tolist()}))
    else:
        typer.echo(f"model {version}: argmax={int(np.argmax(out))} outputs={out.tolist()}")


@edge_app.command()
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

    _setup_logging(log_level)
    sock_server = None
    try:
        default_model, extra_models = parse_models(model)
        if default_model is None:
            raise ConfigError("--model PATH (the default model) is required")
        predictor = ModelSet(_load_predictor(default_model, threads, profile))
        for name, path in extra_models:
            predictor.add(name, _load_predictor(path, threads, profile))
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
        _fail(exc)
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


@edge_app.command("supernode")
def supernode(
    superlink: Annotated[
        str, typer.Option(envvar="FEDGE_SUPERLINK", help="Coordinator's SuperLink HOST:PORT.")
    ],
    bundle: Annotated[
        Path,
        typer.Option(envvar="FEDGE_BUNDLE", help="Enrollment bundle (ca.crt, supernode.key)."),
    ],
    data: Annotated[
        Path,
        typer.Option(envvar="FEDGE_TRAIN_DATA", help="Local training .npz, or DIR/train.npz."),
    ],
    runtime_port: Annotated[
        int, typer.Option(help="Loopback port of the SuperNode's own runtime API.")
    ] = 9094,
    state_dir: Annotated[
        Path, typer.Option(envvar="FEDGE_STATE_DIR", help="Device state (Flower's under flower/).")
    ] = Path(".fedge/edge"),
    log_level: Annotated[str, typer.Option(envvar="FEDGE_LOG_LEVEL")] = "info",
) -> None:
    """Run this device's Flower SuperNode (TLS + key auth), restarting it if it dies."""
    from edge.learning.supernode import SuperNodeConfig, SuperNodeSupervisor

    _setup_logging(log_level)
    try:
        config = SuperNodeConfig.from_bundle(
            superlink, bundle, data, runtime_port=runtime_port, flwr_home=state_dir / "flower"
        )
        node = SuperNodeSupervisor(config)
        node.start()
    except FedgeError as exc:
        _fail(exc)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    node.stop()


@edge_app.command()
def enroll(
    api: Annotated[str, typer.Option(envvar="FEDGE_API_URL", help="Coordinator API base URL.")],
    token: Annotated[
        str,
        typer.Option(envvar="FEDGE_ENROLL_TOKEN", help="One-time enrollment token."),
    ],
    bundle: Annotated[Path, typer.Option(envvar="FEDGE_BUNDLE", help="Where to write it.")],
    cafile: Annotated[
        str | None, typer.Option(help="CA of the coordinator's HTTPS certificate.")
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace a non-empty bundle directory.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Redeem a one-time enrollment token and write this device's bundle (0600 files)."""
    from edge.enroll import enroll as redeem

    try:
        result = redeem(api, token, bundle, cafile=cafile, force=force)
    except FedgeError as exc:
        _fail(exc, as_json=as_json)
        return
    if as_json:
        typer.echo(json.dumps(result))
    else:
        typer.echo(f"enrolled {result['device_id']}: bundle in {result['bundle']}")


def main() -> None:
    """``fedge-edge`` console script: the device's commands, no cloud code."""
    edge_app(prog_name="fedge-edge")
