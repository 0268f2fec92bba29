"""Shared limits in Redis: every gateway process and node spends one budget per key.

The algorithm is an exact sliding log, as in ``memory.py``, kept in Redis sorted sets and decided
by ONE Lua script per request (EVALSHA, reloaded on NOSCRIPT; a second one, in the same batch,
when the request spends a quota), so there is never a read-modify-write across round trips:

* the log ``<prefix>{<budget>}:r[:<route>]`` holds one member per admitted request, scored by
  Redis's own clock (``TIME``, in µs) so every node judges against the same time; members older
  than the window are trimmed first. The count in ANY window never exceeds the limit and a client
  under its limit is never refused. Memory per active key is O(limit): a refused request adds
  nothing, so at most ``limit`` members live in the log (see README for bytes per key).
* concurrency leases live in ``<prefix>{<budget>}:c``, one member per request in flight, scored
  by the time it expires. The script trims expired leases, compares the count with the cap and
  takes a lease in the same call as the rate decision. A lease is given back when the response
  ends (``release``); leases of a node that died expire after ``lease_ttl``; a live node renews
  its own every ``lease_ttl / 3`` so long streams keep theirs.
* every key expires (PEXPIRE) one window / one lease TTL after its last write, and the ``{budget}``
  hash tag keeps a key's log and leases in one Redis Cluster slot.
* quotas live in ``<prefix>{q:<workspace>}``, a hash with one counter per period (``d<day>``,
  ``m<month>``, UTC by Redis's ``TIME``; ``CALENDAR`` turns ms into those periods and their
  ends). ``QUOTA_SCRIPT`` checks both quotas and counts the request in both only when neither is
  spent; the day's first count drops older fields and sets the hash to expire a day after the
  month ends.

* credits live in ``<prefix>{cr:<budget>}``, a hash (``s`` the set version, ``a`` the adds
  applied, ``b`` the balance, ``p`` the refill period): ``CREDIT_SCRIPT`` brings it up to the
  key's stored ``Credits`` (a newer set starts again from its value; adds not yet applied are
  added, exactly once whichever node sees them first; a new refill period sets the balance to
  the refill amount), then spends the request's cost if the balance holds it. A hash with a
  refill expires a day after its period ends; one without never does (README "Credits").

Check and compensate: a workspace's quota hash, a key's credits and a key's logs sit in
different Cluster slots, so one script cannot decide them all. The rate script, the quota script
and the credit script go side by side in the same batch, each checking and counting on its own.
When one refuses (or fails) and others admitted, ``_compensate`` queues an undo of each
admitting one (``u`` mode: the member out of the logs and leases, both quota counts down by
one, or the cost back into the balance of the same set and period), sent in a batch started at
once, before the refused client hears back. Meanwhile a concurrent request may see the count one
higher than it ends up: it errs towards refusing, never past a limit.

Throughput: the decisions requested within one event-loop tick go out as one pipelined batch
over one connection (``resp.py``) and come back together: one write and one read per batch.
``admit`` returns a plain future that the batch's replies answer, so a waiting request resumes
through no limiter coroutine. Releases ride along with the next batch — inside the admit script
when the same key is being admitted again, else as a ZREM — waiting at most ``RELEASE_DELAY``
for one, so even a client sending one request after another costs one round trip per request.

Failures: a batch that takes longer than ``timeout`` fails (``LimiterUnavailable``) and drops the
connection; while there is no connection every decision fails at once, without waiting, and the
pipeline applies ``on_limiter_error``. A supervisor reconnects every ``retry_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import secrets
from typing import Any

from gateway.config import LimiterConfig
from gateway.config.parsers import url_target
from gateway.errors import LimiterUnavailable
from gateway.keys.model import Credits
from gateway.limiter.base import (
    SLIDING_COUNTER,
    SLIDING_LOG,
    CreditState,
    Decision,
    LimiterStats,
    QuotaAsk,
    QuotaUsage,
    Window,
    nearest_quota,
)
from gateway.limiter.cluster import ClusterConnection
from gateway.limiter.resp import Connect, Link, ReplyError, RespConnection, encode
from gateway.periodic import Periodic

log = logging.getLogger("gateway.limiter.redis")

# KEYS[1] the key's sliding log, KEYS[2] the leases, KEYS[3] a route's own log (KEYS[1] again
# when there is none). ARGV[1] mode: a(dmit) | p(eek) | r(enew) | u(ndo).
# admit: ARGV[2] limit, [3] window µs, [4] member id, [5] max in flight (0: none), [6] lease
# TTL µs, [7] the route's limit (0: none), [8] its window µs, [9..] leases to give back first.
# Replies {status, count, reset µs, which}: status 1 admitted (count includes it), 0 over a rate
# limit, 2 every concurrency slot held; which: 0 the key's window, 1 the route's (the refusing
# one, else the one nearer to running out). undo: ARGV[2] a member admitted before, taken out
# of both logs and the leases (its request was refused by a quota).
SCRIPT = b"""
local mode = ARGV[1]
if mode == 'u' then
  for i = 1, 3 do redis.call('ZREM', KEYS[i], ARGV[2]) end
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if mode == 'r' then
  local ttl = tonumber(ARGV[2])
  for i = 3, #ARGV do redis.call('ZADD', KEYS[2], 'XX', now + ttl, ARGV[i]) end
  redis.call('PEXPIRE', KEYS[2], math.ceil(ttl / 1000))
  return 1
