"""The edge agent's settings: :class:`AgentConfig`, what :class:`~edge.agent.Agent` runs from.

The CLI builds it from flags and ``FEDGE_*`` variables; :meth:`AgentConfig.with_bundle`
fills in what a device enrollment bundle supplies (broker credentials, TLS files) and
turns on signed model updates.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.inference import ShadowConfig
from edge.keystore import load_device_keys
from shared.profiles import DeviceProfile

if TYPE_CHECKING:  # imported lazily at run time: agents that do not train skip it
    from edge.learning.supernode import SuperNodeConfig

__all__ = ["AgentConfig"]


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to run (built by the CLI from flags and FEDGE_* vars)."""

    device_id: str
    broker_url: str
    profile: DeviceProfile
    state_dir: Path
    model_path: Path | None = None
    model_version: str | None = None
    http_port: int | None = None
    http_max_connections: int = 32  # local API: connections past it get 503 at once
    http_timeout_s: float = 10.0  # local API: seconds to deliver each whole request
    socket_path: Path | None = None  # local Unix-socket inference API (binary frames)
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    keepalive_s: int = 30
    max_inflight: int = 20
    outbox_max_messages: int = 10_000
    bundle_dir: Path | None = None  # device enrollment bundle: enables signed model updates
    update_quiet_s: float = 2.0  # seconds without a chunk before asking for missing ones
    supernode: SuperNodeConfig | None = None  # Flower SuperNode to supervise (trains only)
    extra_models: tuple[tuple[str, Path], ...] = ()  # (name, .tflite) served beside the default
    shadow: ShadowConfig = dataclasses.field(default_factory=ShadowConfig)
    trial_budget_s: float = 2.0  # wall time to time one variant (§15)

    def with_bundle(self, bundle_dir: Path) -> AgentConfig:
        """This config with signed model updates from the device's enrollment bundle.

        What ``fedge edge run --bundle`` does: the bundle also supplies the broker username
        and password and the TLS files (CA, client certificate and key) not set here.

        Raises:
            ConfigError: the bundle is unreadable or incomplete.
        """
        keys = load_device_keys(bundle_dir)
        return dataclasses.replace(
            self,
            username=self.username if self.username is not None else keys.broker_username,
            password=self.password if self.password is not None else keys.broker_password,
            cafile=self.cafile or str(keys.ca_file),
            certfile=self.certfile or str(keys.client_cert),
            keyfile=self.keyfile or str(keys.client_key),
            bundle_dir=bundle_dir,
        )
