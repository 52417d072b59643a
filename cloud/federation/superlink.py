"""A Flower 1.41 SuperLink as a supervised subprocess, and the ``flwr`` CLI that drives it.

Flower 1.41 serves the Fleet, Control and Runtime APIs over HTTPS on one port
(``--host``/``--port``), with ``GET /health`` for readiness. The SuperLink starts its own
SuperExec, which runs each ServerApp in a child process (``--isolation subprocess``).
Stopping walks the process tree, so the SuperExec and any ServerApp end with it.

The ``flwr`` CLI (run submission, SuperNode registration, run status) reads its SuperLink
connection from ``$FLWR_HOME/config.toml``; :class:`FlowerCli` keeps a private
``FLWR_HOME`` under the work directory so the operator's own Flower config is untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from shared.errors import ConfigError, FedgeError

log = logging.getLogger(__name__)

CONNECTION = "fedge"


class SuperLinkError(FedgeError):
    """The SuperLink did not start, died, or refused a command."""

    code = "superlink_error"


def flower_bin(name: str) -> str:
    """Path of a Flower console script, preferring the running interpreter's environment."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise ConfigError(f"{name} not found: install flwr in this environment")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """Environment for every Flower process we start.

    ``FLWR_DISABLE_UPDATE_CHECK=1``: without it each CLI call first asks PyPI for a newer
    Flower, which costs ~15 s on a machine without internet access.
    """
    env = dict(os.environ)
    # Flower's processes start their helpers (``flower-superexec``, ``flwr-serverapp``) by
    # name: put this interpreter's scripts first on PATH, or an un-activated venv fails.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(flwr_home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    return env


def stop_process_tree(proc: subprocess.Popen[Any], *, grace: float = 10.0) -> None:
    """SIGTERM ``proc`` and all its descendants, SIGKILL what is left after ``grace`` s.

    The tree is walked (not just the process group) because Flower starts its SuperExec
    with ``start_new_session=True``: a group kill would miss it and the ServerApp under it.
    """
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for member in alive:
        log.warning("process %d ignored SIGTERM; killing it", member.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=grace)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)  # reap the leader


@dataclass(frozen=True)
class SuperLinkTls:
    """PEM files of the SuperLink's server identity and the CA devices trust."""

    ca_cert: Path
    cert: Path
    key: Path


