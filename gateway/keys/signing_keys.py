"""The public keys GitHub signs its secret-scanning reports with (README "Leaked keys"), one
``SigningKeys`` per process and config.

From a file, they are the keys the config read (a reload reads the file again and brings a new
``SigningKeys``). From a URL, they are fetched on the first report and kept ``cache_ttl``
seconds. A report naming an identifier that is not among them fetches the document again, at
most once per ``refetch_interval`` (GitHub has rotated its key: the new one is listed now), and
so does a fetch that failed: a flood of forged identifiers, or an unreachable URL, costs at most
one fetch per interval. While a refresh fails the keys fetched before stay in use; with none at
all a report is answered 503 ``signing_keys_unavailable`` (GitHub sends it again later).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp

from gateway.config import GithubScanningConfig
from gateway.errors import SIGNING_KEYS_UNAVAILABLE, GatewayError
from gateway.keys.signature import KeysDocumentError, load_keys, read_keys_document
from gateway.metrics import Metrics
from gateway.version import gateway_version

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePublicKey as PublicKey

log = logging.getLogger("gateway.secret_scanning")

MAX_DOCUMENT_BYTES = 1024 * 1024
USER_AGENT = f"apikey-gateway/{gateway_version()}"  # GitHub's API refuses requests without one


class SigningKeys:
    def __init__(
        self, config: GithubScanningConfig, metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._source = config.public_keys
        self._metrics = metrics
        self._clock = clock
        self._keys: dict[str, PublicKey] = load_keys(self._source.keys)
        self._fetched_at: float | None = None  # of the keys in use (URL only)
        self._tried_at: float | None = None  # of the last fetch, whatever its result
        self._fetches = 0  # done, whatever their result
        self._fetching = asyncio.Lock()

    async def key(self, identifier: str) -> PublicKey | None:
        """The public key ``identifier`` names; None: none listed under it."""
        if not self._source.is_url:
            return self._keys.get(identifier)
        if self._fetching.locked() or self._expired():
            await self._refresh(self._fetches)
        key = self._keys.get(identifier)
        if key is None and (self._fetching.locked() or self._may_fetch()):
            await self._refresh(self._fetches)
            key = self._keys.get(identifier)
        if key is None and not self._keys:
            raise GatewayError(SIGNING_KEYS_UNAVAILABLE, "the public keys of secret-scanning "
                               "reports could not be fetched; try again later")
        return key

    def _expired(self) -> bool:
        if self._fetched_at is not None and \
                self._clock() - self._fetched_at < self.config.cache_ttl:
            return False
        return self._may_fetch()

    def _may_fetch(self) -> bool:
        return self._tried_at is None or \
            self._clock() - self._tried_at >= self.config.refetch_interval

    async def _refresh(self, seen: int) -> None:
        """Fetch once; callers that queued behind a fetch that ended after they looked
        (``seen``: the fetches done then) take its result instead of fetching again."""
        async with self._fetching:
            if self._fetches != seen:
                return
            self._tried_at = self._clock()
            keys = await self._fetch()
            self._fetches += 1
            if keys is not None:
                self._keys, self._fetched_at = keys, self._clock()
            if self._metrics is not None:
                self._metrics.signing_key_fetches.labels("ok" if keys else "failed").inc()

    async def _fetch(self) -> dict[str, PublicKey] | None:
        url = self._source.location
        timeout = aiohttp.ClientTimeout(total=self.config.fetch_timeout)
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session, \
                    session.get(url, headers=headers, allow_redirects=False) as response:
                if response.status != 200:
                    raise KeysDocumentError(f"answered {response.status}")
                raw = await response.content.read(MAX_DOCUMENT_BYTES + 1)
                if len(raw) > MAX_DOCUMENT_BYTES:
                    raise KeysDocumentError(f"over {MAX_DOCUMENT_BYTES} bytes")
            return load_keys(read_keys_document(raw))
        except (aiohttp.ClientError, TimeoutError, KeysDocumentError) as exc:
            log.warning("secret scanning: cannot fetch the public keys from %s: %s", url,
                        str(exc) or exc.__class__.__name__)
            return None


class SigningKeysHolder:
    """The ``SigningKeys`` of the config in force: a reload (a new config section) brings new
    ones, and with them the file read again or the URL's keys fetched afresh."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._metrics = metrics
        self._current: SigningKeys | None = None

    def of(self, config: GithubScanningConfig) -> SigningKeys:
        if self._current is None or self._current.config is not config:
            self._current = SigningKeys(config, self._metrics)
        return self._current
