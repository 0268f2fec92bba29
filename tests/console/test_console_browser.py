"""The web console in a real browser (issue 16 "Done means", README "Web console"), on SQLite
and on Postgres: sign-in links, cookies, the key lifecycle from the forms to the proxy, roles,
CSRF, escaping, sign-out, workspaces, and screenshots of every page for the README."""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.console.conftest import CHROMIUM, Console, run_async, seed_keys, seed_usage

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

XSS_NAME = "<img src=x onerror=alert(1)>"
KEY_PATTERN = re.compile(r"sk_(live|test)_[A-Za-z0-9]{32}")


def create_key(page: Any, console: Console, name: str, *, permissions: tuple[str, ...] = ("read",),
               description: str = "") -> str:
    """Fill Create key and submit it; the plaintext from the Shown once page."""
    page.get_by_role("link", name="Create key").click()
    page.get_by_label("Name").fill(name)
    if description:
        page.get_by_label("Description").fill(description)
    page.get_by_label("Expires").select_option("30")
    for permission in permissions:
        page.get_by_role("checkbox", name=permission, exact=True).check()
    page.get_by_role("button", name="Create key").click()
    page.wait_for_url(re.compile(r".*/shown\?reveal="))
    return str(page.locator("#plaintext").inner_text()).strip()


def key_link(page: Any, name: str) -> Any:
    return page.get_by_role("link", name=name, exact=True)


def raw(url: str, cookie: str | None = None, data: bytes | None = None) -> tuple[int, Any]:
    """A request outside the browser: (status, headers), redirects not followed."""
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url, data=data)
    if cookie:
        request.add_header("Cookie", cookie)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return int(response.status), response.headers
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.headers


# sign-in ---------------------------------------------------------------------------------------
def test_a_sign_in_link_works_once_and_sets_a_strict_http_only_cookie(
    browser: Any, console: Console
) -> None:
    link = console.link(console.emails["admin"])
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(link)
    assert response.headers["x-frame-options"] == "DENY"
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.wait_for_url(console.url + "/")
    assert page.get_by_role("heading", name="API keys").is_visible()
    assert page.get_by_role("button", name="Sign out").is_visible()
    [cookie] = context.cookies()
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["secure"] is True  # Chromium keeps it on http://127.0.0.1 (loopback)
    assert cookie["path"] == "/console"
    console.shot(page, "keys-empty", full_page=False)

    second = browser.new_context()
    again = second.new_page()
    assert again.goto(link).status == 403  # used: no second session
    assert again.get_by_text("This sign-in link is not valid").is_visible()
    assert second.cookies() == []
    assert again.goto(console.url + "/").url == console.url + "/sign-in"
    console.shot(again, "sign-in", full_page=False)
    context.close()
    second.close()


# the key lifecycle -----------------------------------------------------------------------------
def test_a_key_made_in_the_form_is_shown_once_works_and_is_revoked_with_confirmation(
    browser: Any, console: Console
) -> None:
    page = console.sign_in(browser, "admin")
    page.get_by_role("link", name="Create key").click()
    console.shot(page, "create-key")
    page.get_by_role("link", name="Cancel").click()
    plaintext = create_key(page, console, "billing service", description="nightly invoices")
    assert KEY_PATTERN.fullmatch(plaintext)
    assert page.get_by_role("button", name="Copy").is_visible()
    assert page.get_by_text("will not be shown again").is_visible()
    assert f"Bearer {plaintext}" in page.locator("pre").inner_text()  # the curl example
    console.shot(page, "shown-once", full_page=False)
    assert console.proxy(plaintext) == 200

    page.reload()  # the reveal was taken: never shown again
    assert plaintext not in page.content()
    assert page.get_by_text("shown once and cannot be shown again").is_visible()

    page.get_by_role("link", name="Keys", exact=True).click()
    row = page.get_by_role("row").filter(has=key_link(page, "billing service"))
    masked = f"{plaintext[:12]}…{plaintext[-4:]}"
    assert masked in row.inner_text()
    assert plaintext not in page.content()

    key_link(page, "billing service").click()
    assert page.get_by_role("heading", name="billing service").is_visible()
    page.get_by_role("button", name="Revoke").click()
    dialog = page.get_by_role("dialog")
    assert dialog.is_visible()
    console.shot(page, "revoke-dialog", full_page=False)
    dialog.get_by_role("button", name="Cancel").click()
    assert console.proxy(plaintext) == 200  # cancelled: nothing happened
    page.get_by_role("button", name="Revoke").click()
    page.get_by_role("dialog").get_by_role("button", name="Revoke").click()
    assert page.get_by_text("Key revoked.").is_visible()
    assert page.locator(".page-head .status").inner_text() == "revoked"
    console.until_proxy(plaintext, 401)


