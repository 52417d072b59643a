"""``/v1/events``: the dashboard's live updates as server-sent events.

Authentication. ``EventSource`` cannot send an ``Authorization`` header, and a token in
the URL would end up in proxies' and browsers' histories. So the page first calls
``POST /v1/events/session`` with its bearer token (viewer or above); the answer sets a
cookie ``fedge_events`` — ``HttpOnly`` (the page's scripts never see it), ``SameSite=Strict``,
``Path=/v1/events`` (sent nowhere else), ``Secure`` on HTTPS, valid for
:data:`TICKET_TTL_S` — holding a ticket: the API token's *id* and an expiry, signed with
HMAC-SHA256 under a key drawn at random when the app starts (a restart invalidates every
ticket). The ticket carries no secret: it cannot be turned back into the bearer token.
``GET /v1/events/stream`` accepts the ticket (or a bearer header, for ``curl``), and while
the stream is open re-checks every :data:`AUTH_RECHECK_S` that the token was not revoked;
a revoked token's stream ends with a ``bye`` event.

The stream (left out of the OpenAPI document: it never ends, so a schema fuzzer would
hang on it) polls :meth:`~cloud.fleet.store.FleetStore.fleet_watermark` — one aggregate
per table — every :data:`POLL_S` and sends, only when something changed:

- ``devices``: ``{"items": [DeviceOut...], "truncated": bool}``, the devices seen, enrolled
  or revoked since the last event (at most 200; ``truncated``: refetch the page);
- ``summary``: the fleet totals (:class:`~cloud.api.dashboard.schemas.FleetSummaryOut`);
- ``runs``: ``{"active": n}`` — a federated run or round changed: refetch runs;
- ``tick`` every :data:`TICK_S`: refresh what has no watermark (rollouts, latency);
- ``hello`` first, ``bye`` last (``{"reason": "reconnect" | "token_revoked"}``).

Polling the database (rather than a hook in the ingestion worker) keeps it correct when the
API, the ingestion and the jobs run in different processes over one PostgreSQL database.
A stream closes itself after :data:`STREAM_LIFETIME_S` (the page reconnects), so none
outlives a revoked cookie key for long and a server shutdown is never held up for long.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool

from cloud.api.auth import authenticate
from cloud.api.dashboard.schemas import EventsSession, FleetSummaryOut
from cloud.api.deps import Resources, ResourcesDep, ViewerToken, bearer
from cloud.api.errors import ApiProblem, problem_responses
from cloud.api.schemas import DeviceOut
from cloud.fleet.store_dashboard import FleetWatermark

__all__ = ["COOKIE", "issue_ticket", "router", "verify_ticket"]

router = APIRouter(prefix="/v1/events", tags=["events"])

COOKIE = "fedge_events"
TICKET_TTL_S = 300.0
POLL_S = 1.0
TICK_S = 5.0
PING_S = 15.0
AUTH_RECHECK_S = 10.0
STREAM_LIFETIME_S = 600.0
CHANGED_LIMIT = 200


def _key(request: Request) -> bytes:
    """The app's ticket key, drawn once per app (never stored, never logged)."""
    key = getattr(request.app.state, "events_key", None)
    if not isinstance(key, bytes):
        key = secrets.token_bytes(32)
        request.app.state.events_key = key
    return key


