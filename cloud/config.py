"""Cloud settings: defaults < ``fedge.toml`` (or ``$FEDGE_CONFIG``) < ``FEDGE_*`` environment.

``FEDGE_HOME`` (default ``./.fedge``, next to the project like ``.git``) holds the registry
database (SQLite by default), the content-addressed artifact store and the keys.
``FEDGE_DATABASE_URL`` points the registry at PostgreSQL instead, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/fedge``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)


def _config_file() -> Path:
    return Path(os.environ.get("FEDGE_CONFIG", "fedge.toml"))


class Settings(BaseSettings):
    """Where the coordinator keeps its state and how it behaves by default."""

    model_config = SettingsConfigDict(env_prefix="FEDGE_", extra="ignore")

    home: Path = Field(default=Path(".fedge"), description="State directory (FEDGE_HOME).")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in FEDGE_HOME."
    )
    max_accuracy_drop: float = Field(
        default=1.0, ge=0.0, description="Accuracy budget in percentage points for quantization."
    )
    # Off by default: /metrics tells the fleet's size, versions and activity, so only a
    # deployment whose port is protected otherwise (network policy, proxy) should open it.
    metrics_public: bool = Field(
        default=False,
        description="Serve /metrics without a bearer token (FEDGE_METRICS_PUBLIC).",
    )

    @property
    def resolved_database_url(self) -> str:
        """The database URL in force: ``database_url`` or the SQLite file in ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'registry.db').resolve()}"

    @property
    def artifact_dir(self) -> Path:
        """Root of the content-addressed artifact store."""
        return self.home / "artifacts"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments win, then the environment, then the TOML file.
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls, toml_file=_config_file()),
        )
