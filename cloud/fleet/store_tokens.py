"""Fleet store: one-time enrollment tokens and API bearer tokens."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable

from sqlalchemy import select, update

from cloud.fleet._base import StoreBase, _api_token, _enrollment, _labels
from cloud.fleet.records import ApiToken, EnrollmentToken, Role
from cloud.fleet.schema import ApiTokenRow, EnrollmentTokenRow
from shared.errors import ConfigError, InvalidTokenError, NotFoundError
from shared.identifiers import IdentifierKind, check_identifier, check_new_name


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class TokensMixin(StoreBase):
    """Fleet store: one-time enrollment tokens and API bearer tokens (a ``FleetStore`` mixin)."""

    def create_enrollment_token(
        self,
        device_id: str,
        *,
        hardware_id: str,
        profile: str | None,
        groups: Iterable[str] = (),
        tags: Iterable[str] = (),
        ttl_s: float,
        now: float,
    ) -> tuple[str, EnrollmentToken]:
        """A new one-time token for ``device_id``; returns (the secret, shown once; record)."""
        check_new_name(device_id, IdentifierKind.DEVICE)
        check_identifier(hardware_id, IdentifierKind.HARDWARE)
        group_list = _labels(groups, IdentifierKind.GROUP)
        tag_list = _labels(tags, IdentifierKind.TAG)
        if not ttl_s > 0:
            raise ConfigError(f"ttl_s must be positive, not {ttl_s!r}", code="invalid_argument")
        secret = secrets.token_urlsafe(32)
        row = EnrollmentTokenRow(
            token_id=uuid.uuid4().hex,
            token_sha256=_hash(secret),
            device_id=device_id,
            profile=profile,
            hardware_id=hardware_id,
            groups=group_list,
            tags=tag_list,
            created_at=float(now),
            expires_at=float(now) + float(ttl_s),
        )
        with self._tx() as session:
            session.add(row)
            session.flush()
            return secret, _enrollment(row)

    def redeem_enrollment_token(self, secret: str, *, now: float) -> EnrollmentToken:
        """Mark the token used, atomically (two redeemers: one wins).

        Raises:
            InvalidTokenError (a ``SecurityError``; codes ``invalid_token`` — unknown,
            ``token_used``, ``token_expired``).
        """
        if not isinstance(secret, str) or not secret:
            raise InvalidTokenError("unknown enrollment token", code="invalid_token")
        digest = _hash(secret)
        with self._tx() as session:
            result = session.execute(
                update(EnrollmentTokenRow)
                .where(
                    EnrollmentTokenRow.token_sha256 == digest,
                    EnrollmentTokenRow.used_at.is_(None),
                    EnrollmentTokenRow.expires_at > float(now),
                )
                .values(used_at=float(now))
                .execution_options(synchronize_session=False)
            )
            won = getattr(result, "rowcount", 0) == 1
            row = session.scalars(
                select(EnrollmentTokenRow).where(EnrollmentTokenRow.token_sha256 == digest)
            ).one_or_none()
            if row is None or not hmac.compare_digest(row.token_sha256, digest):
                raise InvalidTokenError("unknown enrollment token", code="invalid_token")
            session.refresh(row)
            if won:
                return _enrollment(row)
            if row.used_at is not None:
                raise InvalidTokenError(
                    f"enrollment token {row.token_id} was already used", code="token_used"
                )
            raise InvalidTokenError(
                f"enrollment token {row.token_id} has expired", code="token_expired"
            )

    def create_api_token(self, role: Role, *, name: str, now: float) -> tuple[str, ApiToken]:
        """A new bearer token; returns (the secret, shown once; record)."""
        try:
            role = Role(role)
        except ValueError as exc:
            raise ConfigError(
                f"unknown role {role!r}: use one of {', '.join(r.value for r in Role)}",
                code="invalid_argument",
            ) from exc
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise ConfigError("a token name must be 1-200 characters", code="invalid_argument")
        secret = secrets.token_urlsafe(32)
        row = ApiTokenRow(
            token_id=uuid.uuid4().hex,
            token_sha256=_hash(secret),
            role=role.value,
            name=name,
            created_at=float(now),
        )
        with self._tx() as session:
            session.add(row)
            session.flush()
            return secret, _api_token(row)

    def authenticate(self, secret: str) -> ApiToken | None:
        """The unrevoked token whose secret this is, or None (constant-time compare)."""
        if not isinstance(secret, str) or not secret:
            return None
        digest = _hash(secret)
        with self._tx() as session:
            row = session.scalars(
                select(ApiTokenRow).where(ApiTokenRow.token_sha256 == digest)
            ).one_or_none()
            if row is None or not hmac.compare_digest(row.token_sha256, digest):
                return None
            if row.revoked_at is not None:
                return None
            return _api_token(row)

    def list_api_tokens(self) -> list[ApiToken]:
        """Every token (no secrets)."""
        with self._tx() as session:
            rows = session.scalars(
                select(ApiTokenRow).order_by(ApiTokenRow.created_at, ApiTokenRow.token_id)
            )
            return [_api_token(r) for r in rows]

    def revoke_api_token(self, token_id: str, *, at: float) -> ApiToken:
        """Revoke a token (idempotent; ``NotFoundError``)."""
        with self._tx() as session:
            row = session.get(ApiTokenRow, token_id) if isinstance(token_id, str) else None
            if row is None:
                raise NotFoundError(f"unknown API token {str(token_id)[:80]!r}")
            if row.revoked_at is None:
                row.revoked_at = float(at)
            return _api_token(row)
