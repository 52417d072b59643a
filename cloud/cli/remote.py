"""A small client of the coordinator's control API, for ``fedge … --api URL``.

Standard library only (``urllib.request``): a bearer token, JSON in and out, a timeout on
every request. An RFC 9457 problem (``application/problem+json``) becomes a
:class:`RemoteError` whose ``code`` is the problem's ``code``, so ``cli_errors()`` prints
``error (<code>): <detail>`` and exits 2 as it does for a local error; a coordinator that
cannot be reached is a :class:`~shared.errors.ConfigError` naming the URL.

Commands take :data:`ApiOption` and :data:`TokenOption` (``FEDGE_API_URL`` and
``FEDGE_API_TOKEN``) and call :func:`client_for` when an URL is given; without one they run
locally exactly as before. The token is sent only in the ``Authorization`` header and never
printed.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from shared.errors import ConfigError, FedgeError, ProtocolError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ApiClient",
    "ApiOption",
    "RemoteError",
    "TokenOption",
    "client_for",
]

#: Seconds one HTTP request may take (connect + answer).
DEFAULT_TIMEOUT_S = 10.0
#: Bodies larger than this are not read (the API's own answers are far smaller).
_MAX_RESPONSE_BYTES = 32 * 1024 * 1024
#: A page walk stops after this many pages (a server that loops its cursor).
_MAX_PAGES = 100_000

ApiOption = Annotated[
    str | None,
    typer.Option(
        "--api",
        envvar="FEDGE_API_URL",
        help="Ask a running coordinator (its control API URL, e.g. http://127.0.0.1:8000) "
        "instead of the local state.",
        show_default=False,
    ),
]
TokenOption = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FEDGE_API_TOKEN",
        help="API bearer token for --api (prefer the FEDGE_API_TOKEN environment variable).",
        show_default=False,
        show_envvar=True,
    ),
]


class RemoteError(FedgeError):
    """The control API refused a request; ``code`` is the problem's ``code``.

    Attributes:
        status: The HTTP status of the answer.
        problem: The problem document (empty when the answer was not a problem).
    """

    code = "remote_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int = 0,
        problem: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})


def _check_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url.strip())
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"--api {url!r}: expected the coordinator's URL, e.g. http://127.0.0.1:8000",
            code="invalid_api_url",
        )
    return urllib.parse.urlunsplit((parsed.scheme, parsed.netloc, parsed.path.rstrip("/"), "", ""))


def _problem_error(status: int, body: bytes, content_type: str, where: str) -> RemoteError:
    """A :class:`RemoteError` from an error answer (a problem document, or anything else)."""
    document: Any = None
    try:
        document = json.loads(body.decode("utf-8")) if body else None
    except (UnicodeDecodeError, ValueError):
        document = None
    if isinstance(document, dict) and isinstance(document.get("code"), str):
        detail = document.get("detail")
        message = detail if isinstance(detail, str) and detail else str(document["code"])
        return RemoteError(message, code=document["code"], status=status, problem=document)
    media = content_type.split(";", 1)[0].strip() or "no content type"
    return RemoteError(
        f"{where} answered HTTP {status} ({media}) without a problem document",
        code=f"http_{status}",
        status=status,
    )


@dataclass(frozen=True)
class ApiClient:
    """A client of one coordinator's control API.

    Args:
        base_url: The API's root URL (``http://host:port``; a path prefix is kept).
        token: The bearer token (None: no ``Authorization`` header; the API answers 401).
        timeout_s: Seconds each request may take.
    """

    base_url: str
    token: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        """The absolute URL of ``path`` (``/v1/…``) with ``query`` (None values dropped)."""
        url = self.base_url + "/" + path.lstrip("/")
        params = {
            k: ("true" if v is True else "false" if v is False else str(v))
            for k, v in (query or {}).items()
            if v is not None
        }
        return f"{url}?{urllib.parse.urlencode(params)}" if params else url

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """Send one request and return its decoded JSON answer (None for an empty body).

        Raises:
            RemoteError: the API answered with an error status (its problem's code).
            ConfigError: the coordinator cannot be reached or did not answer in time.
            ProtocolError: a success answer that is not JSON.
        """
        url = self.url(path, query)
        headers = {"Accept": "application/json, application/problem+json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        where = f"the coordinator API at {self.base_url}"
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read(_MAX_RESPONSE_BYTES + 1)
                status = int(response.status)
        except urllib.error.HTTPError as exc:
            with exc:
                raw = exc.read(_MAX_RESPONSE_BYTES)
            raise _problem_error(
                exc.code, raw, exc.headers.get("Content-Type", "") if exc.headers else "", where
            ) from None
        except urllib.error.URLError as exc:
            reason = exc.reason
            if isinstance(reason, TimeoutError):
                raise ConfigError(
                    f"{where} did not answer within {self.timeout_s:g} s",
                    code="api_unreachable",
                ) from None
            raise ConfigError(f"cannot reach {where}: {reason}", code="api_unreachable") from None
        except TimeoutError:
            raise ConfigError(
                f"{where} did not answer within {self.timeout_s:g} s", code="api_unreachable"
            ) from None
        except OSError as exc:  # reset, refused mid-answer, …
            raise ConfigError(f"cannot reach {where}: {exc}", code="api_unreachable") from None
        if len(raw) > _MAX_RESPONSE_BYTES:
            raise ProtocolError(f"{where} sent an answer over {_MAX_RESPONSE_BYTES} bytes")
        if not raw:
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ProtocolError(
                f"{where} answered {method} {path} with HTTP {status} but not JSON"
            ) from None

    def get(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        """``GET path`` → its JSON."""
        return self.request("GET", path, query=query)

    def post(self, path: str, body: Any = None) -> Any:
        """``POST path`` with a JSON body → its JSON."""
        return self.request("POST", path, body=body if body is not None else {})

    def paginate(
        self, path: str, query: Mapping[str, Any] | None = None, *, limit: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every item of a cursor-paginated listing (``items`` + ``next_cursor``), in order.

        Raises:
            ProtocolError: a page that is not ``{"items": [...], "next_cursor": ...}``, or a
                cursor that does not move.
        """
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(_MAX_PAGES):
            page = self.get(path, {**(query or {}), "limit": limit, "cursor": cursor})
            if not isinstance(page, dict) or not isinstance(page.get("items"), list):
                raise ProtocolError(f"GET {path}: expected a page with items, got {page!r:.80}")
            for item in page["items"]:
                if not isinstance(item, dict):
                    raise ProtocolError(f"GET {path}: an item is not an object: {item!r:.80}")
                yield item
            cursor = page.get("next_cursor")
            if cursor is None:
                return
            if not isinstance(cursor, str) or cursor in seen:
                raise ProtocolError(f"GET {path}: the cursor {cursor!r:.80} does not advance")
            seen.add(cursor)
        raise ProtocolError(f"GET {path}: more than {_MAX_PAGES} pages")


def client_for(api: str, token: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> ApiClient:
    """The client of ``--api URL`` (``ConfigError`` for an URL that is not http(s))."""
    return ApiClient(_check_url(api), token or None, timeout_s)