class SuperLinkProcess:
    """Start, probe and stop ``flower-superlink``.

    Args:
        workdir: Holds the log, the link state database and the private ``FLWR_HOME``.
        tls: Server certificate; ``None`` runs without TLS (tests of the plumbing only).
        host: Bind address (loopback by default: expose deliberately).
        port: HTTPS port for the Fleet, Control and Runtime APIs (default: a free one).
        node_auth: Admit only SuperNodes whose public key was registered.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        tls: SuperLinkTls | None,
        host: str = "127.0.0.1",
        port: int | None = None,
        node_auth: bool = True,
    ) -> None:
        if node_auth and tls is None:
            raise ConfigError("SuperNode authentication needs TLS (Flower refuses it without)")
        self.workdir = workdir
        self.tls = tls
        self.host = host
        self.port = port or free_port(host)
        self.node_auth = node_auth
        self.flwr_home = workdir / "flwr-home"
        self.log_path = workdir / "superlink.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """``host:port`` that SuperNodes and the ``flwr`` CLI dial."""
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        """The exact ``flower-superlink`` command line."""
        cmd = [flower_bin("flower-superlink"), "--host", self.host, "--port", str(self.port)]
        if self.tls is None:
            cmd.append("--insecure")
        else:
            cmd += ["--ssl-ca-certfile", str(self.tls.ca_cert)]
            cmd += ["--ssl-certfile", str(self.tls.cert), "--ssl-keyfile", str(self.tls.key)]
        if self.node_auth:
            cmd.append("--enable-supernode-auth")
        # The ServerApp is our installed code: never let Flower `uv sync` a FAB's deps.
        cmd += ["--isolation", "subprocess", "--disable-runtime-dependency-installation"]
        cmd += ["--database", str(self.workdir / "linkstate.db")]
        return cmd

    def start(self, *, timeout: float = 60.0) -> None:
        """Start the SuperLink and block until ``/health`` answers.

        Raises:
            SuperLinkError: it exited or did not become healthy within ``timeout``.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        log.info("starting SuperLink on %s (tls=%s)", self.address, self.tls is not None)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                self.command(),
                cwd=self.workdir,
                env=flower_env(self.flwr_home),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C on our terminal reaches us, not it
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SuperLinkError(
                    f"SuperLink exited with {self.proc.returncode}; see {self.log_path}"
                )
            if self.healthy():
                log.info("SuperLink ready on %s", self.address)
                return
            time.sleep(0.5)
        self.stop()
        raise SuperLinkError(f"SuperLink not healthy after {timeout:.0f}s; see {self.log_path}")

    def healthy(self) -> bool:
        """Whether ``GET /health`` answers 200 over the configured TLS."""
        scheme = "http" if self.tls is None else "https"
        context = None
        if self.tls is not None:
            context = ssl.create_default_context(cafile=str(self.tls.ca_cert))
        try:
            with urllib.request.urlopen(
                f"{scheme}://{self.address}/health", timeout=2, context=context
            ) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alive(self) -> bool:
        """Whether the SuperLink process is still running."""
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the SuperLink, its SuperExec and any ServerApp (idempotent)."""
        if self.proc is not None:
            log.info("stopping SuperLink on %s", self.address)
            stop_process_tree(self.proc)
            self.proc = None

    def cli(self) -> FlowerCli:
        """A ``flwr`` CLI bound to this SuperLink."""
        return FlowerCli(self.flwr_home, self.address, self.tls.ca_cert if self.tls else None)

    def __enter__(self) -> SuperLinkProcess:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class FlowerCli:
    """The ``flwr`` commands the coordinator needs, with ``--format json`` parsed.

    Args:
        flwr_home: Private Flower config directory (``config.toml`` is written here).
        address: SuperLink ``host:port``.
        ca_cert: CA to verify the SuperLink with; ``None`` for an insecure SuperLink.
    """

    def __init__(self, flwr_home: Path, address: str, ca_cert: Path | None) -> None:
        self.flwr_home = flwr_home
        flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]"]
        lines.append(f'address = "{address}"')
        if ca_cert is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{ca_cert}"')
        (flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def call(self, *args: str, timeout: float = 60.0) -> dict[str, Any]:
        """Run ``flwr ARGS --format json`` and return its JSON answer.

        Raises:
            SuperLinkError: non-zero exit or an answer without ``success``.
        """
        cmd = [flower_bin("flwr"), *args, "--format", "json"]
        done = subprocess.run(
            cmd,
            env=flower_env(self.flwr_home),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        # The JSON document is printed (indented) after any human-readable lines.
        start = done.stdout.find("\n{") + 1 if not done.stdout.startswith("{") else 0
        try:
            answer: dict[str, Any] = json.loads(done.stdout[start:])
        except json.JSONDecodeError:
            answer = {}
        if done.returncode != 0 or not answer.get("success", False):
            detail = answer.get("error-message") or done.stderr.strip()[-500:] or done.stdout
            raise SuperLinkError(f"flwr {args[0]} {args[1] if len(args) > 1 else ''}: {detail}")
        return answer

    def register_node(self, public_key: Path, *, name: str) -> int:
        """Register a SuperNode's OpenSSH public key; returns its node id."""
        answer = self.call("supernode", "register", str(public_key), CONNECTION, "--name", name)
        return int(answer["node-id"])

    def nodes(self) -> list[dict[str, Any]]:
        """Registered SuperNodes with their status (``registered``, ``online``, ...)."""
        return list(self.call("supernode", "list", CONNECTION).get("nodes", []))

    def submit(self, app_dir: Path) -> int:
        """``flwr run APP_DIR``: build the FAB, start a run; returns the run id."""
        return int(self.call("run", str(app_dir), CONNECTION)["run-id"])

    def run_status(self, run_id: int) -> str:
        """The run's status string, e.g. ``running``, ``finished:completed``."""
        runs = self.call("list", CONNECTION, "--run-id", str(run_id)).get("runs", [])
        return str(runs[0].get("status", "unknown")) if runs else "unknown"

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop a run (best effort on shutdown)."""
        try:
            self.call("stop", str(run_id), CONNECTION, timeout=20)
        except (SuperLinkError, subprocess.TimeoutExpired) as exc:
            log.warning("could not stop run %d: %s", run_id, exc)