end
local function trim(log, window)
  redis.call('ZREMRANGEBYSCORE', log, '-inf', now - window)
  return redis.call('ZCARD', log)
end
local function reset(log, window, count, nth)
  if count == 0 then return window end
  return tonumber(redis.call('ZRANGE', log, nth, nth, 'WITHSCORES')[2]) + window - now
end
local limit = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local log = KEYS[1]
local count = trim(log, window)
if mode == 'p' then return {1, count, reset(log, window, count, 0), 0} end
local leases = KEYS[2]
if #ARGV > 8 then redis.call('ZREM', leases, unpack(ARGV, 9)) end
if count >= limit then return {0, count, reset(log, window, count, count - limit), 0} end
local rlimit, rwindow, rlog, rcount = tonumber(ARGV[7]), tonumber(ARGV[8]), KEYS[3], 0
if rlimit > 0 then
  rcount = trim(rlog, rwindow)
  if rcount >= rlimit then return {0, rcount, reset(rlog, rwindow, rcount, rcount - rlimit), 1} end
end
local which = 0
if rlimit > 0 and rlimit - rcount < limit - count then which = 1 end
local function answer(status, added)
  if which == 1 then return {status, rcount + added, reset(rlog, rwindow, rcount + added, 0), 1} end
  return {status, count + added, reset(log, window, count + added, 0), 0}
end
local cap = tonumber(ARGV[5])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if redis.call('ZCARD', leases) >= cap then return answer(2, 0) end
  local ttl = tonumber(ARGV[6])
  redis.call('ZADD', leases, now + ttl, ARGV[4])
  redis.call('PEXPIRE', leases, math.ceil(ttl / 1000))
end
redis.call('ZADD', log, now, ARGV[4])
redis.call('PEXPIRE', log, math.ceil(window / 1000))
if rlimit > 0 then
  redis.call('ZADD', rlog, now, ARGV[4])
  redis.call('PEXPIRE', rlog, math.ceil(rwindow / 1000))
end
return answer(1, 1)
"""
SHA = hashlib.sha1(SCRIPT).hexdigest().encode()  # Redis names scripts by their SHA-1

# SCRIPT again for decisions with a sliding counter among their windows (README "Algorithms";
# the exact log alone keeps SCRIPT, which costs Redis 7 % fewer instructions than this one).
# KEYS[1] the key's window, KEYS[2] the leases, KEYS[3] a route's own window (KEYS[1] again
# when there is none). A window is a sliding log (a sorted set) or a sliding counter (a hash: n
# the current fixed window's number, c its count, p the previous one's), as ARGV[2] says: two
# letters, l or c, for KEYS[1] and KEYS[3]. ARGV[1] mode: a(dmit) | p(eek) | u(ndo).
# admit: ARGV[3] limit, [4] window µs, [5] member id, [6] max in flight (0: none), [7] lease
# TTL µs, [8] the route's limit (0: none), [9] its window µs, [10..] leases to give back first.
# Replies {status, count, reset µs, which}: status 1 admitted (count includes it), 0 over a rate
# limit, 2 every concurrency slot held; which: 0 the key's window, 1 the route's (the refusing
# one, else the one nearer to running out); a counter's count is its estimate, rounded up.
# undo: ARGV[3] a member admitted before, taken out of both windows and the leases (its request
# was refused by a quota); a counter counts one less (in the previous window if it has turned).
COUNTER_SCRIPT = b"""
local mode, kinds = ARGV[1], ARGV[2]
local function uncount(key)
  if redis.call('HINCRBY', key, 'c', -1) < 0 then
    redis.call('HINCRBY', key, 'c', 1)
    if redis.call('HINCRBY', key, 'p', -1) < 0 then redis.call('HINCRBY', key, 'p', 1) end
  end
end
if mode == 'u' then
  redis.call('ZREM', KEYS[2], ARGV[3])
  for i = 1, (KEYS[3] == KEYS[1]) and 1 or 2 do
    local key = KEYS[2 * i - 1]
    if kinds:sub(i, i) == 'l' then redis.call('ZREM', key, ARGV[3])
    elseif redis.call('EXISTS', key) == 1 then uncount(key) end
  end
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local counters = {}  -- a counter's {number, count, previous count}, as read by used()
local function used(kind, key, window)
  if kind == 'l' then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    return redis.call('ZCARD', key)
  end
  local n = math.floor(now / window)
  local s = redis.call('HMGET', key, 'n', 'c', 'p')
  local stored, c, p = tonumber(s[1]), tonumber(s[2]) or 0, tonumber(s[3]) or 0
  if stored ~= n then
    p = (stored == n - 1) and c or 0
    c = 0
  end
  counters[key] = {n, c, p}
  return p * ((n + 1) * window - now) / window + c
end
local function left(key, window) return (counters[key][1] + 1) * window - now end
local function reset(kind, key, window, count)  -- for the window shown: its oldest leaves
  if kind == 'c' then return left(key, window) end
  if count == 0 then return window end
  return tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2]) + window - now
end
local function wait(kind, key, window, count, limit)  -- for a refusal: until one more fits
  if kind == 'l' then
    local nth = count - limit
    return tonumber(redis.call('ZRANGE', key, nth, nth, 'WITHSCORES')[2]) + window - now
  end
  local n, c, p = unpack(counters[key])
  local l = left(key, window)
  if c + 1 <= limit then return math.ceil(l - (limit - 1 - c) * window / p) end
  return math.ceil(l + math.max(0, window * (1 - (limit - 1) / c)))
