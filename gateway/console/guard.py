"""What stands between a browser and the console's pages (README "Web console"), in one place:

- every response carries a strict ``Content-Security-Policy`` (no inline script or style, no
  other host, no framing), ``X-Frame-Options: DENY``, ``nosniff``, ``no-referrer`` (a sign-in
  link or a reveal in the URL never leaks in a Referer) and, pages, ``Cache-Control: no-store``;
- ``guarded(page)`` wraps each page: the session cookie must name a live session (a GET without
  one goes to the sign-in page, anything else is 403), a POST must carry the session's CSRF
  token (else 403 before the handler runs: nothing is written), and the member's role must be
  at least the page's (else 403). Roles are looked up on every request, never trusted from the
  cookie;
- failures render as an HTML page with the right status (never a traceback): a key of another
  workspace is a 404 like any unknown one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from aiohttp import web

from gateway.console.page import PREFIX, PUBLIC, RANK, Handler, Page, render, see_other
from gateway.console.state import CSRF, KEY_SERVICE, SERVICES, SESSION
from gateway.errors import LimiterUnavailable, as_failure
from gateway.keys.model import ConsoleSession

log = logging.getLogger("gateway.console")

COOKIE = "gateway_console"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
}
STATIC = PREFIX + "/static/"


async def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)
    static = request.path.startswith(STATIC)
    response.headers["Cache-Control"] = "max-age=3600" if static else "no-store"


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a page: the HTTP errors aiohttp raises (404 of the router, 403 of the
    guard), the gateway's failures by their kind, and a bug as a 500 (logged)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # the admin app's error middleware would take it for a failure
            return web.Response(status=exc.status, headers=exc.headers)
        return render(request, "error.html", exc.status, title=exc.reason, detail=exc.text
                      if exc.text and not exc.text.startswith(f"{exc.status}:") else "")
    except Exception as exc:
        failure = as_failure(exc)
        if failure is None:
            log.exception("console page failed")
            return render(request, "error.html", 500, title="Something went wrong",
                          detail="The error is logged on the gateway.")
        kind = failure.kind
        return render(request, "error.html", kind.status, title=kind.title,
                      detail=str(failure) or kind.title)


def csrf_token(session_token: str) -> str:
    """The session's form token: derived from the cookie's secret, which a page on another
    site can neither read (HttpOnly) nor send along (SameSite=Strict)."""
    return hmac.new(session_token.encode(), b"console csrf", hashlib.sha256).hexdigest()


def forbidden(reason: str) -> web.HTTPForbidden:
    return web.HTTPForbidden(text=reason)


async def signed_in(request: web.Request) -> tuple[str, ConsoleSession] | None:
    token = request.cookies.get(COOKIE)
    if not token or len(token) > 100:
        return None
    found = await request.app[KEY_SERVICE].console.session(token)
    return None if found is None else (token, found)


def guarded(page: Page) -> Handler:
    """``page.handler`` behind the session, CSRF and role checks of this module."""
    if page.needs == PUBLIC:
        return page.handler

    async def handle(request: web.Request) -> web.StreamResponse:
        found = await signed_in(request)
        if found is None:
            if request.method == "GET":
                return see_other("/sign-in")
            raise forbidden("You are not signed in (or your session ended). Sign in again.")
        token, session = found
        request[SESSION], request[CSRF] = session, csrf_token(token)
        if request.method == "POST":
            sent = (await request.post()).get("csrf")
            if not isinstance(sent, str) or not hmac.compare_digest(sent, request[CSRF]):
                raise forbidden("The form's security token is missing or wrong. Reload the page "
                                "and try again.")
        if RANK[session.role] < RANK[page.needs]:
            raise forbidden(f"Your role ({session.role}) cannot do this.")
        return await page.handler(request)

    return handle


async def sign_in_allowed(request: web.Request) -> bool:
    """One more sign-in attempt from this client address within ``console.sign_in_rate_limit``
    (the shared limiter, so every node counts; the in-process one while it is down)."""
    services = request.app[SERVICES]
    limit = services.config.console.sign_in_rate_limit
    budget = f"console-sign-in:{request.remote or 'unknown'}"
    try:
        decision = await services.limiter.admit(budget, "sign-in", limit.requests, limit.window,
                                                None)
    except LimiterUnavailable:
        decision = await services.local_limiter.admit(budget, "sign-in", limit.requests,
                                                      limit.window, None)
    return decision.allowed
