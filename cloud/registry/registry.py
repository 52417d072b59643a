"""The registry API: create versions with their artifacts atomically, look them up, read blobs.

Every write is one unit of work: blobs are written to the store first, rows are committed
after; if anything fails, the transaction rolls back and every blob this unit created (and
nothing else references) is deleted, so a failed command leaves no half-written version and
no orphan file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cloud.config import Settings
from cloud.db import upgrade_database
from cloud.registry.schema import (
    ArtifactRow,
    ArtifactStatus,
    ModelRow,
    VersionRow,
    VersionSource,
)
from cloud.registry.store import ArtifactStore
from shared.errors import NotDeployableError, NotFoundError, ProtocolError, RegistryError
from shared.identifiers import IDENTIFIER_PATTERN, IDENTIFIER_RE
from shared.numbers import parse_ascii_uint
from shared.precision import precision_rank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NewArtifact:
    """An artifact to add: its bytes go to the store, the rest to the database."""

    format: str
    precision: str
    data: bytes
    status: ArtifactStatus
    reason: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ArtifactInfo:
    """A stored artifact, detached from the database session."""

    id: int
    version: str
    format: str
    precision: str
    sha256: str
    bytes: int
    status: str
    reason: str | None
    metrics: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class VersionInfo:
    """A model version with lineage and artifacts, detached from the session."""

    ref: str
    model: str
    number: int
    parent: str | None
    source: str
    source_ref: str | None
    spec: dict[str, Any]
    data: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime
    artifacts: tuple[ArtifactInfo, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["created_at"] = self.created_at.isoformat()
        out["artifacts"] = [a.to_dict() for a in self.artifacts]
        out["version"] = self.ref
        return out

    def artifact(self, fmt: str, precision: str) -> ArtifactInfo:
        """The artifact of this format and precision.

        Raises:
            NotFoundError: there is none.
        """
        for art in self.artifacts:
            if art.format == fmt and art.precision == precision:
                return art
        raise NotFoundError(f"{self.ref} has no {fmt} artifact at precision {precision}")


VERSION_REF_PATTERN = rf"^{IDENTIFIER_PATTERN}(@([0-9]{{1,9}}|latest))?$"
"""A version reference, ``MODEL``, ``MODEL@N`` or ``MODEL@latest`` with ``MODEL`` an
identifier (the grammar of every id on the wire): the API schemas validate with it and
:func:`parse_ref` enforces the same model-name grammar for every other caller."""


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``name@3`` → ``("name", 3)``; ``name`` or ``name@latest`` → ``("name", None)``.

    Raises:
        NotFoundError: ``ref`` is not MODEL, MODEL@N or MODEL@latest with MODEL an
            identifier — nothing else can name a version, and nothing else reaches the
            database (PostgreSQL refuses a NUL in a text parameter, for one).
    """
    name, sep, number = ref.partition("@")
    if IDENTIFIER_RE.fullmatch(name) is None:
        raise NotFoundError(
            f"bad version reference {ref[:80]!r}: expected MODEL or MODEL@N, MODEL an "
            "identifier (letters, digits, '.', '_', '-')"
        )
    if not sep or number == "latest":
        return name, None
    try:
        # The column is a 32-bit integer on PostgreSQL.
        return name, parse_ascii_uint(number, what="version number", max_value=2**31 - 1)
    except ProtocolError as exc:  # one ASCII number grammar (docs/protocol.md N1)
        raise NotFoundError(
            f"bad version reference {ref[:80]!r}: expected MODEL@N with N a number"
        ) from exc


class _Unit:
    """One transaction plus the blobs it created."""

    def __init__(self, session: Session, store: ArtifactStore) -> None:
        self.session = session
        self.store = store
        self.created_blobs: list[str] = []

    def put(self, data: bytes) -> str:
        digest, created = self.store.put(data)
        if created:
            self.created_blobs.append(digest)
        return digest


