"""Shared base of the control API models, and the fields several of them take."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloud.registry.registry import VERSION_REF_PATTERN

VersionRefField = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=VERSION_REF_PATTERN,
        description="MODEL@N (or MODEL / MODEL@latest for the newest version).",
    ),
]
"""A registry version reference in a request (the registry's one grammar)."""


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)
