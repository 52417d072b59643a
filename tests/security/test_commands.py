"""Signed commands: one test per attack on the cmd topic (K1-K6)."""

from __future__ import annotations

import pytest

from shared.artifacts import RevocationList, sign_revocations
from shared.crypto import SigningKey
from shared.errors import (
    BadSignatureError,
    ExpiredMetadataError,
    ReplayAttackError,
    RevokedKeyError,
    UntrustedKeyError,
    WrongRecipientError,
)
from shared.protocol.commands import Command, CommandAction, sign_command, verify_command
from tests.helpers.release import NOW, Fleet


@pytest.fixture()
def fleet() -> Fleet:
    return Fleet()


def _cmd(**kw: object) -> Command:
    args: dict[str, object] = dict(
        action=CommandAction.ROLLBACK,
        device_id="dev-a",
        seq=10,
        issued_at=NOW - 1,
        expires=NOW + 60,
    )
    args.update(kw)
    return Command.model_validate(args)


def _verify(fleet: Fleet, env, trust=None, **kw):  # type: ignore[no-untyped-def]
    args = dict(device_id="dev-a", groups=frozenset({"kitchen"}), last_seq=9, now=NOW)
    args.update(kw)
    return verify_command(env, trust or fleet.trust(), **args)  # type: ignore[arg-type]


def _signed(fleet: Fleet, cmd: Command):  # type: ignore[no-untyped-def]
    return sign_command(cmd, fleet.coordinator, certificate=fleet.coordinator_cert)


def test_valid_device_and_group_commands(fleet: Fleet) -> None:
    assert _verify(fleet, _signed(fleet, _cmd())).action is CommandAction.ROLLBACK
    group_cmd = _cmd(device_id=None, group="kitchen", action=CommandAction.REPORT_MISSING)
    assert _verify(fleet, _signed(fleet, group_cmd)).group == "kitchen"


def test_tampered_command(fleet: Fleet) -> None:
    env = _signed(fleet, _cmd())
    other = _signed(fleet, _cmd(device_id="dev-b"))
    with pytest.raises(BadSignatureError):
        _verify(fleet, env.model_copy(update={"payload": other.payload}))


def test_release_key_cannot_sign_commands(fleet: Fleet) -> None:
    env = sign_command(_cmd(), fleet.release, certificate=fleet.release_cert)
    with pytest.raises(UntrustedKeyError):
        _verify(fleet, env)


def test_uncertified_coordinator_key(fleet: Fleet) -> None:
    evil = SigningKey.generate()
    from shared.artifacts import Role

    env = sign_command(_cmd(), evil, certificate=fleet.cert(evil, Role.COORDINATOR, by=evil))
    with pytest.raises(UntrustedKeyError):
        _verify(fleet, env)


def test_revoked_coordinator_key(fleet: Fleet) -> None:
    revs = sign_revocations(
        fleet.root,
        RevocationList(
            version=2, issued_at=NOW, revoked_key_ids=(fleet.coordinator.verify_key.key_id,)
        ),
    )
    with pytest.raises(RevokedKeyError):
        _verify(fleet, _signed(fleet, _cmd()), trust=fleet.trust().with_revocations(revs))


def test_expired_command(fleet: Fleet) -> None:
    with pytest.raises(ExpiredMetadataError):
        _verify(fleet, _signed(fleet, _cmd()), now=NOW + 60)


def test_command_for_another_device_or_group(fleet: Fleet) -> None:
    with pytest.raises(WrongRecipientError):
        _verify(fleet, _signed(fleet, _cmd(device_id="dev-b")))
    with pytest.raises(WrongRecipientError):
        _verify(fleet, _signed(fleet, _cmd(device_id=None, group="garage")))


def test_replayed_command(fleet: Fleet) -> None:
    env = _signed(fleet, _cmd(seq=9))
    with pytest.raises(ReplayAttackError):
        _verify(fleet, env, last_seq=9)
