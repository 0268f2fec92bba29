"""A Redis Cluster for the limiter (README "Redis Cluster"): one ``RespConnection`` per master,
each command sent to the master of its key's slot.

The limiter does not change: it hands over one tick's batch of commands with a key of each
(``pipeline``), and gets the replies back in order. Here the batch is split by master and each
part written at once on that master's connection, so a tick costs at most one pipelined write
per master, all in flight together. Every key of one decision carries the budget's ``{…}`` hash
tag (a workspace's quota, ``{q:…}``), so each command has one slot.

* **Slot map** from ``CLUSTER SLOTS`` of a seed, then of any reachable master; refreshed in the
  background after a ``MOVED``, a lost master, or a command for a slot without one, every
  ``retry_interval`` until every slot has a reachable master again (failover: the promoted
  replica appears there).
* **Redirections**, at most ``FOLLOW`` per command within the batch's deadline: ``MOVED``
  (the map is refreshed; the command goes to the slot's new master), ``ASK`` (a slot being
  migrated: ``ASKING`` and the command on the importing master), ``TRYAGAIN`` (some of the
  decision's keys moved already, the others not yet: the same again after ``TRYAGAIN_PAUSE``).
  ``CLUSTERDOWN``, one redirection too many and the deadline are errors of that command alone;
  the limiter applies ``on_limiter_error`` to its request.
* **A master that fails** or does not answer within ``limiter.timeout``: its commands fail, its
  connection is dropped, and until the map gives its slots a reachable master, commands for
  them fail at once without waiting. Commands on the other masters do not fail; while a master
  stalls (rather than dies), those batched with its own wait for the deadline, once.
* **Scripts** broadcast with ``keep`` (SCRIPT LOAD) go to every master now and to each master
  that joins later; a NOSCRIPT from one master reloads them everywhere (``RedisRateLimiter``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

from redis.crc import key_slot

from gateway.config.parsers import cluster_seeds, node_url
from gateway.limiter.resp import ReplyError, RespConnection, encode

log = logging.getLogger("gateway.limiter.redis")

SLOTS = 16384
ASKING = encode(b"ASKING")
CLUSTER_SLOTS = encode(b"CLUSTER", b"SLOTS")


@functools.lru_cache(maxsize=65536)
def slot_of(key: bytes) -> int:
    """The key's hash slot (CRC16 of its ``{…}`` tag), cached: a budget decides many times."""
    return key_slot(key)


