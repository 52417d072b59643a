"""``fedge cloud train`` on series, ``distill`` and ``fit``, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.cloud.test_cli import fedge


def test_bad_series_file_is_refused_with_its_reason_and_nothing_stored(tmp_path: Path) -> None:
    path = tmp_path / "empty_steps.npz"
    np.savez(path, x=np.zeros((10, 0, 3), np.float32), y=np.arange(10) % 2)
    proc = fedge(
        "cloud", "train", "--data", str(path), "--model", "gru", home=tmp_path, check=False
    )
    assert proc.returncode == 2
    assert "error (invalid_dataset):" in proc.stderr
    assert "T=0 time steps" in proc.stderr
    assert not (tmp_path / "artifacts").exists() or not any((tmp_path / "artifacts").rglob("*.*"))


def test_resume_needs_a_checkpoint_dir(tmp_path: Path) -> None:
    proc = fedge("cloud", "train", "--data", "digits", "--resume", home=tmp_path, check=False)
    assert proc.returncode == 2
    assert "--resume needs --checkpoint-dir" in proc.stderr


@pytest.mark.slow
def test_series_train_distill_and_fit_from_the_cli(tmp_path: Path) -> None:
    trained = json.loads(
        fedge(
            "cloud",
            "train",
            "--data",
            "aeon:ItalyPowerDemand",
            "--model",
            "gru",
            "--width",
            "8",
            "--epochs",
            "1",
            "--json",
            home=tmp_path,
        ).stdout
    )
    assert trained["input_reading"] == "sequence (T, F) = 24x1"
    student = json.loads(
        fedge(
            "cloud",
            "distill",
            trained["version"],
            "--width",
            "4",
            "--epochs",
            "1",
            "--no-quantize",
            "--json",
            home=tmp_path,
        ).stdout
    )
    assert student["parent"] == trained["version"]
    assert student["distilled_from"] == trained["version"]
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    shipped = Path(__file__).parents[2] / "firmware_configs" / "thermostat_sensor.toml"
    (profiles / "thermostat_sensor.toml").write_text(shipped.read_text())
    plans = json.loads(
        fedge(
            "cloud",
            "fit",
            student["version"],
            "--profiles",
            str(profiles),
            "--json",
            home=tmp_path,
        ).stdout
    )
    assert plans[0]["chosen"] is None
    assert "quantize first" in plans[0]["reason"]
