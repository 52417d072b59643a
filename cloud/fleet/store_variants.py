"""Fleet store: what devices measured about model variants (``docs/protocol.md`` §15).

One row per ``(device_id, artifact_id)`` (migration 0005): a device's newest timing of one
variant replaces its older one, on both backends with the dialect's ``INSERT … ON CONFLICT
DO UPDATE``. The chooser (:mod:`cloud.deployment.variants`) reads them per hardware class
(the enrollment record's ``hardware_id``) and model version.

The hardware class is passed by the caller from the device's *enrollment record*, never
taken from the report's payload: a device cannot file its timings under another class.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sqlalchemy import func, select

from cloud.fleet._base import StoreBase
from cloud.fleet.schema import VariantMeasurementRow
from shared.identifiers import IdentifierKind, check_identifier
from shared.protocol.messages import VariantTiming

__all__ = ["VariantMeasurement", "VariantsMixin"]


@dataclass(frozen=True)
class VariantMeasurement:
    """One device's newest timing of one variant of a model version.

    Attributes:
        device_id, hardware_id: Who measured it and its hardware class.
        model_id, version, artifact_id, precision: What was timed.
        threads, runs, median_us, p99_us: How, and the result (microseconds per invoke).
        size_bytes: The variant's file size when known (ties go to the smaller file).
        cpu_features: The device's reported CPU feature flags (informational).
        measured_at: When the coordinator recorded it (Unix seconds).
    """

    device_id: str
    hardware_id: str
    model_id: str
    version: int
    artifact_id: str
    precision: str
    threads: int
    runs: int
    median_us: float
    p99_us: float
    size_bytes: int | None
    cpu_features: tuple[str, ...]
    measured_at: float


def _measurement(row: VariantMeasurementRow) -> VariantMeasurement:
    return VariantMeasurement(
        device_id=row.device_id,
        hardware_id=row.hardware_id,
        model_id=row.model_id,
        version=row.version,
        artifact_id=row.artifact_id,
        precision=row.precision,
        threads=row.threads,
        runs=row.runs,
        median_us=row.median_us,
        p99_us=row.p99_us,
        size_bytes=row.size_bytes,
        cpu_features=tuple(row.cpu_features),
        measured_at=row.measured_at,
    )


class VariantsMixin(StoreBase):
    """Fleet store: variant measurements per hardware class (a ``FleetStore`` mixin)."""

    def record_variant_timings(
        self,
        device_id: str,
        *,
        hardware_id: str,
        timings: Iterable[VariantTiming],
        cpu_features: Iterable[str] = (),
        sizes: Mapping[str, int] | None = None,
        now: float,
    ) -> int:
        """Store a device's timings (newest per artifact wins); returns how many were given.

        Args:
            device_id: The device, as attributed by its topic.
            hardware_id: Its class, from its enrollment record (not from the payload).
            timings: ``StatusMessage.variants.timings``.
            cpu_features: ``StatusMessage.variants.cpu_features``.
            sizes: Artifact id → file size, when the caller knows it.
            now: Unix seconds.

        Raises:
            InvalidIdentifierError: ``device_id`` or ``hardware_id`` is not an identifier.
            RegistryError: a database failure.
        """
        check_identifier(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        features = sorted(set(cpu_features))
        rows = [
            {
                "device_id": device_id,
                "hardware_id": hardware_id,
                "model_id": t.model_id,
                "version": t.version,
                "artifact_id": t.artifact_id,
                "precision": str(t.precision),
                "threads": t.threads,
                "runs": t.runs,
                "median_us": float(t.median_us),
                "p99_us": float(t.p99_us),
                "size_bytes": (sizes or {}).get(t.artifact_id),
                "cpu_features": features,
                "measured_at": float(now),
            }
            for t in timings
        ]
        if not rows:
            return 0
        with self._tx() as session:
            stmt = self._insert(session)(VariantMeasurementRow.__table__)
            replace = {
                name: stmt.excluded[name]
                for name in rows[0]
                if name not in ("device_id", "artifact_id")
            }
            # A known size is never forgotten by a later report that lacks it.
            table = VariantMeasurementRow.__table__
            replace["size_bytes"] = func.coalesce(stmt.excluded.size_bytes, table.c.size_bytes)
            session.connection().execute(
                stmt.on_conflict_do_update(
                    index_elements=["device_id", "artifact_id"], set_=replace
                ),
                rows,
            )
        return len(rows)

    def variant_measurements(
        self, hardware_id: str, model_id: str, version: int | None = None
    ) -> list[VariantMeasurement]:
        """The measurements of a hardware class for a model (one version, or all).

        Ordered by version, precision, device id.
        """
        query = select(VariantMeasurementRow).where(
            VariantMeasurementRow.hardware_id == hardware_id,
            VariantMeasurementRow.model_id == model_id,
        )
        if version is not None:
            query = query.where(VariantMeasurementRow.version == version)
        query = query.order_by(
            VariantMeasurementRow.version,
            VariantMeasurementRow.precision,
            VariantMeasurementRow.device_id,
        )
        with self._tx() as session:
            return [_measurement(r) for r in session.scalars(query)]