end
local function add(kind, key, window, member)
  if kind == 'l' then
    redis.call('ZADD', key, now, member)
    redis.call('PEXPIRE', key, math.ceil(window / 1000))
    return
  end
  local n, c, p = unpack(counters[key])
  redis.call('HSET', key, 'n', n, 'c', c + 1, 'p', p)
  redis.call('PEXPIRE', key, math.ceil(2 * window / 1000))
end
local kind, rkind = kinds:sub(1, 1), kinds:sub(2, 2)
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local key = KEYS[1]
local count = used(kind, key, window)
if mode == 'p' then return {1, math.ceil(count), reset(kind, key, window, count), 0} end
local leases = KEYS[2]
if #ARGV > 9 then redis.call('ZREM', leases, unpack(ARGV, 10)) end
if count + 1 > limit then return {0, math.ceil(count), wait(kind, key, window, count, limit), 0} end
local rlimit, rwindow, rkey, rcount = tonumber(ARGV[8]), tonumber(ARGV[9]), KEYS[3], 0
if rlimit > 0 then
  rcount = used(rkind, rkey, rwindow)
  if rcount + 1 > rlimit then
    return {0, math.ceil(rcount), wait(rkind, rkey, rwindow, rcount, rlimit), 1}
  end
end
local which = 0
if rlimit > 0 and rlimit - rcount < limit - count then which = 1 end
local function answer(status, added)
  if which == 1 then
    return {status, math.ceil(rcount + added), reset(rkind, rkey, rwindow, rcount + added), 1}
  end
  return {status, math.ceil(count + added), reset(kind, key, window, count + added), 0}
end
local cap = tonumber(ARGV[6])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  if redis.call('ZCARD', leases) >= cap then return answer(2, 0) end
  local ttl = tonumber(ARGV[7])
  redis.call('ZADD', leases, now + ttl, ARGV[5])
  redis.call('PEXPIRE', leases, math.ceil(ttl / 1000))
end
add(kind, key, window, ARGV[5])
if rlimit > 0 then add(rkind, rkey, rwindow, ARGV[5]) end
return answer(1, 1)
"""
COUNTER_SHA = hashlib.sha1(COUNTER_SCRIPT).hexdigest().encode()

# The UTC calendar in Lua (H. Hinnant's civil_from_days): day number -> year, month, day of
# the month, days in that month; ``periods``: epoch ms -> day number, month number, the epoch ms
# the day and the month end (base.periods in Python). Compared with it on real Redis for month
# ends, leap days and year ends (tests/limiter/test_redis.py).
CALENDAR = b"""
local function civil(day)
  local z = day + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
    - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp < 10 and mp + 3 or mp - 9
  if m <= 2 then y = y + 1 end
  local dim = ({31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31})[m]
  if m == 2 and y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then dim = 29 end
  return y, m, d, dim
end
local function periods(now)
  local day = math.floor(now / 86400000)
  local y, m, d, dim = civil(day)
  return day, y * 12 + m - 1, (day + 1) * 86400000, (day + dim - d + 1) * 86400000
end
"""
# KEYS[1] the workspace's quota hash <prefix>{q:<workspace>}: one field per period, d<day> and
# m<month>, counted by Redis's own clock. ARGV[1] mode: a(dmit) | p(eek) | u(ndo).
# admit: ARGV[2] day limit, [3] month limit (0: none); counts both only if neither is spent.
# Replies {over, day count, month count, ms to day end, ms to month end, day, month}: over 0
# counted (or peeked), 1 the day's quota is spent, 2 the month's. undo: ARGV[2] day, [3] month
# of an admit whose request was refused by its rate limit: both counts back down by one.
QUOTA_SCRIPT = CALENDAR + b"""
local q, mode = KEYS[1], ARGV[1]
if mode == 'u' then
  for _, field in ipairs({'d' .. ARGV[2], 'm' .. ARGV[3]}) do
    if tonumber(redis.call('HGET', q, field) or '0') > 0 then
      redis.call('HINCRBY', q, field, -1)
    end
  end
  return 1
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local day, month, day_end, month_end = periods(now)
local df, mf = 'd' .. day, 'm' .. month
local dc = tonumber(redis.call('HGET', q, df) or '0')
local mc = tonumber(redis.call('HGET', q, mf) or '0')
local over = 0
if mode == 'a' then
  local dl, ml = tonumber(ARGV[2]), tonumber(ARGV[3])
  if dl > 0 and dc >= dl then over = 1 end
  if ml > 0 and mc >= ml then over = 2 end
  if over == 0 then
    dc = redis.call('HINCRBY', q, df, 1)
    mc = redis.call('HINCRBY', q, mf, 1)
    if dc == 1 then  -- the day's first: forget older periods, live a day past the month
      for _, field in ipairs(redis.call('HKEYS', q)) do
        if field ~= df and field ~= mf then redis.call('HDEL', q, field) end
      end
      redis.call('PEXPIREAT', q, month_end + 86400000)
    end
  end
