"""Keys for sealed, signed updates: from the real key home, or a throw-away fleet in simulation.

Robust strategies (trimmed mean, median) see every update, so the guard insists on updates
sealed to the coordinator and signed by enrolled devices (``shared.crypto.sealed_update``).
On a real fleet the keys are the ones ``fedge keys enroll-device`` issued; a simulation
enrolls its virtual devices (``sim-<partition>``) in a temporary key home so exactly the
same code path runs.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

from cloud.federation.guard import UpdateKeys
from cloud.keys import KeyHome
from shared.crypto import VerifyKey

log = logging.getLogger(__name__)

__all__ = ["SIMULATED_DEVICE_PREFIX", "enroll_simulated_devices", "update_keys_from_home"]

SIMULATED_DEVICE_PREFIX = "sim-"


def update_keys_from_home(home: KeyHome) -> UpdateKeys:
    """The coordinator's box key and every enrolled, non-revoked device's signing key."""
    devices = {
        device_id: VerifyKey.from_bytes(base64.b64decode(record.signing_public))
        for device_id, record in home.fleet().items()
        if not record.revoked
    }
    return UpdateKeys(coordinator=home.coordinator_box(), devices=devices)


def enroll_simulated_devices(directory: Path, count: int) -> tuple[UpdateKeys, Path]:
    """Create a key home in ``directory`` with ``count`` virtual devices.

    Returns:
        The guard's keys and the directory holding one bundle per device
        (``<root>/sim-<i>``, which the simulation's ClientApp finds by partition id).
    """
    home = KeyHome(directory)
    home.init()
    for i in range(count):
        home.enroll_device(f"{SIMULATED_DEVICE_PREFIX}{i}", hardware_id="simulated")
    log.info("enrolled %d simulated devices in %s", count, directory)
    return update_keys_from_home(home), directory / "devices"
