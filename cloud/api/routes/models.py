"""``/v1/models`` and ``/v1/artifacts``: the registry, read-only.

Artifacts are content-addressed, so the sha256 is a perfect strong validator: the download
sends ``ETag: "<sha256>"``, answers ``If-None-Match`` with 304 and serves one byte range
(``Range: bytes=a-b``, ``a-`` or ``-n``) with 206. A range it cannot serve is a 416 problem.
The blob is read from the registry's store by digest (``ArtifactStore.path_for``), only for
a digest some registered artifact has.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path as FsPath
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Response
from fastapi.responses import StreamingResponse

from cloud.api.deps import ResourcesDep, ViewerToken
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.schemas import ArtifactOut, VersionList, VersionOut
from cloud.registry import Registry
from cloud.registry.registry import VersionInfo
from shared.errors import NotFoundError
from shared.identifiers import IDENTIFIER_PATTERN

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["models"])

_CHUNK = 64 * 1024
_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")
Sha256 = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="sha256 (lowercase hex).")]
ModelName = Annotated[str, Path(pattern=f"^{IDENTIFIER_PATTERN}$", max_length=64)]


def aware(moment: datetime) -> datetime:
    """Registry times are UTC; SQLite hands them back naive."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def version_out(info: VersionInfo) -> VersionOut:
    """The API form of a registry version."""
    return VersionOut(
        model=info.model,
        number=info.number,
        ref=info.ref,
        parent=info.parent,
        source=info.source,
        source_ref=info.source_ref,
        metrics=info.metrics,
        created_at=aware(info.created_at),
        artifacts=[
            ArtifactOut(
                format=a.format,
                precision=a.precision,
                sha256=a.sha256,
                bytes=a.bytes,
                status=a.status,
                reason=a.reason,
                metrics=a.metrics,
                url=f"/v1/artifacts/{a.sha256}",
            )
            for a in info.artifacts
        ],
    )


@router.get(
    "/models",
    name="models.list",
    response_model=VersionList,
    responses=problem_responses(401, 422),
)
def list_models(
    res: ResourcesDep,
    token: ViewerToken,
    model: Annotated[str | None, Query(max_length=64, description="Only this model.")] = None,
) -> VersionList:
    """Every version with its lineage (parent, source) and artifacts (viewer)."""
    return VersionList(items=[version_out(v) for v in res.registry.list_versions(model)])


@router.get(
    "/models/{model}/versions/{number}",
    name="models.version",
    response_model=VersionOut,
    responses=problem_responses(401, 404, 422),
)
def get_version(
    model: ModelName,
    number: Annotated[int, Path(ge=1, le=2**31 - 1)],
    res: ResourcesDep,
    token: ViewerToken,
) -> VersionOut:
    """One version (viewer)."""
    return version_out(res.registry.get_version(f"{model}@{number}"))


def _blob(registry: Registry, sha256: str) -> FsPath:
    """The stored blob of a registered artifact."""
    known = any(a.sha256 == sha256 for v in registry.list_versions() for a in v.artifacts)
    path = registry.store.path_for(sha256)
    if not known or not path.is_file():
        raise NotFoundError(f"no artifact {sha256[:12]}… in the registry")
    return path


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def parse_range(header: str, size: int) -> tuple[int, int]:
    """``(first, last)`` byte of a single ``bytes=`` range of a ``size``-byte body.

    Raises:
        ApiProblem: 416 for a malformed, multiple or unsatisfiable range.
    """
    refuse = ApiProblem(
        416,
        "range_not_satisfiable",
        f"cannot serve range {header[:60]!r} of a {size}-byte artifact (one range: bytes=a-b)",
        headers={"Content-Range": f"bytes */{size}"},
    )
    match = _RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        raise refuse
    if not match[1]:  # suffix: the last n bytes
        n = int(match[2])
        if n == 0 or size == 0:
            raise refuse
        return max(0, size - n), size - 1
    first = int(match[1])
    last = int(match[2]) if match[2] else size - 1
    if first >= size or last < first:
        raise refuse
    return first, min(last, size - 1)


def _stream(path: FsPath, first: int, length: int) -> Iterator[bytes]:
    with path.open("rb") as handle:
        handle.seek(first)
        left = length
        while left > 0:
            chunk = handle.read(min(_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


_BINARY = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


@router.get(
    "/artifacts/{sha256}",
    name="artifacts.download",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The artifact's bytes.", "content": _BINARY},
        206: {"description": "One byte range of the artifact.", "content": _BINARY},
        304: {"description": "Not modified (the ETag matches)."},
        **problem_responses(401, 404, 416, 422),
    },
)
def download_artifact(
    sha256: Sha256,
    res: ResourcesDep,
    token: ViewerToken,
    range_header: Annotated[str | None, Header(alias="Range", max_length=200)] = None,
    if_none_match: Annotated[str | None, Header(max_length=2000)] = None,
    if_range: Annotated[str | None, Header(max_length=200)] = None,
) -> Response:
    """Download an artifact's bytes (viewer): ETag, If-None-Match → 304, Range → 206."""
    path = _blob(res.registry, sha256)
    size = path.stat().st_size
    etag = f'"{sha256}"'
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Cache-Control": "private, max-age=31536000, immutable",
    }
    if if_none_match is not None and _matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    if range_header is not None and (if_range is None or if_range.strip() == etag):
        first, last = parse_range(range_header, size)
        length = last - first + 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        headers["Content-Length"] = str(length)
        return StreamingResponse(
            _stream(path, first, length),
            status_code=206,
            media_type="application/octet-stream",
            headers=headers,
        )
    headers["Content-Length"] = str(size)
    return StreamingResponse(
        _stream(path, 0, size), media_type="application/octet-stream", headers=headers
    )