end
return {over, dc, mc, day_end - now, month_end - now, day, month}
"""
QUOTA_SHA = hashlib.sha1(QUOTA_SCRIPT).hexdigest().encode()
# KEYS[1] the budget's credits <prefix>{cr:<budget>}: s set version, a adds applied, b balance,
# p refill period. ARGV[1] mode: a(dmit) | p(eek) | u(ndo). admit and peek: ARGV[2] the key's
# stored set version, [3] set value, [4] set period, [5] adds since, [6] refill amount, [7]
# refill interval (d, m or - for none), [8] cost (admit: spent if the balance holds it).
# Replies {status, balance, ms to the next refill (0: none), period, set version}: status 1
# spent (or peeked), 0 the balance is short (nothing spent). undo: ARGV[2] cost, [3] set
# version, [4] period of an admit whose request was refused by another limit: the cost goes
# back, unless a set or a refill has replaced that balance since.
CREDIT_SCRIPT = CALENDAR + b"""
local key, mode = KEYS[1], ARGV[1]
if mode == 'u' then
  local h = redis.call('HMGET', key, 's', 'p')
  if tonumber(h[1]) == tonumber(ARGV[3]) and tonumber(h[2]) == tonumber(ARGV[4]) then
    redis.call('HINCRBY', key, 'b', ARGV[2])
  end
  return 1
end
local sv, value, sp = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local added, amount = tonumber(ARGV[5]), tonumber(ARGV[6])
local interval, cost = ARGV[7], tonumber(ARGV[8])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local period, ends = 0, 0
if interval ~= '-' then
  local day, month, day_end, month_end = periods(now)
  if interval == 'd' then period, ends = day, day_end else period, ends = month, month_end end
end
local h = redis.call('HMGET', key, 's', 'a', 'b', 'p')
local s, a, b, p = tonumber(h[1]), tonumber(h[2]), tonumber(h[3]), tonumber(h[4])
local dirty = false
if s == nil or s < sv then
  s, a, b, p, dirty = sv, added, value + added, sp, true
elseif s == sv and a < added then
  b, a, dirty = b + added - a, added, true
end
if interval ~= '-' and p < period then b, p, dirty = amount, period, true end
local status = 1
if mode == 'a' then
  if b >= cost then b, dirty = b - cost, true else status = 0 end
  if dirty then
    redis.call('HSET', key, 's', s, 'a', a, 'b', b, 'p', p)
    if interval ~= '-' then redis.call('PEXPIREAT', key, ends + 86400000)
    else redis.call('PERSIST', key) end
  end
