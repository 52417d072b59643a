"""Shared fixtures: the tiny scenario file and variants of it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

TINY = Path(__file__).with_name("tiny.toml")


@pytest.fixture
def tiny_variant(tmp_path: Path) -> Callable[[str], Path]:
    """Write the tiny scenario with ``extra`` TOML appended to a section (by replacement)."""

    def make(replace_faults: str) -> Path:
        text = TINY.read_text().replace("[faults]\nchurn = 0.0\n", replace_faults)
        path = tmp_path / "variant.toml"
        path.write_text(text)
        return path

    return make
