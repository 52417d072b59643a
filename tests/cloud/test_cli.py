"""The ``fedge`` command as a user runs it: real processes, real exit codes, JSON on stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


def fedge(*args: str, home: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEDGE_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-m", "simulations.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"fedge {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def _home_files(home: Path) -> list[Path]:
    art = home / "artifacts"
    return [p for p in art.rglob("*") if p.is_file()] if art.exists() else []


def test_train_quantize_list_show_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    trained = json.loads(
        fedge("cloud", "train", "--data", "digits", "--epochs", "8", "--json", home=home).stdout
    )
    assert trained["model"] == "cnn-digits" and trained["version"] == "cnn-digits@1"
    assert 0.0 < trained["test_accuracy"] <= 1.0

    quant = json.loads(fedge("cloud", "quantize", trained["version"], "--json", home=home).stdout)
    assert quant["version"] == "cnn-digits@1"
    assert quant["float_accuracy"] == pytest.approx(trained["test_accuracy"])
    precisions = {a["precision"]: a for a in quant["artifacts"]}
    assert {"float32", "int8"} <= set(precisions)
    for art in quant["artifacts"]:
        assert {"precision", "accuracy", "bytes", "sha256", "status"} <= set(art) | set(
            art["metrics"]
        )
        assert len(art["sha256"]) == 64 and art["bytes"] > 0

    listed = json.loads(fedge("models", "list", "--json", home=home).stdout)
    assert [v["version"] for v in listed] == ["cnn-digits@1"]
    shown = json.loads(fedge("models", "show", "cnn-digits", "--json", home=home).stdout)
    assert shown["version"] == "cnn-digits@1" and shown["source"] == "trained"
    assert len(shown["artifacts"]) == len(quant["artifacts"]) + 1  # + the torch weights

    human = fedge("models", "list", home=home).stdout
    assert "cnn-digits@1" in human


def test_bad_data_file_fails_cleanly_and_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((10, 3)), y=np.zeros(10, dtype=int))
    proc = fedge("cloud", "train", "--data", str(bad), "--json", home=home, check=False)
    assert proc.returncode == 2
    assert "at least 2 classes" in proc.stderr
    assert proc.stdout == ""
    assert _home_files(home) == []
    assert json.loads(fedge("models", "list", "--json", home=home).stdout) == []


def test_unknown_version_is_a_clear_error(tmp_path: Path) -> None:
    proc = fedge("cloud", "quantize", "ghost@3", home=tmp_path / "h", check=False)
    assert proc.returncode == 2
    assert "no model version 'ghost@3'" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("cloud",),
        ("cloud", "train"),
        ("cloud", "quantize"),
        ("models",),
        ("models", "list"),
        ("models", "show"),
    ],
)
def test_every_command_has_help(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = fedge(*args, "--help", home=tmp_path)
    assert "Usage:" in proc.stdout
