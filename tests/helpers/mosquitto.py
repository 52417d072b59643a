"""A real Mosquitto broker for tests, on a free loopback port with a generated config.

Reusable beyond plain TCP: ``conf_extra`` is appended to the generated ``mosquitto.conf``
(TLS ``cafile``/``certfile``/``keyfile``, ``password_file``, ``acl_file``, ...), and
``allow_anonymous=False`` turns anonymous access off. ``restart()`` keeps the same port so
clients can reconnect to it.

    with MosquittoBroker() as broker:
        client.connect(broker.host, broker.port)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from tempfile import mkdtemp

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MosquittoBroker:
    """One ``mosquitto`` process.

    Args:
        conf_extra: Extra config lines appended to the listener block.
        port: Port to listen on (a free one by default).
        allow_anonymous: Whether clients may connect without credentials.
        workdir: Where config and log go (a fresh temporary directory by default).
    """

    def __init__(
        self,
        conf_extra: str = "",
        port: int | None = None,
        *,
        allow_anonymous: bool = True,
        workdir: Path | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = workdir or Path(mkdtemp(prefix="fedge-mosquitto-"))
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        self.conf_path.write_text(
            "\n".join(
                [
                    "persistence false",
                    f"log_dest file {self.log_path}",
                    "log_type error",
                    "log_type warning",
                    "log_type notice",
                    f"listener {self.port} {self.host}",
                    f"allow_anonymous {'true' if allow_anonymous else 'false'}",
                    conf_extra,
                    "",
                ]
            )
        )
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``."""
        return f"mqtt://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until its port accepts connections."""
        self._proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.conf_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise RuntimeError(f"mosquitto exited ({self._proc.returncode}): {err}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout}s")

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after 5 s)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