end
local left = 0
if interval ~= '-' then left = ends - now end
return {status, b, left, p, s}
"""
CREDIT_SHA = hashlib.sha1(CREDIT_SCRIPT).hexdigest().encode()
INTERVAL = {None: b"-", "day": b"d", "month": b"m"}  # a refill interval in CREDIT_SCRIPT
ADMIT, PEEK, RENEW, UNDO, USAGE, BALANCE = b"a", b"p", b"r", b"u", b"q", b"b"
SPENT = 1  # CREDIT_SCRIPT's status when it spent the cost
# mode budget scope limit window cap member, the route's window, the quota, the windows' kinds,
# the key's credits and the request's cost
Op = tuple[bytes, str, str, int, float, int, bytes, Window | None, QuotaAsk | None, bytes,
           Credits | None, int]
KIND = {SLIDING_LOG: b"l", SLIDING_COUNTER: b"c"}  # a window's letter in COUNTER_SCRIPT's ARGV[2]
LOGS = b"ll"  # both windows exact logs: SCRIPT decides
SUFFIX = {b"l": b":r", b"c": b":n"}  # ... and its Redis key: <prefix>{<budget>}<suffix>[:<route>]
RATE_LIMIT_REFUSED, ADMITTED, BUSY = 0, 1, 2
REDIS_PORT = 6379
RELEASE_DELAY = 0.002  # seconds a given-back slot waits for a batch to ride along with


class RedisRateLimiter:
    def __init__(
        self, url: str, options: LimiterConfig, *, retry_interval: float = 0.25,
        connect: Connect = RespConnection.open,
    ) -> None:
        self._url = url
        self._connect = connect  # one Redis, or a Redis Cluster (README "Redis Cluster")
        self.target = url_target(url, REDIS_PORT)  # named by every log line and error
        self._prefix = options.prefix.encode()
        self._timeout = options.timeout
        self._lease_ttl_us = str(int(options.lease_ttl * 1_000_000)).encode()
        self._retry_interval = retry_interval
        self._conn: Link | None = None
        self._connected = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._renewer = Periodic(options.lease_ttl / 3, self._renew)
        # the batch being gathered in this tick: commands (built at flush) and their future
        self._ops: list[Op] = []
        self._waiters: list[asyncio.Future[Any]] = []  # one per op, answered by _answer
        self._second_tries: set[asyncio.Future[Any]] = set()  # re-sent after NOSCRIPT
        self._reloading: set[asyncio.Future[None]] = set()  # _retry tasks (kept referenced)
        self._batch: asyncio.Future[list[Any]] | None = None
        self._releases: dict[str, list[bytes]] = {}  # budget -> leases to give back
        self._undos: list[tuple[bytes, bytes]] = []  # compensations (command, its key), sent
        # like releases
        self._release_timer: asyncio.TimerHandle | None = None
        self._held: dict[str, set[bytes]] = {}  # budget -> leases this node holds (renewed)
        self._node = secrets.token_hex(4).encode()  # members are <node>.<sequence>: unique
        self._sequence = 0
        # counters for /metrics and the benchmark
        self.batches = 0
        self.commands = 0

    # ---- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        """Connect (waiting at most ``timeout``); an unreachable Redis is not fatal: decisions
        follow ``on_limiter_error`` until the supervisor gets through."""
        self._supervisor = asyncio.ensure_future(self._supervise())
        self._renewer.start()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._timeout * 2):
                await self._connected.wait()

    async def close(self) -> None:
        if (self._releases or self._undos) and self._conn is not None:  # give back first
            batch = self._batch or self._start_batch()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await batch
        await self._renewer.stop()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def _supervise(self) -> None:
        reported = False
        while True:
            try:
                conn = await self._connect(self._url, self._timeout)
                try:
                    await self._send_script(conn)
                except BaseException:
                    conn.close()
                    raise
            except Exception as exc:  # whatever it is, keep trying: limits must come back
                if not reported:
                    log.warning("redis at %s is unreachable (%s); on_limiter_error applies",
                                self.target, exc)
                    reported = True
                await asyncio.sleep(self._retry_interval)
                continue
            if reported:
                log.warning("redis at %s is reachable again; limits are shared once more",
                            self.target)
                reported = False
            self._conn = conn
            self._connected.set()
            await conn.closed
            self._conn = None
            self._connected.clear()
            self._held.clear()  # a restarted Redis has none of them; a live one expires them
            self._releases.clear()
            self._undos.clear()
            log.warning("redis connection to %s lost; reconnecting", self.target)

    # ---- the contract ------------------------------------------------------------------------

    def admit(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = SLIDING_LOG, credits: Credits | None = None, cost: int = 1,
    ) -> asyncio.Future[Decision]:
        """A future, not a coroutine: answered straight from the batch's replies, so the request
        waiting on it resumes through no limiter frames."""
        self._sequence += 1
        member = b"%b.%x" % (self._node, self._sequence)
        cap = max_in_flight or 0
        kinds = _kinds(algorithm, also)
        return self._submit((ADMIT, budget, scope, limit, window, cap, member, also, quota, kinds,
                             credits, cost))

    def admit_nowait(
        self, budget: str, scope: str, limit: int, window: float, max_in_flight: int | None,
        also: Window | None = None, quota: QuotaAsk | None = None,
        algorithm: str = SLIDING_LOG, credits: Credits | None = None, cost: int = 1,
    ) -> None:
        return None  # every decision is Redis's

    def peek(self, budget: str, scope: str, limit: int, window: float,
             algorithm: str = SLIDING_LOG) -> asyncio.Future[Decision]:
        kinds = _kinds(algorithm, None)
        return self._submit((PEEK, budget, scope, limit, window, 0, b"", None, None, kinds, None,
                             0))

    def quota_usage(self, workspace: str) -> asyncio.Future[QuotaUsage]:
        return self._submit((USAGE, workspace, "", 0, 0.0, 0, b"", None, None, b"", None, 0))

    def credits_left(self, budget: str, credits: Credits) -> asyncio.Future[CreditState]:
        return self._submit((BALANCE, budget, "", 0, 0.0, 0, b"", None, None, b"", credits, 0))

    def release(self, budget: str, lease: str) -> None:
        member = lease.encode()
        held = self._held.get(budget)
        if held is not None:
            held.discard(member)
            if not held:
                del self._held[budget]
        if self._conn is None:
            return  # the lease expires on its own
        self._give_back(budget, member)

    async def ping(self) -> None:
        conn = self._conn
        if conn is None:
            raise LimiterUnavailable(f"redis at {self.target} is unreachable")
        try:
            async with asyncio.timeout(self._timeout):
                await conn.broadcast(encode(b"PING"))
        except (OSError, TimeoutError, ReplyError) as exc:
            raise LimiterUnavailable(
                f"redis at {self.target} did not answer PING: {exc}") from exc

    def stats(self) -> LimiterStats:
        return LimiterStats(self.batches, self.commands)

    # ---- batching ----------------------------------------------------------------------------

    def _submit(self, op: Op) -> asyncio.Future[Any]:
        """Queue one decision in this tick's batch; its future gets the Decision or
        ``LimiterUnavailable``. A request cancelled while it waits cancels only its own future
        (a slot the script gave it meanwhile is given back by ``_answer``)."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue(op, waiter)
        return waiter

    def _queue(self, op: Op, waiter: asyncio.Future[Any]) -> None:
        """Into this tick's batch; while there is no connection, fail at once without waiting."""
        if self._conn is None:
            waiter.set_exception(LimiterUnavailable(f"redis at {self.target} is unreachable"))
            return
        if self._batch is None:
            self._start_batch()
        self._ops.append(op)
        self._waiters.append(waiter)

    def _answer(
        self,
        ops: list[Op],
        waiters: list[asyncio.Future[Any]],
        batch: asyncio.Future[list[Any]],
    ) -> None:
        """Each waiting request gets its own decision, or the batch's failure."""
        second_tries = self._second_tries
        failure = (
            ConnectionError("redis batch cancelled") if batch.cancelled() else batch.exception()
        )
        if failure is not None:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(LimiterUnavailable(f"redis: {failure}"))
            second_tries.difference_update(waiters)
            return
        reload: list[tuple[Op, asyncio.Future[Any]]] = []
        replies = iter(batch.result())
        for op, waiter in zip(ops, waiters, strict=True):
            reply = next(replies)
            quota = next(replies) if op[0] == ADMIT and op[8] is not None else None
            credit = next(replies) if op[0] == ADMIT and op[10] is not None else None
            if quota is not None or credit is not None:
                self._compensate(op, reply, quota, credit)
            error = next((r for r in (reply, quota, credit) if isinstance(r, ReplyError)), None)
            if error is not None:
                if waiter.done():
                    continue
                if str(error).startswith("NOSCRIPT") and waiter not in second_tries:
                    reload.append((op, waiter))  # Redis restarted or flushed its scripts
                else:
                    waiter.set_exception(LimiterUnavailable(f"redis: {error}"))
            elif waiter.done():  # cancelled while it waited: give back the slot it got
                if (op[0] == ADMIT and op[5] and reply[0] == ADMITTED and _quota_ok(quota)
                        and _credit_ok(credit)):
                    self._give_back(op[1], op[6])
            else:
                waiter.set_result(self._decision(op, reply, quota, credit))
        if second_tries:
            second_tries.difference_update(waiters)  # answered, failed or cancelled: done
        if reload:
            self._reloading.add(asyncio.ensure_future(self._retry(reload)))

    def _compensate(self, op: Op, reply: Any, quota: Any, credit: Any) -> None:
        """The rate script, the quota script and the credit script ran side by side (their keys
        live in different Cluster slots): when one refused (or failed), take back what each
        admitting one counted, so a refused request spends nothing."""
        rate_ok = not isinstance(reply, ReplyError) and reply[0] == ADMITTED
        quota_ok = quota is not None and _quota_ok(quota)
        credit_ok = credit is not None and _credit_ok(credit)
        if rate_ok and quota_ok is (quota is not None) and credit_ok is (credit is not None):
            return  # everything asked admitted it
        budget = op[1]
        if rate_ok:
            _, _, scope, _, _, _, member, also, _, kinds, _, _ = op
            keys = self._rate_keys(budget, scope, also, kinds)
            undo: tuple[bytes | int, ...] = (
                (SHA, 3, *keys, UNDO) if kinds == LOGS else (COUNTER_SHA, 3, *keys, UNDO, kinds)
            )
            self._undos.append((encode(b"EVALSHA", *undo, member), keys[1]))
        if quota_ok:
            workspace = op[8].workspace  # type: ignore[union-attr]  # a quota op has one
            key = self._quota_key(workspace)
            self._undos.append((encode(b"EVALSHA", QUOTA_SHA, 1, key, UNDO, quota[5], quota[6]),
                                key))
        if credit_ok:
            key = self._credit_key(budget)
            self._undos.append((encode(b"EVALSHA", CREDIT_SHA, 1, key, UNDO, op[11], credit[4],
                                       credit[3]), key))
        if self._batch is None and self._undos:  # out before the refused client hears back
            self._start_batch()

    async def _retry(self, ops: list[tuple[Op, asyncio.Future[Any]]]) -> None:
        """Load the script again, then send those decisions once more (a second NOSCRIPT
        fails them)."""
        try:
            await self._load_script()
            for op, waiter in ops:
                if not waiter.done():
                    self._queue(op, waiter)
                    if not waiter.done():  # sent: a second NOSCRIPT now fails it
                        self._second_tries.add(waiter)
        finally:
            self._reloading.discard(asyncio.current_task())

    def _decision(
        self, op: Op, reply: list[int], quota: list[int] | None, credit: list[int] | None
    ) -> Any:
        mode, budget, _scope, limit, _window, cap, member, also, ask, _, _, cost = op
        if mode != ADMIT:
            return _read(op, reply)
        status, count, reset_us, which = reply
        reset = reset_us / 1_000_000
        if which == 1 and also is not None:
            limit = also.limit
        balance = None
        if credit is not None:
            balance = credit[1]
            if credit[0] != SPENT:  # checked first, as in memory.py: whatever else refused
                return self._short(limit, count - (status == ADMITTED), reset, credit)
            if status != ADMITTED or (quota is not None and quota[0]):
                balance += cost  # being given back (``_compensate``)
        state = None
        if quota is not None and ask is not None:
            over, day, month, day_end, month_end = quota[:5]
            if not over and (status != ADMITTED or not _credit_ok(credit)):  # being taken back
                day, month = day - 1, month - 1
            state = nearest_quota(ask, day, month, day_end / 1000, month_end / 1000)
            if over:
                if status == ADMITTED and _credit_ok(credit):
                    count -= 1  # being taken back (``_compensate``)
                retry = (day_end if over == 1 else month_end) / 1000
                return Decision(False, limit, max(0, limit - count), reset, retry, None, False,
                                state, True, balance)
        if status == ADMITTED:
            lease = None
            if cap:
                self._held.setdefault(budget, set()).add(member)
                lease = member.decode()
            return Decision(True, limit, limit - count, reset, 0.0, lease, False, state, False,
                            balance)
        if status == BUSY:
            return Decision(False, limit, max(0, limit - count), reset, 1.0, None, True, state,
                            False, balance)
        return Decision(False, limit, 0, reset, reset, None, False, state, False, balance)

    @staticmethod
    def _short(limit: int, count: int, reset: float, credit: list[int]) -> Decision:
        """Refused for credits: the key's window as it stays (anything counted is being
        taken back), the balance, and until the next refill if there is one."""
        return Decision(False, limit, max(0, limit - count), reset, credit[2] / 1000, None,
                        False, None, False, credit[1], True)

    def _give_back(self, budget: str, member: bytes) -> None:
        self._releases.setdefault(budget, []).append(member)
        self._schedule_send()

    def _schedule_send(self) -> None:
        """Releases and compensations go with the next batch, or on their own shortly."""
        if self._batch is None and self._release_timer is None:
            # wait a moment for a batch to ride along with: a client that sends its next
            # request at once has this slot given back inside that request's admit script
            loop = asyncio.get_running_loop()
            self._release_timer = loop.call_later(RELEASE_DELAY, self._release_now)

    def _release_now(self) -> None:
        self._release_timer = None
        if (self._releases or self._undos) and self._batch is None:
            self._start_batch()

    def _start_batch(self) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        batch: asyncio.Future[list[Any]] = loop.create_future()
        self._batch = batch
        loop.call_soon(self._flush)  # after every request already scheduled in this tick
        return batch

    def _flush(self) -> None:
        batch, ops, waiters, releases = self._batch, self._ops, self._waiters, self._releases
        undos = self._undos
        assert batch is not None
        self._batch, self._ops, self._waiters, self._releases = None, [], [], {}
        self._undos = []
        if waiters:
            batch.add_done_callback(functools.partial(self._answer, ops, waiters))
        if self._release_timer is not None:  # the releases go now, with this batch
            self._release_timer.cancel()
            self._release_timer = None
        conn = self._conn
        if conn is None:
            batch.set_exception(ConnectionError(f"redis at {self.target} is unreachable"))
            batch.exception()  # retrieved: a batch of releases only has nobody waiting
            return
        sha, lease_ttl = SHA, self._lease_ttl_us
        parts: list[bytes] = []
        routes: list[bytes] = []  # a key of each command: a Redis Cluster routes by its slot
        carried: list[tuple[int, str, list[bytes]]] = []  # releases inside an admit script
        for op in ops:
            mode, budget, scope, limit, window, cap, member, also, quota, kinds, credits, cost = op
            if mode in (USAGE, BALANCE):
                parts.append(self._reading(op))
                routes.append(self._credit_key(budget) if credits else self._quota_key(budget))
                continue
            window_us = int(window * 1_000_000)
            keys = self._rate_keys(budget, scope, also, kinds)
            args: list[bytes | int] = (
                [b"EVALSHA", sha, 3, *keys, mode, limit, window_us] if kinds == LOGS
                else [b"EVALSHA", COUNTER_SHA, 3, *keys, mode, kinds, limit, window_us]
            )
            if mode == ADMIT:
                args += (member, cap, lease_ttl)
                args += (also.limit, int(also.window * 1_000_000)) if also else (0, 0)
                if cap and (given_back := releases.pop(budget, None)):
                    args += given_back
                    carried.append((len(parts), budget, given_back))
            parts.append(encode(*args))
            routes.append(keys[1])
            if quota is not None:  # its own slot: a script of its own, in the same batch
                key = self._quota_key(quota.workspace)
                parts.append(encode(b"EVALSHA", QUOTA_SHA, 1, key, ADMIT, quota.day, quota.month))
                routes.append(key)
            if credits is not None:  # the budget's credits: a slot of their own too
                key = self._credit_key(budget)
                parts.append(encode(b"EVALSHA", CREDIT_SHA, 1, key, ADMIT,
                                    *_credit_args(credits), cost))
                routes.append(key)
        for budget, members in releases.items():
            key = self._tag(budget) + b":c"
            parts.append(encode(b"ZREM", key, *members))
            routes.append(key)
        for undo, key in undos:
            parts.append(undo)
            routes.append(key)
        self.batches += 1
        self.commands += len(parts)
        conn.pipeline(parts, routes, batch)
        timer = asyncio.get_running_loop().call_later(self._timeout, self._expire, batch, conn)
        batch.add_done_callback(functools.partial(_settled, timer))
        if carried:
            batch.add_done_callback(functools.partial(self._carried_back, carried))

    def _carried_back(
        self, carried: list[tuple[int, str, list[bytes]]], batch: asyncio.Future[list[Any]]
    ) -> None:
        """A script that failed (NOSCRIPT) gave nothing back: queue its releases again."""
        if batch.cancelled() or batch.exception() is not None:
            return  # the connection is gone: a restarted Redis has no leases to give back
        replies = batch.result()
        for index, budget, members in carried:
            if isinstance(replies[index], ReplyError):
                for member in members:
                    self._give_back(budget, member)

    def _expire(self, batch: asyncio.Future[list[Any]], conn: Link) -> None:
        if not batch.done():
            log.warning("redis at %s did not answer within %.3f s; reconnecting", self.target,
                        self._timeout)
            conn.expire(batch, TimeoutError(f"no answer within {self._timeout} s"))

    async def _load_script(self) -> None:
        """After NOSCRIPT: load it again (a failure shows in the retried decision)."""
        if self._conn is not None:
            with contextlib.suppress(OSError, TimeoutError, ReplyError):
                await self._send_script(self._conn)

    async def _send_script(self, conn: Link) -> None:
        """Into every Redis that decides (each master of a cluster loads them when it joins)."""
        async with asyncio.timeout(self._timeout):
            await conn.broadcast(encode(b"SCRIPT", b"LOAD", SCRIPT), keep=True)
            await conn.broadcast(encode(b"SCRIPT", b"LOAD", QUOTA_SCRIPT), keep=True)
            await conn.broadcast(encode(b"SCRIPT", b"LOAD", COUNTER_SCRIPT), keep=True)
            await conn.broadcast(encode(b"SCRIPT", b"LOAD", CREDIT_SCRIPT), keep=True)

    def _rate_keys(
        self, budget: str, scope: str, also: Window | None, kinds: bytes
    ) -> tuple[bytes, ...]:
        """The budget's window for ``scope``, its leases, and the window of ``also`` (else the
        first again), each named by its kind: one Cluster slot, the ``{budget}`` tag."""
        tag = self._tag(budget)
        if kinds == LOGS:
            rate_key = tag + b":r:" + scope.encode() if scope else tag + b":r"
            route_key = tag + b":r:" + also.scope.encode() if also is not None else rate_key
            return rate_key, tag + b":c", route_key
        rate_key = tag + SUFFIX[kinds[:1]]
        if scope:
            rate_key += b":" + scope.encode()
        if also is None:
            return rate_key, tag + b":c", rate_key
        return rate_key, tag + b":c", tag + SUFFIX[kinds[1:]] + b":" + also.scope.encode()

    def _quota_key(self, workspace: str) -> bytes:
        """``<prefix>{q:<workspace>}``: a workspace's quotas, a Cluster slot of their own."""
        return b"%b{q:%b}" % (self._prefix, workspace.encode())

    def _reading(self, op: Op) -> bytes:
        """The command of a read that counts nothing: a quota's usage, a budget's balance."""
        if op[0] == USAGE:
            return encode(b"EVALSHA", QUOTA_SHA, 1, self._quota_key(op[1]), PEEK)
        credits = op[10]
        assert credits is not None  # a balance is asked with the key's credits
        return encode(b"EVALSHA", CREDIT_SHA, 1, self._credit_key(op[1]), PEEK,
                      *_credit_args(credits), 0)

    def _credit_key(self, budget: str) -> bytes:
        """``<prefix>{cr:<budget>}``: a budget's credits, a Cluster slot of their own."""
        return b"%b{cr:%b}" % (self._prefix, budget.encode())

    def _tag(self, budget: str) -> bytes:
        """``<prefix>{<budget>}``: every Redis key of a budget starts so, one Cluster slot."""
        return b"%b{%b}" % (self._prefix, budget.encode())

    async def _renew(self) -> None:
        """Push out the expiry of every lease this node holds (long streams keep theirs)."""
        conn = self._conn
        if conn is None or not self._held:
            return
        parts, routes = [], []
        for budget, members in self._held.items():
            tag = self._tag(budget)
            parts.append(encode(b"EVALSHA", SHA, b"2", tag + b":r", tag + b":c", RENEW,
                                self._lease_ttl_us, *members))
            routes.append(tag + b":c")
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        conn.pipeline(parts, routes, future)
        with contextlib.suppress(ConnectionError, TimeoutError):
            async with asyncio.timeout(self._timeout):
                replies = await future
            if any(isinstance(r, ReplyError) and str(r).startswith("NOSCRIPT") for r in replies):
                await self._load_script()  # the next renewal goes through


