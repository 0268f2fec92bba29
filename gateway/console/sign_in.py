"""Signing in with a single-use link, and out (README "Web console")."""

from __future__ import annotations

from aiohttp import web

from gateway.console.guard import COOKIE, sign_in_allowed
from gateway.console.page import PREFIX, PUBLIC, Page, render, see_other, session
from gateway.console.state import KEY_SERVICE, SERVICES

LINK_HELP = "gateway console-link --workspace WORKSPACE_ID --email EMAIL"


async def use_link(request: web.Request) -> web.StreamResponse:
    """Open a sign-in link: a session and its cookie, then on to the Keys page. The page that
    sets the cookie sends the browser on itself (a refresh from this site), since a redirect
    answering a click in a mail client would still count as cross-site, and SameSite=Strict
    would keep the new cookie from the Keys page."""
    if not await sign_in_allowed(request):
        return render(request, "signed_out.html", 429, link_help=LINK_HELP,
                      problem="Too many sign-in attempts from your address. Wait a minute.")
    signed = await request.app[KEY_SERVICE].console.sign_in(request.match_info["token"])
    if signed is None:
        return render(request, "signed_out.html", 403, link_help=LINK_HELP,
                      problem="This sign-in link is not valid: it was used already, it "
                              "expired (links last 15 minutes) or it was never made.")
    response = render(request, "signing_in.html", target=PREFIX + "/")
    console = request.app[SERVICES].config.console
    response.set_cookie(COOKIE, signed.token, path=PREFIX, httponly=True, samesite="Strict",
                        secure=not console.insecure_cookies)
    return response


async def signed_out(request: web.Request) -> web.Response:
    return render(request, "signed_out.html", link_help=LINK_HELP, problem="")


async def sign_out(request: web.Request) -> web.StreamResponse:
    """End the session in the store (every node stops accepting its cookie) and forget it."""
    await request.app[KEY_SERVICE].console.sign_out(session(request))
    response = see_other("/sign-in")
    response.del_cookie(COOKIE, path=PREFIX)
    return response


PAGES = (
    Page("GET", "/sign-in/{token}", use_link, PUBLIC),
    Page("GET", "/sign-in", signed_out, PUBLIC),
    Page("POST", "/sign-out", sign_out, "viewer"),
)
