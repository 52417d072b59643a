"""The operator dashboard: static HTML + JS modules served at ``/`` of the coordinator.

No build step and nothing from the internet at run time: the page is plain ES modules in
``static/``; the one chart library, uPlot 1.6.32 (MIT), is vendored in ``static/vendor``
with its licence (``LICENSE.uPlot``; origin and hashes in ``vendor/README``).

Data comes from the ordinary ``/v1`` API with the operator's bearer token (pasted into a
login field, kept in ``sessionStorage``: gone when the tab closes), plus
``/v1/dashboard/summary`` (SQL aggregates) and the server-sent event stream
``/v1/events/stream`` (:mod:`cloud.api.routes.events`).

Every response of the page carries a Content-Security-Policy without ``'unsafe-inline'``:
scripts, styles and connections only from the coordinator itself.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CSP", "SECURITY_HEADERS", "STATIC_DIR", "STATIC_FILES"]

STATIC_DIR = Path(__file__).parent / "static"

#: The only files served (name → media type): no directory listing, no path traversal.
STATIC_FILES: dict[str, str] = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "charts.js": "text/javascript; charset=utf-8",
    "views.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "vendor/uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "vendor/uPlot.min.css": "text/css; charset=utf-8",
    "vendor/LICENSE.uPlot": "text/plain; charset=utf-8",
}

#: Scripts and styles from this origin only; no inline script, no eval, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
