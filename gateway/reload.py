"""SIGHUP: re-read the config file and put it in force without dropping a connection.

What changes live: ``routes`` (upstreams, limits, permissions, CORS ...), ``permissions``,
``defaults``, ``plans``, ``default_plan``, ``drain_timeout``, ``trusted_proxies``,
``failed_auth`` and ``secret_scanning`` (its public keys file is read again, its fetched keys
are dropped); the listeners' TLS certificate and key files are read again (the paths
themselves, like the addresses, need a restart). The ``Reloader`` builds a new ``Pipeline`` from
the new config and the process's open store, cache and limiter, and swaps it in: new requests
get it, requests already running finish on the old one. A route whose upstream targets (and
their ``health``) did not change keeps its pool (with its warm connections and its targets'
health); pools that only older pipelines use are closed once the requests on those pipelines are
done.

Everything else was opened or bound once at start-up (``listen``, ``admin_listen``, ``workers``,
``database``, ``redis``, ``keys``, ``key_cache``, ``key_store`` and any section added later): a
change there is logged as needing a restart, and the running value stays in force.

An invalid file changes nothing: one error naming the file, the field and the value is logged.
So does a file that removes (or renames) a plan some workspace's subscription still uses: one
error names each such plan and its workspaces (asked of the key store only when a plan is gone).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields, replace

from gateway.config import Config, RouteConfig, load_config
from gateway.errors import ConfigError, StoreUnavailable
from gateway.pipeline import Pipeline, PipelineHolder
from gateway.services import Services, open_store, upstream_group
from gateway.store import Store
from gateway.tls import Certificates
from gateway.upstream import UpstreamGroup

log = logging.getLogger("gateway.reload")

# Config fields a reload puts in force; every other field needs a restart (safe by default).
LIVE = frozenset(
    {"source", "routes", "implies", "defaults", "plans", "default_plan", "drain_timeout",
     "trusted_proxies", "failed_auth", "secret_scanning"}
)
REJECTED = "reload rejected, the running config stays in force: "
SHOWN_WORKSPACES = 10  # named per plan in the log line; the rest are counted


def keep_restart_only(running: Config, new: Config) -> tuple[Config, list[str]]:
    """``new`` with every restart-only field kept from ``running``, and the names of those
    fields whose value differed (they take effect at the next restart)."""
    kept = {f.name: getattr(running, f.name) for f in fields(Config) if f.name not in LIVE}
    changed = [name for name, value in kept.items() if getattr(new, name) != value]
    return replace(new, **kept), changed


def read_new_config(running: Config) -> Config | None:
    """The file ``running`` came from, read again, restart-only fields kept; None (and one
    error logged) when it is invalid."""
    try:
        new = load_config(running.source)
    except ConfigError as exc:
        log.error("reload rejected, the running config stays in force: %s", exc)
        return None
    config, changed = keep_restart_only(running, new)
    for name in changed:
        log.warning("reload: %s changed in %s; it takes effect at the next restart",
                    name, running.source)
    return config


async def plans_in_use(running: Config, new: Config, store: Store | None = None) -> str | None:
    """None when ``new`` keeps every plan a subscription uses; else the error to log (one line:
    each plan ``new`` drops that workspaces still use, and those workspaces). The store is
    asked only when a plan is gone; ``store`` None: one is opened from ``running`` for it (the
    supervisor has none open)."""
    gone = [name for name in running.plans if name not in new.plans]
    if not gone:
        return None
    try:
        if store is not None:
            used = await store.subscriptions.using(gone)
        else:
            async with open_store(running) as opened:
                used = await opened.subscriptions.using(gone)
    except (StoreUnavailable, ConfigError) as exc:
        return (f"{REJECTED}{new.source}: plans: cannot tell whether the removed plans "
                f"{', '.join(gone)} are still subscribed to ({exc})")
    if not used:
        return None
    parts = []
    for plan, workspaces in used.items():
        shown = ", ".join(workspaces[:SHOWN_WORKSPACES])
        more = len(workspaces) - SHOWN_WORKSPACES
        parts.append(f"plans.{plan} is removed but workspaces still subscribe to it: {shown}"
                     + (f" and {more} more" if more > 0 else ""))
    return f"{REJECTED}{new.source}: " + "; ".join(parts)


def _snapshot(
    services: Services, config: Config, upstreams: dict[str, UpstreamGroup] | None = None
) -> Services:
    """What one pipeline is built from: the open services, ``config``, its own pool dict."""
    return replace(services, config=config, upstreams=dict(upstreams or services.upstreams))


class Reloader:
    """Owns the pipeline of one process: swaps it on reload, and closes the upstream pools that
    swapped-out pipelines used.

    ``services`` is the process's one ``Services``; after a reload its ``config`` and
    ``upstreams`` are the ones in force (for the admin API and the metrics; ``upstreams`` stays
    the same dict, updated in place). Each pipeline is built from its own copy, so a request
    never sees another config's values mid-way."""

    def __init__(self, services: Services, certificates: Certificates | None = None) -> None:
        self.services = services
        self.certificates = certificates  # the listeners' TLS, read again on each reload
        self.holder = PipelineHolder(Pipeline(_snapshot(services, services.config)))
        self._swapped_out: list[Pipeline] = []  # those that may still run requests
        self._made: set[UpstreamGroup] = set()  # pools made here (open_services closes its own)
        self._retiring: set[asyncio.Task[None]] = set()
        self._reloads: set[asyncio.Task[bool]] = set()
        self._reloading = asyncio.Lock()  # one reload at a time, in the order asked
        self._closed = False

    @property
    def config(self) -> Config:
        return self.services.config

    def on_sighup(self) -> None:
        """The SIGHUP handler: reload in a task of its own (it may ask the key store)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Read the config file again and put it in force; False when it is invalid or drops
        a plan still subscribed to (one error logged, the running config stays)."""
        async with self._reloading:
            config = None if self._closed else read_new_config(self.config)
            if config is None:
                return False
            refused = await plans_in_use(self.config, config, self.services.store)
            if refused is not None:
                log.error("%s", refused)
                return False
            if self._closed:
                return False
            self.apply(config)
            return True

    def apply(self, config: Config) -> None:
        """Put ``config`` in force for new requests, its restart-only fields kept as running
        (a worker gets the config its supervisor has read and checked)."""
        if self._closed:
            return
        config, _ = keep_restart_only(self.config, config)
        services = self.services
        old_upstreams = list(services.upstreams.values())
        old_routes = {r.name: r for r in services.config.routes}
        upstreams = {
            r.name: self._group(r, old_routes.get(r.name)) for r in config.routes if r.upstreams
        }
        self._swap(Pipeline(_snapshot(services, config, upstreams)))
        services.config = config
        services.upstreams.clear()  # the same dict: whoever watches it sees the new pools
        services.upstreams.update(upstreams)
        self._close_unused(old_upstreams, list(upstreams.values()))
        if self.certificates is not None:
            self.certificates.reload()
        log.info("config reloaded from %s: %d routes", config.source, len(config.routes))

    def _swap(self, pipeline: Pipeline) -> None:
        self._swapped_out = [p for p in self._swapped_out if p.in_flight]
        self._swapped_out.append(self.holder.pipeline)
        self.holder.pipeline = pipeline

    def _close_unused(self, old: list[UpstreamGroup], new: list[UpstreamGroup]) -> None:
        in_use = set(map(id, new))
        unused = [group for group in old if id(group) not in in_use]
        if unused:
            task = asyncio.get_running_loop().create_task(
                self._retire(list(self._swapped_out), unused)
            )
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _group(self, route: RouteConfig, before: RouteConfig | None) -> UpstreamGroup:
        if before is not None and (before.upstreams, before.health) == (
            route.upstreams, route.health
        ):
            return self.services.upstreams[route.name]
        group = upstream_group(route)
        group.start()
        self._made.add(group)
        return group

    async def _retire(self, pipelines: list[Pipeline], groups: list[UpstreamGroup]) -> None:
        for pipeline in pipelines:  # any of them may still be sending to these upstreams
            await pipeline.wait_idle()
        for group in groups:
            await group.close()
            self._made.discard(group)
        log.info("closed %d upstream pools the previous config used", len(groups))

    async def close(self) -> None:
        """At shutdown, once the proxy has drained: close every pool made here."""
        self._closed = True
        for task in [*self._retiring, *self._reloads]:
            task.cancel()
        for group in list(self._made):
            await group.close()
        self._made.clear()