def _sign(key: bytes, message: str) -> str:
    mac = hmac.new(key, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def issue_ticket(key: bytes, token_id: str, *, expires_at: float) -> str:
    """``<token id>.<expiry>.<HMAC-SHA256 of both>`` (no secret inside)."""
    message = f"{token_id}.{int(expires_at)}"
    return f"{message}.{_sign(key, message)}"


def verify_ticket(key: bytes, ticket: str, *, now: float) -> str | None:
    """The token id of a valid, unexpired ticket; None for anything else."""
    parts = ticket.rsplit(".", 2)
    if len(parts) != 3 or len(ticket) > 300:
        return None
    token_id, expiry, mac = parts
    if not hmac.compare_digest(_sign(key, f"{token_id}.{expiry}"), mac):
        return None
    if not expiry.isdigit() or int(expiry) < now:
        return None
    return token_id


@router.post(
    "/session",
    name="events.session",
    response_model=EventsSession,
    responses=problem_responses(401, 403),
)
async def session(
    request: Request, response: Response, res: ResourcesDep, token: ViewerToken
) -> EventsSession:
    """Set the event-stream cookie for this token (viewer); connect within its lifetime."""
    expires_at = res.now() + TICKET_TTL_S
    response.set_cookie(
        COOKIE,
        issue_ticket(_key(request), token.token_id, expires_at=expires_at),
        max_age=int(TICKET_TTL_S),
        path="/v1/events",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.headers["Cache-Control"] = "no-store"
    return EventsSession(stream="/v1/events/stream", expires_at=expires_at)


def _stream_token(
    request: Request,
    res: Resources,
    credentials: HTTPAuthorizationCredentials | None,
) -> str:
    if credentials is not None:  # curl and scripts: the bearer token itself
        return authenticate(res.store, credentials.credentials).token_id
    ticket = request.cookies.get(COOKIE)
    token_id = verify_ticket(_key(request), ticket, now=res.now()) if ticket else None
    if token_id is None or not res.store.api_token_active(token_id):
        raise ApiProblem(
            401,
            "invalid_ticket" if ticket else "missing_token",
            "an event-stream cookie (POST /v1/events/session) or a bearer token is required",
        )
    return token_id


def _event(name: str, data: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _devices_changed(old: FleetWatermark, new: FleetWatermark) -> bool:
    return (old.devices, old.last_seen, old.enrolled_at, old.revoked_at) != (
        new.devices,
        new.last_seen,
        new.enrolled_at,
        new.revoked_at,
    )


def _runs_changed(old: FleetWatermark, new: FleetWatermark) -> bool:
    return (old.runs, old.rounds, old.run_changed_at, old.active_runs) != (
        new.runs,
        new.rounds,
        new.run_changed_at,
        new.active_runs,
    )


async def _summary(res: Resources) -> dict[str, Any]:
    fleet = await run_in_threadpool(res.store.fleet_summary)
    return FleetSummaryOut.model_validate(fleet).model_dump(mode="json")


async def _events(res: Resources, token_id: str, mark: FleetWatermark) -> AsyncIterator[str]:
    store = res.store
    clock = time.monotonic
    started = last_tick = last_auth = last_sent = clock()
    since = mark.device_time
    yield "retry: 3000\n\n"
    yield _event("hello", {"at": res.now(), "summary": await _summary(res)})
    while True:
        await asyncio.sleep(POLL_S)
        now = clock()
        if now - last_auth >= AUTH_RECHECK_S:
            last_auth = now
            if not await run_in_threadpool(store.api_token_active, token_id):
                yield _event("bye", {"reason": "token_revoked"})
                return
        if now - started >= STREAM_LIFETIME_S:
            yield _event("bye", {"reason": "reconnect"})
            return
        new = await run_in_threadpool(store.fleet_watermark)
        if _devices_changed(mark, new):
            changed = await run_in_threadpool(
                partial(store.devices_changed_since, since, limit=CHANGED_LIMIT + 1)
            )
            items = [DeviceOut.model_validate(d).model_dump(mode="json") for d in changed]
            truncated = len(items) > CHANGED_LIMIT
            yield _event("devices", {"items": items[:CHANGED_LIMIT], "truncated": truncated})
            yield _event("summary", await _summary(res))
            since, last_sent = max(since, new.device_time), now
        if _runs_changed(mark, new):
            yield _event("runs", {"active": new.active_runs})
            last_sent = now
        mark = new
        if now - last_tick >= TICK_S:
            yield _event("tick", {"at": res.now()})
            last_tick = last_sent = now
        elif now - last_sent >= PING_S:
            yield ": ping\n\n"  # a comment keeps proxies from closing an idle stream
            last_sent = now


@router.get("/stream", name="events.stream", include_in_schema=False)
async def stream(
    request: Request,
    res: ResourcesDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> StreamingResponse:
    """Server-sent events of fleet and run changes (cookie ticket or bearer; viewer)."""
    token_id = await run_in_threadpool(_stream_token, request, res, credentials)
    request.state.actor = token_id
    # the watermark is taken before the headers go out: once the client sees the stream
    # open, every later change is after it and will be sent
    mark = await run_in_threadpool(res.store.fleet_watermark)
    return StreamingResponse(
        _events(res, token_id, mark),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
