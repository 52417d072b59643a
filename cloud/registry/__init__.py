"""The model registry: models → versions (with lineage) → artifacts, in SQL + a blob store."""

from cloud.registry.registry import ArtifactInfo, Registry, VersionInfo
from cloud.registry.schema import ArtifactStatus, VersionSource
from cloud.registry.store import ArtifactStore

__all__ = [
    "ArtifactInfo",
    "ArtifactStatus",
    "ArtifactStore",
    "Registry",
    "VersionInfo",
    "VersionSource",
]
