"""Content-addressed blob store: ``<root>/sha256/<ab>/<full hex digest>``.

Writes go to a temporary file in the same directory, are fsynced, then renamed into place
(atomic on POSIX) and the directory is fsynced, so a crash never leaves a half-written blob
under a valid name.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from shared.errors import ArtifactStoreError


class ArtifactStore:
    """Immutable blobs named by their sha256."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path_for(self, sha256: str) -> Path:
        """Where the blob with this digest lives (whether or not it exists)."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ArtifactStoreError(f"not a sha256 hex digest: {sha256!r}")
        return self.root / "sha256" / sha256[:2] / sha256

    def exists(self, sha256: str) -> bool:
        """Whether the blob is present."""
        return self.path_for(sha256).is_file()

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; return ``(sha256, created)`` (``created`` is False if it was there)."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path_for(digest)
        if target.is_file():
            return digest, False
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return digest, True

    def get(self, sha256: str) -> bytes:
        """Read a blob back, verifying its digest.

        Raises:
            ArtifactStoreError: missing, or its content no longer matches its name.
        """
        path = self.path_for(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise ArtifactStoreError(f"artifact {sha256[:12]} is missing from {self.root}") from exc
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ArtifactStoreError(f"artifact {sha256[:12]} is corrupt on disk ({path})")
        return data

    def delete(self, sha256: str) -> None:
        """Remove a blob (used to undo a failed transaction)."""
        self.path_for(sha256).unlink(missing_ok=True)
