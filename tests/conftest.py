"""Fixtures shared by the whole suite: registries on SQLite and PostgreSQL, trained models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.models import BuiltModels, build_models

POSTGRES_URL = os.environ.get(
    "FEDGE_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test gets its own FEDGE_HOME and no stray config from the developer's shell."""
    monkeypatch.setenv("FEDGE_HOME", str(tmp_path / "fedge-home"))
    monkeypatch.delenv("FEDGE_DATABASE_URL", raising=False)
    monkeypatch.setenv("FEDGE_CONFIG", str(tmp_path / "no-such-fedge.toml"))


@pytest.fixture()
def postgres_url() -> Iterator[str]:
    """A URL into a fresh, empty schema on the PostgreSQL server; dropped afterwards.

    PostgreSQL runs on CI, so an unreachable server is a failure, not a skip; set
    FEDGE_TEST_POSTGRES=skip to skip deliberately on a machine without one.
    """
    if os.environ.get("FEDGE_TEST_POSTGRES") == "skip":
        pytest.skip("FEDGE_TEST_POSTGRES=skip")
    from sqlalchemy import create_engine, text

    schema = f"fedge_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database on each backend (a fresh PostgreSQL schema)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'registry.db'}"
    url = request.getfixturevalue("postgres_url")
    assert isinstance(url, str)
    return url


@pytest.fixture()
def registry(database_url: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A registry on each backend, with its blob store in a temporary directory."""
    from cloud.registry import Registry

    reg = Registry(database_url, tmp_path / "artifacts")
    yield reg
    reg.close()


@pytest.fixture(scope="session")
def trained_digits(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real CNN trained on sklearn digits, registered in a session-wide SQLite registry."""
    from cloud.registry import Registry
    from cloud.training import TrainConfig
    from cloud.training.workflow import TrainRequest, train_and_register

    root = tmp_path_factory.mktemp("session-registry")
    reg = Registry(f"sqlite:///{root / 'registry.db'}", root / "artifacts")
    version = train_and_register(
        reg, TrainRequest(data="digits", config=TrainConfig(epochs=15, seed=0))
    )
    yield reg, version
    reg.close()


@pytest.fixture(scope="session")
def quantized_digits(trained_digits):  # type: ignore[no-untyped-def]
    """The digits model above, converted and quantized for real (fp32 + int8 in LiteRT)."""
    from cloud.quantization import quantize_version

    reg, version = trained_digits
    report = quantize_version(reg, version.ref, max_drop=1.0)
    return reg, reg.get_version(version.ref), report


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> BuiltModels:
    """Real float and int8 CNNs (two versions) plus a model of another shape.

    Set FEDGE_TEST_MODELS_DIR to reuse a directory across runs (conversion takes ~15 s).
    """
    cached = os.environ.get("FEDGE_TEST_MODELS_DIR")
    out = Path(cached) if cached else tmp_path_factory.mktemp("tflite")
    return build_models(out)
