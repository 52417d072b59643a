"""Fleet store: devices, their labels and their enrollment records."""

from __future__ import annotations

import time
from collections.abc import Iterable

from sqlalchemy import delete, exists, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.device_records import DeviceRecord
from cloud.fleet._base import StoreBase, _device, _labels, _limit
from cloud.fleet.records import Device, Page
from cloud.fleet.schema import DeviceLabelRow, DeviceRow
from shared.errors import ConfigError, RegistryError
from shared.identifiers import IdentifierKind, check_identifier, check_new_name

_GROUP = "group"
_TAG = "tag"


class DevicesMixin(StoreBase):
    """Fleet store: devices, their labels and their enrollment records (a ``FleetStore`` mixin)."""

    def add_device(
        self,
        device_id: str,
        *,
        hardware_id: str,
        profile: str | None,
        groups: Iterable[str] = (),
        tags: Iterable[str] = (),
        enrolled_at: float,
    ) -> Device:
        """Record an enrolled device (``ConfigError`` code ``already_enrolled`` if present)."""
        check_new_name(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        group_list = _labels(groups, IdentifierKind.GROUP)
        tag_list = _labels(tags, IdentifierKind.TAG)
        already = ConfigError(f"device {device_id!r} is already enrolled", code="already_enrolled")
        try:
            with self._tx() as session:
                if session.get(DeviceRow, device_id) is not None:
                    raise already
                row = DeviceRow(
                    id=device_id,
                    profile=profile,
                    hardware_id=hardware_id,
                    groups=group_list,
                    tags=tag_list,
                    broker_identity=device_id,
                    enrolled_at=float(enrolled_at),
                )
                session.add(row)
                session.flush()
                self._write_labels(session, device_id, group_list, tag_list)
                return _device(row)
        except RegistryError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # a concurrent enrollment won
                raise already from exc
            raise

    @staticmethod
    def _write_labels(
        session: Session, device_id: str, groups: list[str] | None, tags: list[str] | None
    ) -> None:
        for kind, values in ((_GROUP, groups), (_TAG, tags)):
            if values is None:
                continue
            session.execute(
                delete(DeviceLabelRow).where(
                    DeviceLabelRow.device_id == device_id, DeviceLabelRow.kind == kind
                )
            )
            session.add_all(DeviceLabelRow(device_id=device_id, kind=kind, value=v) for v in values)
        session.flush()

    def get_device(self, device_id: str) -> Device:
        """One device with its latest state (``NotFoundError``)."""
        with self._tx() as session:
            return _device(self._device_row(session, device_id))

    def list_devices(
        self,
        *,
        group: str | None = None,
        tag: str | None = None,
        profile: str | None = None,
        online: bool | None = None,
        model_version: str | None = None,
        revoked: bool | None = False,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Page[Device]:
        """Devices ordered by id, after ``cursor`` (the last id of the previous page)."""
        size = _limit(limit)
        query = select(DeviceRow)
        for kind, value, ikind in (
            (_GROUP, group, IdentifierKind.GROUP),
            (_TAG, tag, IdentifierKind.TAG),
        ):
            if value is not None:
                check_identifier(value, ikind)
                query = query.where(
                    exists().where(
                        DeviceLabelRow.device_id == DeviceRow.id,
                        DeviceLabelRow.kind == kind,
                        DeviceLabelRow.value == value,
                    )
                )
        if profile is not None:
            query = query.where(DeviceRow.profile == profile)
        if online is True:
            query = query.where(DeviceRow.online.is_(True))
        elif online is False:
            query = query.where(or_(DeviceRow.online.is_(False), DeviceRow.online.is_(None)))
        if model_version is not None:
            query = query.where(DeviceRow.model_version == model_version)
        if revoked is True:
            query = query.where(DeviceRow.revoked_at.is_not(None))
        elif revoked is False:
            query = query.where(DeviceRow.revoked_at.is_(None))
        if cursor is not None:
            if not isinstance(cursor, str) or not cursor:
                raise ConfigError(f"invalid cursor {cursor!r}", code="invalid_cursor")
            query = query.where(DeviceRow.id > cursor)
        query = query.order_by(DeviceRow.id).limit(size + 1)
        with self._tx() as session:
            rows = list(session.scalars(query))
        more = len(rows) > size
        items = [_device(r) for r in rows[:size]]
        return Page(items=items, next_cursor=items[-1].device_id if more else None)

    def set_labels(
        self, device_id: str, *, groups: Iterable[str] | None, tags: Iterable[str] | None
    ) -> Device:
        """Replace a device's groups and/or tags (None: leave as is)."""
        group_list = None if groups is None else _labels(groups, IdentifierKind.GROUP)
        tag_list = None if tags is None else _labels(tags, IdentifierKind.TAG)
        with self._tx() as session:
            row = self._device_row(session, device_id)
            if group_list is not None:
                row.groups = group_list
            if tag_list is not None:
                row.tags = tag_list
            self._write_labels(session, device_id, group_list, tag_list)
            return _device(row)

    def mark_revoked(self, device_id: str, *, at: float) -> Device:
        """Mark revoked (idempotent)."""
        with self._tx() as session:
            row = self._device_row(session, device_id)
            if row.revoked_at is None:
                row.revoked_at = float(at)
            return _device(row)

    def _put_record(
        self,
        session: Session,
        record: DeviceRecord,
        *,
        new: bool,
        profile: str | None,
        tags: list[str] | None,
        now: float,
    ) -> None:
        check_new_name(record.device_id, IdentifierKind.DEVICE)
        check_identifier(record.hardware_id, IdentifierKind.HARDWARE)
        groups = _labels(record.groups, IdentifierKind.GROUP)
        row = session.get(DeviceRow, record.device_id)
        if row is None:
            row = DeviceRow(
                id=record.device_id,
                profile=profile,
                hardware_id=record.hardware_id,
                groups=groups,
                tags=tags or [],
                broker_identity=record.device_id,
                enrolled_at=float(record.enrolled_at),
            )
            session.add(row)
            session.flush()
            tags = tags or []
        else:
            if new and row.box_public is not None:
                raise ConfigError(
                    f"device {record.device_id!r} is already enrolled", code="already_enrolled"
                )
            row.hardware_id = record.hardware_id
            row.groups = groups
            row.enrolled_at = float(record.enrolled_at)
            if profile is not None:
                row.profile = profile
            if tags is not None:
                row.tags = tags
        row.box_public = record.box_public
        row.signing_public = record.signing_public
        row.password_hash = record.password_hash
        row.tls_serial = record.tls_serial
        row.supernode_public = record.supernode_public
        if record.revoked and row.revoked_at is None:  # a revoked device stays revoked
            row.revoked_at = float(now)
        self._write_labels(session, record.device_id, groups, tags)

    def put_enrollment_record(
        self,
        record: DeviceRecord,
        *,
        new: bool = False,
        profile: str | None = None,
        tags: Iterable[str] | None = None,
        now: float | None = None,
    ) -> None:
        """Store a device's enrollment record: public keys, the broker password's hash,
        the TLS certificate serial, groups, the revoked flag (a ``DeviceRecord`` has no
        private field; none is ever stored).

        A missing device row is created (with ``profile`` and ``tags``); an existing one
        gets the record's fields (``profile``/``tags`` only when given). A revoked record
        sets ``revoked_at`` (to ``now``, default the current time) unless already set; a
        revoked device is never un-revoked.

        Args:
            new: a fresh enrollment: ``ConfigError`` code ``already_enrolled`` if the device
                already has a record (a row without one is completed).
        """
        tag_list = None if tags is None else _labels(tags, IdentifierKind.TAG)
        at = time.time() if now is None else now
        already = ConfigError(
            f"device {record.device_id!r} is already enrolled", code="already_enrolled"
        )
        try:
            with self._tx() as session:
                self._put_record(session, record, new=new, profile=profile, tags=tag_list, now=at)
        except RegistryError as exc:
            if new and isinstance(exc.__cause__, IntegrityError):  # a concurrent enrollment
                raise already from exc
            raise

    def put_enrollment_records(
        self, records: Iterable[DeviceRecord], *, now: float | None = None
    ) -> int:
        """Insert or replace many records in one transaction (an import: all or nothing;
        idempotent). Returns how many were stored."""
        at = time.time() if now is None else now
        count = 0
        with self._tx() as session:
            for record in records:
                self._put_record(session, record, new=False, profile=None, tags=None, now=at)
                count += 1
        return count

    def enrollment_records(self) -> dict[str, DeviceRecord]:
        """Every device's enrollment record by id, revoked ones included (rows without a
        record — ``add_device`` alone — are left out)."""
        with self._tx() as session:
            rows = session.scalars(
                select(DeviceRow).where(DeviceRow.box_public.is_not(None)).order_by(DeviceRow.id)
            )
            return {
                row.id: DeviceRecord(
                    device_id=row.id,
                    hardware_id=row.hardware_id,
                    groups=list(row.groups or []),
                    box_public=row.box_public or "",
                    signing_public=row.signing_public or "",
                    password_hash=row.password_hash or "",
                    enrolled_at=int(row.enrolled_at),
                    revoked=row.revoked_at is not None,
                    supernode_public=row.supernode_public or "",
                    tls_serial=row.tls_serial or "",
                )
                for row in rows
            }
