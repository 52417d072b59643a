"""``fedge edge enroll``: redeem a one-time enrollment token at the coordinator's API.

The device's only credential is the token (given to it out of band, e.g. at the factory or
by the installer). The coordinator answers with the device's bundle (keys, certificates,
the pinned root, broker credentials), written here with 0600 files in a 0700 directory.
Standard library only: a device needs no HTTP client package for this.

The answer is data from the network: every file name is checked against a strict grammar
(one path component, ``[A-Za-z0-9][A-Za-z0-9._-]*``, no ``..``), every body is strict
base64, the bundle must contain the files the agent needs, and nothing is written unless
all of it checks out (a half-written bundle is never left behind).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import shutil
import ssl
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shared.errors import ConfigError, ProtocolError

__all__ = ["REQUIRED_FILES", "enroll"]

#: What ``edge.keystore.load_device_keys`` needs from a bundle.
REQUIRED_FILES = frozenset(
    {"device.json", "root.pub", "signing.key", "box.key", "ca.crt", "client.crt", "client.key"}
)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)
_MAX_RESPONSE = 1 << 20  # a bundle is a few KB


def _decode_files(answer: Any) -> dict[str, bytes]:
    if not isinstance(answer, dict) or not isinstance(answer.get("files"), dict):
        raise ProtocolError("the coordinator's answer is not a device bundle")
    files: dict[str, bytes] = {}
    for name, body in answer["files"].items():
        if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
            raise ProtocolError(f"refusing bundle file name {str(name)[:40]!r}")
        if not isinstance(body, str):
            raise ProtocolError(f"bundle file {name} is not base64 text")
        try:
            files[name] = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise ProtocolError(f"bundle file {name} is not valid base64") from exc
    missing = REQUIRED_FILES - files.keys()
    if missing:
        raise ProtocolError(f"the bundle lacks {', '.join(sorted(missing))}")
    return files


def enroll(
    api_url: str,
    token: str,
    bundle_dir: Path,
    *,
    cafile: str | None = None,
    timeout_s: float = 30.0,
    force: bool = False,
) -> dict[str, Any]:
    """Redeem ``token`` at ``api_url`` and write the bundle into ``bundle_dir``.

    Returns:
        ``device_id``, ``bundle`` (the directory) and ``files`` (names written).

    Raises:
        ConfigError: the URL is not http(s), the directory is not empty (without
            ``force``), the coordinator refused the token (its problem ``code`` is in the
            message) or could not be reached.
        ProtocolError: the answer is not a well-formed bundle (nothing is written).
    """
    if not api_url.startswith(("https://", "http://")):
        raise ConfigError("--api must be an http(s):// URL")
    if bundle_dir.exists() and any(bundle_dir.iterdir()) and not force:
        raise ConfigError(f"{bundle_dir} is not empty (pass --force to replace it)")
    request = urllib.request.Request(
        api_url.rstrip("/") + "/v1/devices/enroll",
        data=json.dumps({"token": token}).encode(),
        headers={"Content-Type": "application/json", "Accept": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=cafile) if api_url.startswith("https") else None
    try:
        with urllib.request.urlopen(request, timeout=timeout_s, context=context) as reply:
            raw = reply.read(_MAX_RESPONSE + 1)
    except urllib.error.HTTPError as exc:
        code = "http_error"
        with contextlib.suppress(ValueError, AttributeError):  # not a problem+json body
            code = str(json.loads(exc.read(4096)).get("code", code))[:64]
        raise ConfigError(f"the coordinator refused the enrollment ({exc.code} {code})") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(f"cannot reach the coordinator at {api_url[:80]}") from exc
    if len(raw) > _MAX_RESPONSE:
        raise ProtocolError("the coordinator's answer is too large")
    try:
        answer = json.loads(raw)
    except ValueError as exc:
        raise ProtocolError("the coordinator's answer is not JSON") from exc
    files = _decode_files(answer)
    _write_bundle(bundle_dir, files)
    return {
        "device_id": str(answer.get("device_id", "")),
        "bundle": str(bundle_dir),
        "files": sorted(files),
    }


def _write_bundle(bundle_dir: Path, files: dict[str, bytes]) -> None:
    """Write every file 0600 into a fresh 0700 directory, then swap it in (all or nothing)."""
    bundle_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".enroll-", dir=bundle_dir.parent))
    try:
        os.chmod(staging, 0o700)
        for name, body in files.items():
            fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        os.replace(staging, bundle_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