class Registry:
    """Models, versions and artifacts in SQL; artifact bytes in a content-addressed store."""

    def __init__(self, database_url: str, store_root: Path) -> None:
        self.store = ArtifactStore(store_root)
        if database_url.startswith("sqlite:///"):
            Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        try:
            self.engine: Engine = create_engine(database_url)
            upgrade_database(self.engine)
        except SQLAlchemyError as exc:
            raise RegistryError(
                f"cannot open registry database: {exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """Open the registry the settings point at."""
        return cls(settings.resolved_database_url, settings.artifact_dir)

    def close(self) -> None:
        """Release database connections."""
        self.engine.dispose()

    @contextmanager
    def _unit(self) -> Iterator[_Unit]:
        unit = _Unit(self._sessions(), self.store)
        try:
            yield unit
            unit.session.commit()
        except BaseException:
            unit.session.rollback()
            self._remove_orphans(unit.created_blobs)
            raise
        finally:
            unit.session.close()

    def _remove_orphans(self, digests: list[str]) -> None:
        if not digests:
            return
        with self._sessions() as session:
            referenced = set(
                session.scalars(select(ArtifactRow.sha256).where(ArtifactRow.sha256.in_(digests)))
            )
        for digest in digests:
            if digest not in referenced:
                self.store.delete(digest)
                log.info("removed orphan blob %s after a failed registry write", digest[:12])

    # -- writes ---------------------------------------------------------------------------

    def create_version(
        self,
        model: str,
        *,
        spec: dict[str, Any],
        source: VersionSource,
        artifacts: list[NewArtifact],
        source_ref: str | None = None,
        parent: str | None = None,
        data: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> VersionInfo:
        """Create the next version of ``model`` (creating the model if new) with its artifacts."""
        with self._unit() as unit:
            s = unit.session
            model_row = s.scalar(select(ModelRow).where(ModelRow.name == model))
            if model_row is None:
                model_row = ModelRow(name=model)
                s.add(model_row)
                s.flush()
            parent_row = self._find(s, parent) if parent else None
            number = (
                s.scalar(
                    select(func.max(VersionRow.number)).where(VersionRow.model_id == model_row.id)
                )
                or 0
            ) + 1
            row = VersionRow(
                model=model_row,
                number=number,
                parent_id=parent_row.id if parent_row else None,
                source=str(source),
                source_ref=source_ref,
                spec=spec,
                data=data or {},
                metrics=metrics or {},
            )
            s.add(row)
            s.flush()
            self._attach(unit, row, artifacts)
            s.flush()
            info = self._info(s, row)
        log.info("registered %s (%s)", info.ref, source)
        return info

    def add_artifacts(
        self, ref: str, artifacts: list[NewArtifact], *, metrics: dict[str, Any] | None = None
    ) -> VersionInfo:
        """Add artifacts (and merge ``metrics``) into an existing version, all or nothing."""
        with self._unit() as unit:
            row = self._find(unit.session, ref)
            self._attach(unit, row, artifacts)
            if metrics:
                row.metrics = {**row.metrics, **metrics}
            unit.session.flush()
            return self._info(unit.session, row)

    def _attach(self, unit: _Unit, row: VersionRow, artifacts: list[NewArtifact]) -> None:
        existing = {(a.format, a.precision) for a in row.artifacts}
        for art in artifacts:
            if (art.format, art.precision) in existing:
                raise RegistryError(
                    f"{row.model.name}@{row.number} already has a {art.format} {art.precision} "
                    "artifact"
                )
            digest = unit.put(art.data)
            unit.session.add(
                ArtifactRow(
                    version=row,
                    format=art.format,
                    precision=art.precision,
                    sha256=digest,
                    bytes=len(art.data),
                    status=str(art.status),
                    reason=art.reason,
                    metrics=art.metrics,
                )
            )
            existing.add((art.format, art.precision))

    # -- reads ----------------------------------------------------------------------------

    def _find(self, s: Session, ref: str) -> VersionRow:
        name, number = parse_ref(ref)
        query = select(VersionRow).join(ModelRow).where(ModelRow.name == name)
        if number is None:
            query = query.order_by(VersionRow.number.desc()).limit(1)
        else:
            query = query.where(VersionRow.number == number)
        row = s.scalar(query)
        if row is None:
            raise NotFoundError(f"no model version {ref!r} in the registry")
        return row

    def _info(self, s: Session, row: VersionRow) -> VersionInfo:
        ref = f"{row.model.name}@{row.number}"
        parent = s.get(VersionRow, row.parent_id) if row.parent_id else None
        return VersionInfo(
            ref=ref,
            model=row.model.name,
            number=row.number,
            parent=f"{parent.model.name}@{parent.number}" if parent else None,
            source=row.source,
            source_ref=row.source_ref,
            spec=dict(row.spec),
            data=dict(row.data),
            metrics=dict(row.metrics),
            created_at=row.created_at,
            artifacts=tuple(
                ArtifactInfo(
                    id=a.id,
                    version=ref,
                    format=a.format,
                    precision=a.precision,
                    sha256=a.sha256,
                    bytes=a.bytes,
                    status=a.status,
                    reason=a.reason,
                    metrics=dict(a.metrics),
                )
                for a in row.artifacts
            ),
        )

    def get_version(self, ref: str) -> VersionInfo:
        """Look up ``MODEL@N`` (or ``MODEL`` for its latest version).

        Raises:
            NotFoundError: no such model or version.
        """
        with self._sessions() as s:
            return self._info(s, self._find(s, ref))

    def list_versions(self, model: str | None = None) -> list[VersionInfo]:
        """All versions, oldest first, optionally of one model."""
        with self._sessions() as s:
            query = select(VersionRow).join(ModelRow).order_by(ModelRow.name, VersionRow.number)
            if model:
                query = query.where(ModelRow.name == model)
            return [self._info(s, row) for row in s.scalars(query)]

    def read_artifact(self, artifact: ArtifactInfo) -> bytes:
        """The bytes of an artifact, digest-checked."""
        return self.store.get(artifact.sha256)

    def deployable_artifact(self, ref: str, precision: str | None = None) -> ArtifactInfo:
        """The approved TFLite artifact to deploy for a version: the requested precision, or
        the preferred approved one (int8, then dynamic-int8, float16, float32).

        Raises:
            NotDeployableError: the requested artifact is rejected, or none is approved.
        """
        version = self.get_version(ref)
        tflite = [a for a in version.artifacts if a.format == "tflite"]
        if precision is not None:
            tflite = [a for a in tflite if a.precision == precision]
            if not tflite:
                raise NotFoundError(f"{version.ref} has no {precision} TFLite artifact")
        approved = [a for a in tflite if a.status == ArtifactStatus.APPROVED]
        if not approved:
            reasons = "; ".join(f"{a.precision}: {a.reason}" for a in tflite) or "none quantized"
            raise NotDeployableError(f"{version.ref} has no deployable TFLite artifact ({reasons})")
        # The preferred precision first (int8 → dynamic-int8 → float16 → float32).
        return min(approved, key=lambda a: (precision_rank(a.precision), a.bytes))