def test_rotate_with_grace_then_disable_and_enable(browser: Any, console: Console) -> None:
    page = console.sign_in(browser, "admin")
    old = create_key(page, console, "worker", permissions=("write",))
    page.get_by_role("link", name="Go to the key's page").click()
    page.get_by_label("Grace period").select_option("86400")
    page.get_by_role("button", name="Rotate").click()
    page.wait_for_url(re.compile(r".*/shown\?reveal="))
    new = page.locator("#plaintext").inner_text().strip()
    assert KEY_PATTERN.fullmatch(new) and new != old
    assert console.proxy(new) == 200 and console.proxy(old) == 200  # the grace period
    page.get_by_role("link", name="Go to the key's page").click()
    chain = page.locator("ol.chain li")
    assert chain.count() == 2
    assert f"{old[:12]}…{old[-4:]}" in chain.nth(0).inner_text()

    page.get_by_role("button", name="Disable").click()
    assert page.get_by_text("Key disabled.").is_visible()
    console.until_proxy(new, 401)
    page.get_by_role("button", name="Enable").click()
    assert page.get_by_text("Key enabled.").is_visible()
    console.until_proxy(new, 200)


def test_validation_errors_are_shown_next_to_the_field_with_the_form_kept(
    browser: Any, console: Console
) -> None:
    page = console.sign_in(browser, "admin")
    page.get_by_role("link", name="Create key").click()
    page.get_by_label("Name").fill("   ")
    page.get_by_label("Description").fill("kept as typed")
    page.get_by_text("Scopes, origins and limits").click()
    page.get_by_label("Rate limit (requests per minute)").fill("lots")
    page.get_by_role("button", name="Create key").click()
    assert page.get_by_label("Name").get_attribute("aria-invalid") == "true"
    assert "characters" in page.locator("#name-error").inner_text()
    assert page.locator("#rate_limit_override-error").inner_text() == \
        "must be a whole number of 1 or more, or empty"
    assert page.get_by_label("Description").input_value() == "kept as typed"
    assert page.get_by_label("Rate limit (requests per minute)").input_value() == "lots"
    console.shot(page, "create-key-errors")
    page.get_by_label("Name").fill("fixed")
    page.get_by_label("Rate limit (requests per minute)").fill("")
    page.get_by_label("Allowed IPs").fill("203.0.113.0/24\n10.0.0.1/8")  # README "IP allowlists"
    page.get_by_role("button", name="Create key").click()
    assert page.locator("#allowed_ips-error").inner_text() == \
        "'10.0.0.1/8' has host bits set (the network is 10.0.0.0/8)"
    page.get_by_label("Allowed IPs").fill("203.0.113.0/24\n10.0.0.0/8")
    page.get_by_role("button", name="Create key").click()
    page.wait_for_url(re.compile(r".*/shown\?reveal="))


def test_a_name_with_markup_renders_as_text_and_runs_nothing(
    browser: Any, console: Console
) -> None:
    page = console.sign_in(browser, "admin")
    fired: list[str] = []
    page.on("dialog", lambda dialog: (fired.append(dialog.message), dialog.dismiss()))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    create_key(page, console, XSS_NAME)
    assert page.get_by_role("heading", name=XSS_NAME).is_visible()
    page.get_by_role("link", name="Keys", exact=True).click()
    assert key_link(page, XSS_NAME).is_visible()  # the text, as typed
    assert page.locator("img").count() == 0
    key_link(page, XSS_NAME).click()
    assert page.locator("img").count() == 0
    page.get_by_role("link", name="Audit log").click()
    assert page.locator("img").count() == 0
    assert fired == [] and errors == []


# CSRF and roles ----------------------------------------------------------------------------------
def test_a_post_without_the_csrf_token_is_403_and_writes_nothing(
    browser: Any, console: Console
) -> None:
    page = console.sign_in(browser, "admin")
    plaintext = create_key(page, console, "guarded")
    key_id = page.url.split("/keys/")[1].split("/")[0]
    # the browser's own cookie, as a forged cross-site form would carry it (if SameSite let it)
    for form in ({}, {"csrf": "0" * 64}):
        response = page.request.post(f"{console.url}/keys/{key_id}/revoke", form=form)
        assert response.status == 403
    response = page.request.post(f"{console.url}/keys", form={"name": "forged"})
    assert response.status == 403
    assert console.proxy(plaintext) == 200
    page.goto(console.url + "/")
    assert key_link(page, "forged").count() == 0
    assert page.locator("p.count").inner_text() == "1 key"


