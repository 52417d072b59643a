"""Persistent partial downloads: ``downloads/<artifact_id>/`` holds the manifest and chunks.

Only already-verified data is written here (the signed manifest envelope, and chunk bodies
that passed checks A1-A3), and never into an install slot. After a restart the updater
re-verifies the manifest and every stored chunk (rule D1: disk is not trusted more than
the wire), so a chunk corrupted on disk is simply fetched again.

The one unsigned datum is ``started``, the local time the download began (rule D2: its
deadline must survive a restart). It is written durably *before* the manifest, so a
download whose manifest survived a crash also has its start time; the updater clamps
the value it reads into ``[issued_at, now]`` so a damaged file can only bring the
deadline forward, never push it back.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path

from edge.updater.fsutil import remove_tree, write_atomic, write_verified_cache
from shared.artifacts import ArtifactAssembler, AssemblyState, SealedChunk
from shared.artifacts.chunking import is_artifact_id
from shared.artifacts.trust import Envelope
from shared.errors import ProtocolError, SecurityError
from shared.numbers import parse_ascii_uint

__all__ = ["DownloadStore"]

logger = logging.getLogger(__name__)

# N1: ASCII digits only (``\d`` would match any Unicode digit), read with parse_ascii_uint.
_CHUNK = re.compile(r"chunk-([0-9]{4})\.bin", re.ASCII)
_INDEX_WIDTH = 4


_STARTED = re.compile(rb"[0-9]{1,16}")  # D2: ASCII digits only (see N1)


class DownloadStore:
    """The ``downloads`` directory of one device."""

    def __init__(self, directory: Path) -> None:
        self.root = directory

    def _dir(self, artifact_id: str) -> Path:
        if not is_artifact_id(artifact_id):  # never build a path from an unchecked id
            raise ProtocolError("invalid artifact id")
        return self.root / artifact_id

    def pending(self) -> list[tuple[str, Envelope]]:
        """Downloads on disk with a readable manifest (not yet re-verified)."""
        out: list[tuple[str, Envelope]] = []
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            manifest = d / "manifest.json"
            if not (d.is_dir() and is_artifact_id(d.name) and manifest.is_file()):
                remove_tree(d) if d.is_dir() else d.unlink(missing_ok=True)
                continue
            try:
                out.append((d.name, Envelope.model_validate_json(manifest.read_bytes())))
            except (OSError, ValueError):
                logger.warning("dropping unreadable download %s", d.name)
                remove_tree(d)
        return out

    def begin(self, artifact_id: str, envelope: Envelope, *, started_at: float) -> None:
        """Record a verified manifest and its start time so the download survives a restart.

        Args:
            artifact_id: The manifest's artifact id (names the directory).
            envelope: The verified, signed manifest.
            started_at: Local Unix time the download began (its deadline, rule D2).
        """
        data = envelope.model_dump_json(exclude_none=True).encode()
        directory = self._dir(artifact_id)
        directory.mkdir(parents=True, exist_ok=True)
        started = str(max(0, math.floor(started_at))).encode()  # floor: never later
        write_atomic(directory / "started", started)  # D2: durable, before the manifest
        write_verified_cache(directory / "manifest.json", data)  # re-verified on restore

    def started_at(self, artifact_id: str) -> int | None:
        """The recorded start time (whole Unix seconds) of a download (rule D2).

        Returns:
            None if the file is missing or is not 1-16 ASCII digits.
        """
        try:
            raw = (self._dir(artifact_id) / "started").read_bytes()
        except OSError:
            return None
        return int(raw) if _STARTED.fullmatch(raw) else None

    def save_chunk(self, chunk: SealedChunk) -> None:
        """Store one accepted chunk body (not flushed: :meth:`restore` re-checks it)."""
        path = self._dir(chunk.artifact_id) / f"chunk-{chunk.index:0{_INDEX_WIDTH}d}.bin"
        write_verified_cache(path, chunk.body)

    def restore(self, assembler: ArtifactAssembler) -> AssemblyState:
        """Rebuild the assembly state from disk, re-checking each chunk (rule D1)."""
        m = assembler.manifest
        state = assembler.start()
        d = self._dir(m.artifact_id)
        for path in sorted(d.glob("chunk-*.bin")):
            match = _CHUNK.fullmatch(path.name)
            try:
                if match is None:
                    raise ProtocolError("unexpected file")
                index = parse_ascii_uint(
                    match[1],
                    what="stored chunk index",
                    max_value=m.chunk_count - 1,
                    width=_INDEX_WIDTH,
                )
                chunk = SealedChunk(m.artifact_id, index, m.chunk_count, path.read_bytes())
                state, _ = assembler.add(state, chunk)
            except (OSError, ProtocolError, SecurityError):
                logger.warning("discarding stored chunk %s of %s", path.name, m.artifact_id)
                path.unlink(missing_ok=True)
        return state

    def discard(self, artifact_id: str) -> None:
        """Delete a download (finished, superseded or refused)."""
        remove_tree(self._dir(artifact_id))

    def discard_all(self, keep: str | None = None) -> None:
        """Delete every download except ``keep``."""
        if self.root.is_dir():
            for d in self.root.iterdir():
                if d.name != keep:
                    remove_tree(d) if d.is_dir() else d.unlink(missing_ok=True)
