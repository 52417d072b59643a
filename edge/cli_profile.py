"""Device profiles on the command line: read one (for every command) and ``check-profile``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.cli_common import fail
from shared.errors import FedgeError, ProfileError
from shared.profiles import DeviceProfile, profile_from_toml

__all__ = ["check_profile", "load_profile"]


def load_profile(path: Path) -> DeviceProfile:
    """Read and validate a device profile file.

    Raises:
        ProfileError: unreadable file, invalid TOML or an invalid field (named).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    return profile_from_toml(text, source=str(path))


def check_profile(
    path: Annotated[Path, typer.Argument(help="Profile file(s) to validate.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the profile as JSON.")] = False,
) -> None:
    """Validate a device profile; print it, or the field that is wrong."""
    try:
        prof = load_profile(path)
    except FedgeError as exc:
        fail(exc, as_json)
        return
    if as_json:
        typer.echo(prof.model_dump_json(indent=2))
    else:
        typer.echo(f"{path}: ok ({prof.name}, {prof.device_class}, {prof.hardware_id})")
