"""The web console's tables (README "Web console"): single-use sign-in links, sessions, and the
sealed plaintext of a key waiting for the one page that shows it. Every token is stored hashed;
taking a link or a reveal is one ``DELETE … RETURNING``, so two nodes can never both use one.
A session is read with its member (a join): removing a member ends its sessions."""

from __future__ import annotations

from datetime import datetime

from gateway.keys.model import ConsoleSession
from gateway.store.db import Db

SESSION = (
    "SELECT s.token_hash, s.workspace_id, s.user_id, m.email, m.role, s.created_at, "
    "s.last_seen_at FROM console_sessions s JOIN members m ON m.user_id = s.user_id "
    "AND m.workspace_id = s.workspace_id WHERE s.token_hash = $1"
)
TAKE_LINK = (
    "DELETE FROM console_links WHERE token_hash = $1 RETURNING workspace_id, user_id, expires_at"
)
TAKE_REVEAL = (
    "DELETE FROM console_reveals WHERE reveal_id = $1 AND session_hash = $2 "
    "RETURNING key_id, sealed, expires_at"
)


class ConsoleTable:
    def __init__(self, db: Db) -> None:
        self._db = db
        self._dialect = db.dialect

    def _stamp(self, value: datetime) -> object:
        return self._dialect.timestamp(value)

    # sign-in links ---------------------------------------------------------------------------
    async def add_link(
        self, token_hash: str, workspace_id: str, user_id: str, now: datetime, expires: datetime
    ) -> None:
        """Store a link (and drop the expired ones: links are few, made by hand)."""
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM console_links WHERE expires_at <= $1", self._stamp(now))
            await tx.execute(
                "INSERT INTO console_links (token_hash, workspace_id, user_id, created_at, "
                "expires_at) VALUES ($1, $2, $3, $4, $5)",
                token_hash, workspace_id, user_id, self._stamp(now), self._stamp(expires),
            )

    async def take_link(self, token_hash: str, now: datetime) -> tuple[str, str] | None:
        """(workspace_id, user_id) of the link, which is gone from now on; None when unknown,
        used or expired."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(TAKE_LINK, token_hash)
        if row is None or self._dialect.read_timestamp(row[2]) <= now:
            return None
        return str(row[0]), str(row[1])

    # sessions --------------------------------------------------------------------------------
    async def add_session(
        self, token_hash: str, workspace_id: str, user_id: str, now: datetime, idle_before: datetime
    ) -> None:
        """Store a session (and drop the ones idle since before ``idle_before``)."""
        async with self._db.transaction() as tx:
            await tx.execute("DELETE FROM console_sessions WHERE last_seen_at < $1",
                             self._stamp(idle_before))
            await tx.execute(
                "INSERT INTO console_sessions (token_hash, workspace_id, user_id, created_at, "
                "last_seen_at) VALUES ($1, $2, $3, $4, $4)",
                token_hash, workspace_id, user_id, self._stamp(now),
            )

    async def session(self, token_hash: str) -> ConsoleSession | None:
        row = await self._db.fetchrow(SESSION, token_hash)
        if row is None:
            return None
        read = self._dialect.read_timestamp
        return ConsoleSession(str(row[0]), str(row[1]), str(row[2]), str(row[3]), str(row[4]),
                              read(row[5]), read(row[6]))

    async def touch(self, token_hash: str, now: datetime) -> None:
        await self._db.execute(
            "UPDATE console_sessions SET last_seen_at = $2 WHERE token_hash = $1",
            token_hash, self._stamp(now),
        )

    async def end(self, token_hash: str) -> None:
        await self._db.execute("DELETE FROM console_sessions WHERE token_hash = $1", token_hash)

    # reveals ---------------------------------------------------------------------------------
    async def add_reveal(
        self, reveal_id: str, session_hash: str, key_id: str, sealed: str, expires: datetime
    ) -> None:
        await self._db.execute(
            "INSERT INTO console_reveals (reveal_id, session_hash, key_id, sealed, expires_at) "
            "VALUES ($1, $2, $3, $4, $5)",
            reveal_id, session_hash, key_id, sealed, self._stamp(expires),
        )

    async def take_reveal(
        self, reveal_id: str, session_hash: str, now: datetime
    ) -> tuple[str, str] | None:
        """(key_id, sealed) of a reveal of this session, gone from now on; None when unknown,
        taken, another session's or expired. Expired ones are dropped on the way."""
        async with self._db.transaction() as tx:
            row = await tx.fetchrow(TAKE_REVEAL, reveal_id, session_hash)
            await tx.execute("DELETE FROM console_reveals WHERE expires_at <= $1",
                             self._stamp(now))
        if row is None or self._dialect.read_timestamp(row[2]) <= now:
            return None
        return str(row[0]), str(row[1])
