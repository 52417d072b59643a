"""Fixtures for edge tests: real .tflite models, a real Mosquitto, a test profile."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.profiles import DeviceProfile
from tests.helpers.mosquitto import MosquittoBroker

TEST_PROFILE_TOML = """
name = "test-device"
description = "Fast-telemetry profile for integration tests."
device_class = "sensor"
hardware_id = "test-hw-1"
inference_threads = 1
ram_mb = 256
storage_mb = 64
max_model_bytes = 4_000_000
precisions = ["int8", "float32"]
telemetry_interval_s = {interval}
groups = ["test-group"]
"""


@pytest.fixture()
def broker() -> Iterator[MosquittoBroker]:
    """A fresh Mosquitto on a free loopback port (anonymous; TLS/ACL come in issue 4)."""
    with MosquittoBroker() as b:
        yield b


def write_profile(directory: Path, interval: float = 0.3) -> Path:
    """Write the test profile with the given telemetry interval; return its path."""
    path = directory / "test_profile.toml"
    path.write_text(TEST_PROFILE_TOML.format(interval=interval))
    return path


@pytest.fixture()
def profile_path(tmp_path: Path) -> Path:
    """The test profile on disk (telemetry every 0.3 s)."""
    return write_profile(tmp_path)


@pytest.fixture()
def profile(profile_path: Path) -> DeviceProfile:
    """The test profile, validated."""
    from edge.cli import load_profile

    return load_profile(profile_path)
