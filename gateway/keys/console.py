"""Who may use the web console, as service functions (README "Web console"): sign-in links,
sessions and the one showing of a new key's plaintext. The CLI (``gateway console-link``) and
the console's Members page both make links here, so they are made, stored and audited alike.

Tokens are 256 random bits, handed out once and stored hashed (``KeyHasher``, the keys' own
hash). A plaintext key waiting for its page is stored XOR a one-time pad of its own length that
only the browser holds: the store alone cannot read it, the URL alone holds no key, and taking
it deletes it, so reloading the page never shows it again.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from gateway.config import Config, ConsoleConfig
from gateway.keys.model import ConsoleSession, KeyHasher, Member, utcnow
from gateway.store import Store

Audit = Callable[[str | None, str, str, str | None, dict[str, Any]], Awaitable[None]]
MemberByEmail = Callable[[str, str], Awaitable[Member]]
TOUCH_EVERY = timedelta(seconds=60)  # a session's last_seen_at is written at most this often
REVEAL_TTL = timedelta(minutes=5)  # a created key's page must be opened within this


SIGN_IN_PATH = "/console/sign-in/"
WILDCARD_HOSTS = {"0.0.0.0": "127.0.0.1", "::": "[::1]", "": "127.0.0.1"}


def console_url(config: Config) -> str:
    """Where browsers reach the console: ``console.public_url``, else the admin listener
    (a wildcard address as the loopback one)."""
    if config.console.public_url is not None:
        return config.console.public_url
    listen = config.admin_listen
    host = WILDCARD_HOSTS.get(listen.host, f"[{listen.host}]" if ":" in listen.host
                              else listen.host)
    scheme = "https" if listen.tls is not None else "http"
    return f"{scheme}://{host}:{listen.port}"


def sign_in_url(config: Config, token: str) -> str:
    return console_url(config) + SIGN_IN_PATH + token


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str  # the cookie's value: shown to this browser only, stored hashed
    session: ConsoleSession


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _xor(data: bytes, pad: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(data, pad, strict=True))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ConsoleAccess:
    def __init__(
        self, store: Store, hasher: KeyHasher, config: Callable[[], ConsoleConfig],
        audit: Audit, member_by_email: MemberByEmail,
    ) -> None:
        self._table = store.console
        self._hash = hasher
        self._config = config
        self._audit = audit
        self._member_by_email = member_by_email

    async def make_link(self, workspace_id: str, email: str, actor: str | None) -> str:
        """A sign-in token for the member ``email`` (``MemberNotFound`` for anyone else),
        valid ``console.link_ttl`` seconds, once."""
        member = await self._member_by_email(workspace_id, email.strip().lower())
        token, now = new_token(), utcnow()
        expires = now + timedelta(seconds=self._config().link_ttl)
        await self._table.add_link(self._hash(token), workspace_id, member.user_id, now, expires)
        await self._audit(actor, "console.link", member.user_id, workspace_id,
                          {"email": member.email, "expires_at": expires.isoformat()})
        return token

    async def sign_in(self, link_token: str) -> SignedIn | None:
        """Use a link: a new session, or None (unknown, used, expired, or its member is gone)."""
        now = utcnow()
        taken = await self._table.take_link(self._hash(link_token), now)
        if taken is None:
            return None
        workspace_id, user_id = taken
        token = new_token()
        idle_before = now - timedelta(seconds=self._config().idle_timeout)
        await self._table.add_session(self._hash(token), workspace_id, user_id, now, idle_before)
        session = await self._table.session(self._hash(token))
        if session is None:  # the member was removed since the link was made
            await self._table.end(self._hash(token))
            return None
        await self._audit(user_id, "console.sign_in", user_id, workspace_id, {})
        return SignedIn(token, session)

    async def session(self, token: str) -> ConsoleSession | None:
        """The live session of a cookie, or None: unknown, ended, idle past
        ``console.idle_timeout`` (then ended here), or its member removed."""
        session = await self._table.session(self._hash(token))
        if session is None:
            return None
        now = utcnow()
        if now - session.last_seen_at > timedelta(seconds=self._config().idle_timeout):
            await self._table.end(session.token_hash)
            return None
        if now - session.last_seen_at > TOUCH_EVERY:
            await self._table.touch(session.token_hash, now)
        return session

    async def sign_out(self, session: ConsoleSession) -> None:
        await self._table.end(session.token_hash)
        await self._audit(session.user_id, "console.sign_out", session.user_id,
                          session.workspace_id, {})

    async def seal(self, session: ConsoleSession, key_id: str, plaintext: str) -> str:
        """Keep ``plaintext`` for this session's next page; returns the reveal token
        (``<id>.<pad>``) the page's URL carries."""
        data = plaintext.encode()
        pad = secrets.token_bytes(len(data))
        reveal_id = secrets.token_urlsafe(16)
        await self._table.add_reveal(reveal_id, session.token_hash, key_id,
                                     _b64(_xor(data, pad)), utcnow() + REVEAL_TTL)
        return f"{reveal_id}.{_b64(pad)}"

    async def reveal(self, session: ConsoleSession, token: str) -> tuple[str, str] | None:
        """(key_id, plaintext) once; None ever after, for another session, or a bad token."""
        reveal_id, _, pad_text = token.partition(".")
        taken = await self._table.take_reveal(reveal_id, session.token_hash, utcnow())
        if taken is None:
            return None
        key_id, sealed = taken
        try:
            return key_id, _xor(_unb64(sealed), _unb64(pad_text)).decode()
        except (ValueError, UnicodeDecodeError):  # a pad that is not this reveal's
            return None