def test_a_viewer_sees_no_change_controls_and_a_forged_viewer_post_is_403(
    browser: Any, console: Console
) -> None:
    admin = console.sign_in(browser, "admin")
    plaintext = create_key(admin, console, "read me")
    key_url = admin.url.split("/shown")[0]
    console.member("viewer")
    page = console.sign_in(browser, "viewer")
    assert key_link(page, "read me").is_visible()  # a viewer reads every key
    assert page.get_by_role("link", name="Create key").count() == 0
    key_link(page, "read me").click()
    for control in ("Rotate", "Disable", "Enable", "Revoke"):
        assert page.get_by_role("button", name=control).count() == 0
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")  # their own token
    for action in ("revoke", "disable", "rotate"):
        response = page.request.post(f"{key_url}/{action}", form={"csrf": csrf, "grace": "0"})
        assert response.status == 403, action
    response = page.request.post(f"{console.url}/keys", form={"csrf": csrf, "name": "mine"})
    assert response.status == 403
    assert page.request.get(f"{console.url}/keys/new").status == 403
    assert console.proxy(plaintext) == 200
    page.get_by_role("link", name="Members").click()
    assert page.get_by_role("button", name="Add member").count() == 0


def test_a_member_sees_and_changes_only_their_own_keys(browser: Any, console: Console) -> None:
    admin = console.sign_in(browser, "admin")
    create_key(admin, console, "admin's key")
    admins_key = admin.url.split("/shown")[0]
    console.member("member")
    page = console.sign_in(browser, "member")
    assert page.locator("p.count").inner_text() == "0 keys of yours"
    own = create_key(page, console, "my key")
    page.get_by_role("link", name="Keys", exact=True).click()
    assert key_link(page, "my key").is_visible()
    assert key_link(page, "admin's key").count() == 0
    assert page.get_by_label("Owner").count() == 0  # no owner filter: theirs only
    assert page.goto(admins_key).status == 404
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    assert page.request.post(admins_key + "/revoke", form={"csrf": csrf}).status == 404
    page.goto(console.url + "/")
    key_link(page, "my key").click()
    assert "member@example.com" in page.locator("dl.fields").inner_text()  # the owner
    page.get_by_role("button", name="Disable").click()
    console.until_proxy(own, 401)


def test_another_workspace_is_invisible(browser: Any, console: Console) -> None:
    other = console.cli("workspaces", "create", "--name", "globex")["id"]
    console.cli("members", "add", "--workspace", other, "--email", "boss@globex.test",
                "--role", "owner")
    theirs, _ = console.cli_key("--workspace", other, "--name", "globex secret")
    page = console.sign_in(browser, "admin")
    assert key_link(page, "globex secret").count() == 0
    assert page.goto(f"{console.url}/keys/{theirs['key_id']}").status == 404
    page.goto(f"{console.url}/?q=globex")
    assert page.locator("p.count").inner_text() == "0 keys"
    page.goto(f"{console.url}/members")
    assert "boss@globex.test" not in page.content()
    page.goto(f"{console.url}/audit?target={theirs['key_id']}")
    assert page.get_by_text("No events.").is_visible()


# sign-out, members, audit, plan ----------------------------------------------------------------
def test_sign_out_ends_the_session_on_the_server(browser: Any, console: Console) -> None:
    page = console.sign_in(browser, "admin")
    [cookie] = page.context.cookies()
    stolen = f"{cookie['name']}={cookie['value']}"
    assert raw(console.url + "/", stolen)[0] == 200
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url(console.url + "/sign-in")
    assert page.context.cookies() == []
    status, headers = raw(console.url + "/", stolen)  # the old cookie, replayed
    assert status == 303 and headers["Location"] == "/console/sign-in"
    assert raw(console.url + "/keys", stolen, b"name=x")[0] == 403


