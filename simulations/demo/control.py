"""The demo's side of the control API: a small JSON client with a bearer token.

Standard library only (``urllib``), as a script or a device would call the API. Errors come
back as :class:`ApiCallError` with the problem's ``code`` and ``detail``; the token is never
printed.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["ApiCallError", "ControlClient", "wait_ready"]


class ApiCallError(RuntimeError):
    """A control-API call failed (``status`` 0: no answer)."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code = status, code


@dataclass(frozen=True)
class ControlClient:
    """``base`` URL (``http://127.0.0.1:PORT``) and a bearer token."""

    base: str
    token: str

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One JSON request; returns the decoded answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                problem = json.loads(exc.read())
            except ValueError:
                problem = {}
            raise ApiCallError(
                exc.code, str(problem.get("code", "http_error")), str(problem.get("detail", ""))
            ) from None
        except (urllib.error.URLError, OSError) as exc:
            raise ApiCallError(0, "unreachable", str(exc)) from None
        return json.loads(raw) if raw else None

    def get(self, path: str) -> Any:
        """GET ``path``."""
        return self.call("GET", path)

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """POST ``body`` to ``path``."""
        return self.call("POST", path, body if body is not None else {})

    def has_path(self, path: str) -> bool:
        """Whether the coordinator's OpenAPI document lists ``path``."""
        schema = self.get("/openapi.json")
        return path in (schema.get("paths") or {})


def wait_ready(base: str, timeout: float, alive: Any = None) -> None:
    """Wait until ``GET /healthz`` answers (``alive()`` False: the process died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise RuntimeError("the coordinator exited while starting (see its log)")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.3)
    raise RuntimeError(f"the coordinator did not answer at {base} within {timeout:.0f}s")