class Node:
    """A master: its address and, while it is reachable, the connection to it."""

    __slots__ = ("address", "conn", "joining")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.conn: RespConnection | None = None
        self.joining: asyncio.Task[None] | None = None

    def __str__(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


Part = tuple[Node, list[int], asyncio.Future[list[Any]]]  # a master, its commands, their replies
Target = tuple[Node, bool]  # where a command goes again, and whether after ASKING
REDIRECTS = ("MOVED ", "ASK ", "TRYAGAIN")
FOLLOW = 3  # redirections followed per command and batch (MOVED, then TRYAGAIN, then ASK)
TRYAGAIN_PAUSE = 0.01  # seconds before a command that met a half-migrated slot goes again


class ClusterConnection:
    def __init__(self, url: str, timeout: float, retry_interval: float = 0.25) -> None:
        self._url = url
        self._timeout = timeout
        self._retry_interval = retry_interval
        self._nodes: dict[tuple[str, int], Node] = {}
        self._slots: list[Node | None] = [None] * SLOTS
        self._kept: list[bytes] = []  # broadcast with keep: every joining master gets them
        self._batches: dict[asyncio.Future[list[Any]], asyncio.Task[None]] = {}
        self._stale = asyncio.Event()  # the slot map needs a refresh
        self._reported: set[object] = set()  # masters (and the map) said to be unreachable
        self._refresher: asyncio.Task[None] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    @classmethod
    async def open(cls, url: str, timeout: float) -> ClusterConnection:
        """The slot map from the first seed that answers, and a connection to every master
        (a master unreachable now is retried in the background)."""
        cluster = cls(url, timeout)
        try:
            await cluster._refresh()
        except BaseException:
            cluster.close()
            raise
        cluster._refresher = asyncio.ensure_future(cluster._keep_fresh())
        return cluster

    # ---- the Link the limiter uses -------------------------------------------------------

    def pipeline(
        self, parts: list[bytes], routes: list[bytes], future: asyncio.Future[list[Any]]
    ) -> None:
        replies: list[Any] = [None] * len(parts)
        groups: dict[Node, tuple[RespConnection, list[int]]] = {}
        slots = self._slots
        for index, route in enumerate(routes):
            node = slots[slot_of(route)]
            if node is None or node.conn is None:
                replies[index] = self._unreachable(node)
            else:
                groups.setdefault(node, (node.conn, []))[1].append(index)
        sent: list[Part] = []
        for node, (conn, indexes) in groups.items():
            part: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            conn.send(b"".join([parts[i] for i in indexes]), len(indexes), part)
            sent.append((node, indexes, part))
        task = asyncio.ensure_future(self._collect(parts, routes, replies, sent, future))
        self._batches[future] = task
        task.add_done_callback(lambda _: self._batches.pop(future, None))

    def expire(self, future: asyncio.Future[list[Any]], error: Exception) -> None:
        """Past the deadline: what the masters answered stands; the rest fails, and the
        masters still silent are dropped (their slots then fail at once until they answer)."""
        task = self._batches.get(future)
        if task is not None:
            task.cancel()
        elif not future.done():
            future.set_exception(error)

    async def broadcast(self, payload: bytes, keep: bool = False) -> None:
        """To every reachable master (``keep``: and to each that joins later); fails only
        when none answered."""
        if keep and payload not in self._kept:
            self._kept.append(payload)
        masters = [n.conn for n in set(self._slots) if n is not None and n.conn is not None]
        results = await asyncio.gather(*(c.call(payload) for c in masters),
                                       return_exceptions=True)
        if not any(not isinstance(r, BaseException) for r in results):
            raise ConnectionError(f"no master of the cluster answered ({results or 'none'})")

    def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        for node in self._nodes.values():
            if node.joining is not None:
                node.joining.cancel()
            if node.conn is not None:
                node.conn.close()
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- one batch ---------------------------------------------------------------------------

    async def _collect(
        self, parts: list[bytes], routes: list[bytes], replies: list[Any], sent: list[Part],
        future: asyncio.Future[list[Any]],
    ) -> None:
        """Every master's replies into their places; a redirected command is sent again, at
        most ``FOLLOW`` times."""
        try:
            targets = await self._gather(sent, replies)
            for _ in range(FOLLOW):
                if not targets:
                    break
                targets = await self._follow(parts, routes, replies, targets)
        except asyncio.CancelledError:  # past the deadline (``expire``)
            for node, indexes, part in sent:
                if part.done():
                    if replies[indexes[0]] is None:  # answered in time: the replies stand
                        self._take(node, indexes, part, replies)
                    continue
                self._report(node, "redis cluster master %s did not answer within %.3f s; "
                             "its slots follow on_limiter_error", node, self._timeout)
                part.add_done_callback(_retrieved)  # it fails once the connection is dropped
                self._drop(node)
                for index in indexes:
                    replies[index] = ReplyError(f"TIMEOUT master {node} did not answer")
        for index, reply in enumerate(replies):
            if reply is None:
                replies[index] = ReplyError("TIMEOUT no answer within the deadline")
        if not future.done():
            future.set_result(replies)

    async def _gather(self, sent: list[Part], replies: list[Any]) -> dict[int, Target]:
        """Wait for each master's part; the commands to send again, and where."""
        if sent:
            await asyncio.wait([part for _, _, part in sent])
        targets: dict[int, Target] = {}
        for node, indexes, part in sent:
            self._take(node, indexes, part, replies, targets)
        return targets

    def _take(
        self, node: Node, indexes: list[int], part: asyncio.Future[list[Any]],
        replies: list[Any], targets: dict[int, Target] | None = None,
    ) -> None:
        """A master's answered part into its places (the redirected ones into ``targets``)."""
        failure = part.exception()
        if failure is not None:
            self._drop(node)
            for index in indexes:
                replies[index] = ReplyError(f"CLUSTERDOWN master {node}: {failure}")
            return
        for index, reply in zip(indexes, part.result(), strict=True):
            replies[index] = reply
            if targets is not None and isinstance(reply, ReplyError) and str(
                reply
            ).startswith(REDIRECTS):
                targets[index] = (node, False)

    async def _follow(
        self, parts: list[bytes], routes: list[bytes], replies: list[Any],
        targets: dict[int, Target],
    ) -> dict[int, Target]:
        """Send each redirected command where its reply points, all together: ``MOVED`` to
        the slot's new master (the map is read again), ``ASK`` with ``ASKING`` to the importing
        one, ``TRYAGAIN`` (a slot's keys half migrated) to the same place after a pause. The
        commands redirected again, and where they went."""
        sends = {}
        for index, (node, asking) in targets.items():
            kind, *where = str(replies[index]).split(" ")
            if kind in ("MOVED", "ASK"):
                host, _, port = where[1].rpartition(":")
                node, asking = self._node((host, int(port))), kind == "ASK"
                if kind == "MOVED":
                    self._slots[slot_of(routes[index])] = node
                    self._stale.set()  # more of the map has probably moved: read it again
            sends[index] = (node, asking)
        pause = any(str(replies[i]).startswith("TRYAGAIN") for i in targets)
        answers = await asyncio.gather(*(self._resend(node, parts[index], asking, pause)
                                         for index, (node, asking) in sends.items()))
        again = {}
        for (index, target), reply in zip(sends.items(), answers, strict=True):
            replies[index] = reply
            if isinstance(reply, ReplyError) and str(reply).startswith(REDIRECTS):
                again[index] = target
        return again

    async def _resend(self, node: Node, payload: bytes, asking: bool, pause: bool) -> Any:
        try:
            if pause:
                await asyncio.sleep(TRYAGAIN_PAUSE)
            await self._join(node)
            assert node.conn is not None
            future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
            if asking:
                node.conn.send(ASKING + payload, 2, future)
                return (await future)[1]
            node.conn.send(payload, 1, future)
            return (await future)[0]
        except (OSError, TimeoutError, ReplyError) as exc:
            return ReplyError(f"CLUSTERDOWN master {node}: {exc}")

    # ---- masters and the slot map --------------------------------------------------------

    def _unreachable(self, node: Node | None) -> ReplyError:
        self._stale.set()
        if node is None:
            return ReplyError("CLUSTERDOWN no master known for this slot")
        return ReplyError(f"CLUSTERDOWN master {node} is unreachable")

    def _node(self, address: tuple[str, int]) -> Node:
        node = self._nodes.get(address)
        if node is None:
            node = self._nodes[address] = Node(address)
        return node

    def _drop(self, node: Node) -> None:
        if node.conn is not None:
            node.conn.close()
            node.conn = None
        self._stale.set()

    async def _join(self, node: Node) -> None:
        """Connect to ``node`` (once, however many ask) and load the kept scripts into it."""
        if node.conn is not None:
            return
        if node.joining is None:
            node.joining = asyncio.ensure_future(self._connect(node))
            node.joining.add_done_callback(functools.partial(_joined, node))
        await asyncio.shield(node.joining)

    async def _connect(self, node: Node) -> None:
        conn = await RespConnection.open(node_url(self._url, *node.address), self._timeout)
        try:
            async with asyncio.timeout(self._timeout):
                for payload in self._kept:
                    await conn.call(payload)
        except BaseException:
            conn.close()
            raise
        node.conn = conn
        conn.closed.add_done_callback(lambda _: self._lost(node, conn))

    def _lost(self, node: Node, conn: RespConnection) -> None:
        if node.conn is conn:
            node.conn = None
            self._stale.set()

    async def _keep_fresh(self) -> None:
        """Refresh the map when it is stale, and keep trying while a slot has no reachable
        master (a failover is under way)."""
        while True:
            await self._stale.wait()
            self._stale.clear()
            try:
                await self._refresh()
            except Exception as exc:  # whatever it is, keep trying: limits must come back
                self._report(self, "redis cluster: no node answered for the slot map (%s)", exc)
            else:
                self._recovered(self, "redis cluster: the slot map is read again")
            if not self._is_whole():
                self._stale.set()
            await asyncio.sleep(self._retry_interval)

    def _report(self, what: object, message: str, *args: object) -> None:
        """Once per outage of ``what``, not once per retry."""
        if what not in self._reported:
            self._reported.add(what)
            log.warning(message, *args)

    def _recovered(self, what: object, message: str, *args: object) -> None:
        if what in self._reported:
            self._reported.discard(what)
            log.warning(message, *args)

    def _is_whole(self) -> bool:
        return all(node is not None and node.conn is not None for node in set(self._slots))

    async def _refresh(self) -> None:
        """Read ``CLUSTER SLOTS`` from a reachable master (else a seed), connect to every
        master it names, and route by it."""
        ranges = await self._read_slots()
        masters = {self._node(address) for _, _, address in ranges}
        results = await asyncio.gather(*(self._join(n) for n in masters), return_exceptions=True)
        for node, result in zip(masters, results, strict=True):
            if isinstance(result, BaseException):
                self._report(node, "redis cluster master %s is unreachable (%s); its slots "
                             "follow on_limiter_error", node, result)
            else:
                self._recovered(node, "redis cluster master %s decides again", node)
        slots: list[Node | None] = [None] * SLOTS
        for first, last, address in ranges:
            slots[first:last + 1] = [self._nodes[address]] * (last - first + 1)
        self._slots = slots
        for address, node in list(self._nodes.items()):
            if node not in masters and node.joining is None:  # no longer a master: let go
                if node.conn is not None:
                    node.conn.close()
                del self._nodes[address]

    async def _read_slots(self) -> list[tuple[int, int, tuple[str, int]]]:
        """(first slot, last slot, master address) from the first node that answers."""
        known = [n.conn for n in self._nodes.values() if n.conn is not None]
        errors: list[str] = []
        for conn in known:
            with contextlib.suppress(OSError, TimeoutError, ReplyError):
                async with asyncio.timeout(self._timeout):
                    return _ranges(await conn.call(CLUSTER_SLOTS), None)
        for seed in cluster_seeds(self._url):
            try:
                conn = await RespConnection.open(seed, self._timeout)
            except (OSError, TimeoutError, ReplyError) as exc:
                errors.append(f"{seed.rpartition('@')[2]}: {exc}")
                continue
            try:
                async with asyncio.timeout(self._timeout):
                    return _ranges(await conn.call(CLUSTER_SLOTS), seed)
            except (OSError, TimeoutError, ReplyError) as exc:
                errors.append(f"{seed.rpartition('@')[2]}: {exc}")
            finally:
                conn.close()
        raise ConnectionError(f"no node of the cluster answered CLUSTER SLOTS: {errors}")


def _retrieved(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _joined(node: Node, task: asyncio.Task[None]) -> None:
    node.joining = None
    if not task.cancelled():
        task.exception()  # retrieved: whoever waited has it, and a refresh logs it


def _ranges(reply: list[Any], seed: str | None) -> list[tuple[int, int, tuple[str, int]]]:
    """CLUSTER SLOTS' [first, last, [host, port, id], replicas...] entries; a master that
    does not know its own host (an empty one) is where the asked seed is."""
    ranges = []
    for first, last, master, *_ in reply:
        host = master[0].decode() if isinstance(master[0], bytes) else str(master[0])
        if not host and seed is not None:
            host = seed.partition("://")[2].rpartition("@")[2].rpartition(":")[0].strip("[]")
        ranges.append((int(first), int(last), (host, int(master[1]))))
    return ranges
