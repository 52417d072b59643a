// The coordinator's /v1 API with the operator's bearer token, and the live event stream.
//
// The token lives in sessionStorage (this tab only, gone when it closes) and is sent only
// in the Authorization header of same-origin requests. EventSource cannot send headers,
// so the stream is authorised by an HttpOnly cookie that POST /v1/events/session sets
// (a signed, short-lived ticket naming the token, never the token itself).

const KEY = "fedge.token";

export function getToken() {
  return sessionStorage.getItem(KEY);
}

export function setToken(token) {
  sessionStorage.setItem(KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, code, detail) {
    super(`${status} ${code}: ${detail}`);
    this.status = status;
    this.code = code;
  }
}

/** GET (or another method) a JSON resource; rejects with ApiError on any non-2xx. */
export async function api(path, { method = "GET" } = {}) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${getToken() ?? ""}`, Accept: "application/json" },
    credentials: "same-origin",
    cache: "no-store",
  });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    throw new ApiError(response.status, body.code ?? "error", body.detail ?? response.statusText);
  }
  return body;
}

/**
 * Keep an EventSource open on /v1/events/stream, re-obtaining the cookie whenever the
 * server ends the stream (its lifetime, a restart) or it breaks. ``handlers`` maps event
 * names to callbacks; ``onState(bool)`` reports whether the stream is live.
 */
export function liveEvents(handlers, onState) {
  let source = null;
  let stopped = false;
  let delay = 1000;

  async function connect() {
    if (stopped) return;
    try {
      const session = await api("/v1/events/session", { method: "POST" });
      source = new EventSource(session.stream);
    } catch (err) {
      onState(false);
      if (err instanceof ApiError && err.status === 401) {
        handlers.unauthorized?.();
        return;
      }
      retry();
      return;
    }
    source.addEventListener("open", () => {
      delay = 1000;
      onState(true);
    });
    source.addEventListener("error", () => {
      // the browser retries by itself unless the stream was refused: then get a new cookie
      if (source.readyState === EventSource.CLOSED) retry();
      else onState(false);
    });
    source.addEventListener("bye", (event) => {
      const reason = JSON.parse(event.data).reason;
      source.close();
      onState(false);
      if (reason === "token_revoked") handlers.unauthorized?.();
      else retry();
    });
    for (const [name, callback] of Object.entries(handlers)) {
      if (name === "unauthorized") continue;
      source.addEventListener(name, (event) => callback(JSON.parse(event.data)));
    }
  }

  function retry() {
    source?.close();
    source = null;
    onState(false);
    setTimeout(connect, delay);
    delay = Math.min(delay * 2, 30000);
  }

  connect();
  return () => {
    stopped = true;
    source?.close();
  };
}
