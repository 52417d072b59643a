"""The device's Flower SuperNode: started, watched and restarted by the edge agent.

A SuperNode is the device's endpoint in Flower's Deployment Engine: it dials the
coordinator's SuperLink over TLS (verified with the ``ca.crt`` of the enrollment bundle),
authenticates with the bundle's ``supernode.key`` (P-384, OpenSSH format, registered on the
SuperLink at enrollment), and runs the ClientApp the run names against the device's local
data (``node_config data-path``). Data never leaves the device; only compressed updates do.

:class:`SuperNodeSupervisor` keeps exactly one ``flower-supernode`` process alive: if it
exits it is restarted after an exponential backoff (reset once a process has stayed up),
and :meth:`~SuperNodeSupervisor.stop` ends its whole process tree (SuperExec + ClientApp).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from shared.errors import ConfigError

__all__ = ["SuperNodeConfig", "SuperNodeSupervisor", "resolve_data_path"]

log = logging.getLogger(__name__)

#: Bundle files the SuperNode needs (written by ``fedge keys enroll``).
CA_FILE = "ca.crt"
AUTH_KEY_FILE = "supernode.key"


def resolve_data_path(data: Path) -> Path:
    """The device's training ``.npz``: the file itself, or ``DIR/train.npz``.

    Raises:
        ConfigError: nothing to train on at ``data``.
    """
    path = data / "train.npz" if data.is_dir() else data
    if not path.is_file():
        raise ConfigError(f"no local training data at {path} (an .npz with x and y)")
    return path


@dataclass(frozen=True)
class SuperNodeConfig:
    """How to run this device's SuperNode.

    Attributes:
        superlink: The coordinator's SuperLink ``host:port``.
        data_path: Local training ``.npz`` (passed to the ClientApp as ``data-path``).
        ca_file: CA that signed the SuperLink's certificate; ``None`` only with ``insecure``.
        auth_key: SuperNode private key; ``None`` when the SuperLink does not authenticate.
        insecure: Plaintext to the SuperLink (loopback experiments only).
        runtime_port: Loopback port of the SuperNode's own Runtime API (its ClientApp
            process connects there); distinct per SuperNode on one host.
        node_config: Extra ``key=value`` entries for the ClientApp (e.g. ``partition-id``).
        log_path: Where the SuperNode's output goes (default: discarded).
        flwr_home: Flower's state directory (``FLWR_HOME``: installed app bundles); by
            default Flower uses ``~/.flwr``, shared by everything on the device.
        backoff_initial, backoff_max: Restart delays in seconds (doubling).
        stable_after: Seconds up after which a process counts as healthy (backoff reset).
    """

    superlink: str
    data_path: Path
    ca_file: Path | None = None
    auth_key: Path | None = None
    insecure: bool = False
    runtime_port: int = 9094
    node_config: tuple[tuple[str, str | int], ...] = ()
    log_path: Path | None = None
    flwr_home: Path | None = None
    backoff_initial: float = 1.0
    backoff_max: float = 60.0
    stable_after: float = 30.0

    @classmethod
    def from_bundle(
        cls, superlink: str, bundle: Path, data: Path, **kwargs: object
    ) -> SuperNodeConfig:
        """Take the CA and auth key from an enrollment bundle directory.

        Raises:
            ConfigError: the bundle lacks ``ca.crt`` or ``supernode.key``, or no data.
        """
        ca, key = bundle / CA_FILE, bundle / AUTH_KEY_FILE
        for required in (ca, key):
            if not required.is_file():
                raise ConfigError(f"enrollment bundle lacks {required.name} ({bundle})")
        return cls(
            superlink=superlink,
            data_path=resolve_data_path(data),
            ca_file=ca,
            auth_key=key,
            **kwargs,  # type: ignore[arg-type]
        )

    def command(self) -> list[str]:
        """The exact ``flower-supernode`` command line."""
        exe = Path(sys.executable).parent / "flower-supernode"
        binary = str(exe) if exe.exists() else shutil.which("flower-supernode")
        if binary is None:
            raise ConfigError("flower-supernode not found: install flwr on this device")
        cmd = [binary, "--superlink", self.superlink]
        if self.insecure:
            cmd.append("--insecure")
        elif self.ca_file is not None:
            cmd += ["--root-certificates", str(self.ca_file)]
        else:
            raise ConfigError("a SuperNode needs the CA file (or insecure=True)")
        if self.auth_key is not None:
            cmd += ["--auth-supernode-private-key", str(self.auth_key)]
        entries = [f'data-path="{self.data_path.resolve()}"']
        for key, value in self.node_config:
            entries.append(f"{key}={value}" if isinstance(value, int) else f'{key}="{value}"')
        cmd += ["--node-config", " ".join(entries)]
        cmd += ["--isolation", "subprocess", "--host", "127.0.0.1"]
        cmd += ["--port", str(self.runtime_port)]
        return cmd


def _load_prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux (looked up before any fork), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child: get SIGTERM when the supervising agent dies, even by SIGKILL,
    so a killed agent never leaves an orphan SuperNode training on the device."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


class SuperNodeSupervisor:
    """Keeps one SuperNode process running until :meth:`stop`.

    Args:
        config: What to run.
        env: Extra environment (``FLWR_HOME`` etc.); the update check is always disabled.
    """

    def __init__(self, config: SuperNodeConfig, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        # No update check: it asks PyPI first and stalls ~15 s on an offline device.
        self.env = {**os.environ, "FLWR_DISABLE_UPDATE_CHECK": "1", **(env or {})}
        # The SuperNode starts ``flwr-clientapp`` by name: this interpreter's scripts first.
        self.env["PATH"] = os.pathsep.join(
            [str(Path(sys.executable).parent), self.env.get("PATH", "")]
        )
        if config.flwr_home is not None:
            config.flwr_home.mkdir(parents=True, exist_ok=True)
            self.env["FLWR_HOME"] = str(config.flwr_home)
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        """PID of the current SuperNode process, if one is running."""
        with self._lock:
            return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start supervising in a daemon thread (returns at once)."""
        if self._thread is not None:
            return
        self.config.command()  # fail fast on a bad config, in the caller's thread
        self._thread = threading.Thread(target=self._loop, name="supernode", daemon=True)
        self._thread.start()

    def _spawn(self) -> subprocess.Popen[bytes]:
        log_path = self.config.log_path
        out = log_path.open("ab") if log_path is not None else subprocess.DEVNULL
        try:
            return subprocess.Popen(
                self.config.command(),
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # signals to the agent's terminal do not reach it
                preexec_fn=_die_with_parent,
            )
        finally:
            if log_path is not None:
                out.close()  # type: ignore[union-attr]

    def _loop(self) -> None:
        delay = self.config.backoff_initial
        while not self._stop.is_set():
            with self._lock:
                if self._stop.is_set():
                    return
                proc = self._proc = self._spawn()
            log.info("SuperNode started (pid %d) for %s", proc.pid, self.config.superlink)
            up = self._wait(proc)
            if self._stop.is_set():
                return
            _reap(proc)
            self.restarts += 1
            # A process that stayed up long enough was healthy: retry quickly next time.
            delay = self.config.backoff_initial if up else min(delay * 2, self.config.backoff_max)
            log.warning(
                "SuperNode exited with %s; restart %d in %.1fs",
                proc.returncode,
                self.restarts,
                delay,
            )
            self._stop.wait(delay)

    def _wait(self, proc: subprocess.Popen[bytes]) -> bool:
        """Block until ``proc`` exits or stop is asked; return whether it ran stably."""
        waited = 0.0
        while proc.poll() is None and not self._stop.is_set():
            self._stop.wait(0.5)
            waited += 0.5
        return waited >= self.config.stable_after

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and end the SuperNode's process tree."""
        self._stop.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _stop_tree(proc, timeout)
        if self._thread is not None:
            self._thread.join(timeout)
        log.info("SuperNode stopped after %d restarts", self.restarts)

    def __enter__(self) -> SuperNodeSupervisor:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def _stop_tree(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the SuperNode and its descendants (Flower shuts down cleanly), then SIGKILL.

    The tree is walked because Flower starts the SuperExec in its own session, out of
    reach of a process-group signal.
    """
    try:
        root = psutil.Process(proc.pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.terminate()
    _, alive = psutil.wait_procs(tree, timeout=timeout)
    for member in alive:
        log.warning("SuperNode process %d ignored SIGTERM", member.pid)
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=timeout)
    _reap(proc)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    """Collect a dead SuperNode. Its SuperExec exits by itself: Flower passes it
    ``--parent-pid`` and it watches that process."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