def test_admins_make_sign_in_links_on_the_members_page(browser: Any, console: Console) -> None:
    page = console.sign_in(browser, "admin")
    page.get_by_role("link", name="Members").click()
    page.get_by_label("Email").fill("not an email")
    page.get_by_role("button", name="Add member").click()
    assert page.locator("#email-error").is_visible()
    assert page.get_by_label("Email").input_value() == "not an email"
    page.get_by_label("Email").fill("dev@example.com")
    page.get_by_label("Role", exact=True).select_option("member")
    page.get_by_role("button", name="Add member").click()
    assert page.get_by_text("Member added.").is_visible()
    page.get_by_role("button", name="Sign-in link for dev@example.com").click()
    link = page.locator("#sign-in-link").inner_text().strip()
    assert link.startswith(console.url + "/sign-in/")
    console.shot(page, "members")
    other = browser.new_context().new_page()
    other.goto(link)
    other.wait_for_url(console.url + "/")
    assert "dev@example.com" in other.locator(".who").inner_text()
    page.goto(console.url + "/audit")
    assert page.get_by_role("cell", name="console.link").first.is_visible()


def test_the_audit_log_and_the_plan_pages(browser: Any, console: Console) -> None:
    page = console.sign_in(browser, "admin")
    plaintext = create_key(page, console, "reports")
    for _ in range(3):
        assert console.proxy(plaintext) == 200
    page.get_by_role("link", name="Audit log").click()
    page.get_by_label("Action").select_option("key.create")
    page.get_by_role("button", name="Filter").click()
    assert page.get_by_role("cell", name="key.create").count() == 1
    assert page.get_by_role("cell", name="admin@example.com").count() == 1  # the actor
    page.get_by_label("Action").select_option("")
    page.get_by_role("button", name="Filter").click()
    console.shot(page, "audit-log")
    page.get_by_role("link", name="Plan").click()
    assert page.get_by_role("heading", name="Plan: team").is_visible()
    assert page.locator("progress").count() == 2
    assert page.goto(console.url + "/audit?before=x").status == 400
    assert page.goto(console.url + "/?status=lost").status == 400
    assert "status" in page.content()
    assert page.goto(console.url + "/keys/key_nope?range=1y").status == 404


# ten thousand keys, and the pictures --------------------------------------------------------------
def test_the_keys_page_is_fast_with_ten_thousand_keys(browser: Any, console: Console) -> None:
    run_async(lambda: seed_keys(console.database, console.workspace, 10_000))
    page = console.sign_in(browser, "admin")
    assert page.locator("p.count").inner_text() == "10000 keys"
    assert page.locator("table.keys tbody tr").count() == 50
    assert key_link(page, "service 09999").is_visible()  # newest first
    [cookie] = page.context.cookies()
    jar = f"{cookie['name']}={cookie['value']}"
    for query in ("", "?q=service+04242", "?environment=test&status=active", "?q=9999",
                  "?include_revoked=1&owner=usr_nobody"):
        started = time.monotonic()
        assert raw(console.url + "/" + query, jar)[0] == 200
        took = time.monotonic() - started
        assert took < 2.0, (query, took)  # typically 30-150 ms
    page.get_by_label("Search").fill("service 04242")
    page.get_by_role("button", name="Filter").click()
    assert page.locator("p.count").inner_text() == "1 key"
    page.goto(console.url + "/?environment=test")
    assert page.locator("p.count").inner_text() == "2500 keys"
    page.get_by_role("link", name="Next page").click()
    assert key_link(page, "service 09796").is_visible()  # the 51st newest test key
    page.get_by_role("link", name="First page").click()
    assert key_link(page, "service 09996").is_visible()


def test_screenshots_of_a_workspace_in_use(browser: Any, console: Console) -> None:
    """The pictures of the README: keys with traffic, a key's usage, the plan."""
    console.member("member")
    made = [console.cli_key("--workspace", console.workspace, "--name", name,
                            "--permission", "read", "--user-email", email)[0]
            for name, email in (("checkout-api", "admin@example.com"),
                                ("mobile app", "member@example.com"),
                                ("nightly export", "admin@example.com"))]
    rotated = console.cli_key("--workspace", console.workspace, "--name", "search indexer",
                              "--environment", "test")[0]
    console.gateway.command("keys", "rotate", rotated["key_id"], "--grace-period", "3600")
    run_async(lambda: seed_usage(console.database, console.workspace,
                                 [k["key_id"] for k in made], days=30))
    page = console.sign_in(browser, "admin")
    assert page.locator("svg.spark").count() == 5
    console.shot(page, "keys", full_page=False)
    key_link(page, "checkout-api").click()
    page.get_by_role("link", name="7d").click()
    assert page.locator("figure.chart rect").count() > 100
    console.shot(page, "key-detail")
    page.get_by_role("link", name="Plan").click()
    assert page.locator("figure.chart rect").count() > 30
    console.shot(page, "plan")
    page.goto(console.url + "/?q=search+indexer&include_revoked=1")
    key_link(page, "search indexer").first.click()
    assert page.locator("ol.chain li").count() == 2