def _settled(timer: asyncio.TimerHandle, batch: asyncio.Future[list[Any]]) -> None:
    """The batch is answered or failed: its timeout is moot, and a failure is marked as seen
    (the requests waiting on it re-raise it; a batch of releases only has nobody waiting)."""
    timer.cancel()
    if not batch.cancelled():
        batch.exception()



def _quota_ok(quota: Any) -> bool:
    """No quota asked, or the quota script counted the request."""
    return quota is None or (not isinstance(quota, ReplyError) and quota[0] == 0)


def _read(op: Op, reply: list[int]) -> Decision | QuotaUsage | CreditState:
    """The answer to a read that counts nothing: a window's peek, a quota's usage, a budget's
    balance."""
    mode = op[0]
    if mode == USAGE:
        return QuotaUsage(reply[1], reply[2], reply[3] / 1000, reply[4] / 1000)
    if mode == BALANCE:
        return CreditState(reply[1], reply[2] / 1000)
    _, count, reset_us, which = reply
    also = op[7]
    limit = also.limit if which == 1 and also is not None else op[3]
    remaining = max(0, limit - count)
    reset = reset_us / 1_000_000
    return Decision(remaining > 0, limit, remaining, reset, 0.0 if remaining else reset)


def _credit_ok(credit: Any) -> bool:
    """No credits asked, or the credit script spent the request's cost."""
    return credit is None or (not isinstance(credit, ReplyError) and credit[0] == SPENT)


def _credit_args(credits: Credits) -> tuple[int | bytes, ...]:
    """CREDIT_SCRIPT's ARGV[2..7]: the key's stored credits."""
    return (credits.set_version, credits.set_value, credits.set_period, credits.added,
            credits.refill_amount or 0, INTERVAL[credits.refill_interval])


def _kinds(algorithm: str, also: Window | None) -> bytes:
    """The script's ARGV[2]: the kind of the key's window, then of ``also`` (else the same)."""
    kind = KIND[algorithm]
    return kind + (KIND[also.algorithm] if also is not None else kind)


def cluster_limiter(url: str, options: LimiterConfig) -> RedisRateLimiter:
    """The same limiter on a Redis Cluster: one connection per master (README "Redis
    Cluster")."""
    return RedisRateLimiter(url, options, connect=ClusterConnection.open)
