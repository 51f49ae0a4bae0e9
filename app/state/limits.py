"""Limits that hold across replicas: a request rate and a cap on requests in flight, per credential
and per client key, each checked and taken in one atomic step in Redis.

`SharedLimits` is what the pool and the key admission see. The embedded backend has none: its
limits are the process's own (aiolimiter and counters in app/credentials/pool.py, the sliding window
in app/keys). With Redis those stay in place, as the per-replica limits a degraded replica falls
back on, and `RedisLimits.take` adds the shared check on top:
- the rate is a sliding window: a sorted set of the admitted requests' times (Redis's clock, so the
  replicas' clocks do not matter); at most `limit` in any `window`;
- the cap is a set of leases, each with an expiry: a slot is free when fewer than `cap` unexpired
  leases exist. A replica renews the leases it holds every third of `STREAM_LEASE_SECONDS`, so a
  replica killed mid-stream frees its slots within one lease time.
Both are in one Lua script: a request is refused or admitted by both, never half.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass
from typing import Protocol

from app.state.link import PREFIX, RedisLink

log = logging.getLogger("gptomni2api.state")

# KEYS[1]: the rate's sorted set, KEYS[2]: the leases' sorted set.
# ARGV: window ms (0: no rate), limit, cap (0: no cap), lease ms, member.
# Returns {1, 0, ""} when admitted; {0, milliseconds to wait, "rate" | "streams"} when not.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window, limit = tonumber(ARGV[1]), tonumber(ARGV[2])
local cap, ttl = tonumber(ARGV[3]), tonumber(ARGV[4])
if cap > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
  if redis.call('ZCARD', KEYS[2]) >= cap then
    return {0, 1000, 'streams'}
  end
end
if window > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
  local n = redis.call('ZCARD', KEYS[1])
  if n >= limit then
    local first = redis.call('ZRANGE', KEYS[1], n - limit, n - limit, 'WITHSCORES')
    return {0, math.max(1, tonumber(first[2]) + window - now), 'rate'}
  end
  redis.call('ZADD', KEYS[1], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[1], window)
end
if cap > 0 then
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[5])
  redis.call('PEXPIRE', KEYS[2], ttl * 2)
end
return {1, 0, ''}
"""

# KEYS: lease sets; ARGV[1]: lease ms, ARGV[i + 1]: the lease in KEYS[i]. A lease that expired
# meanwhile (an outage longer than the lease) is put back: its request is still running.
RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
return #KEYS
"""


@dataclass(frozen=True)
class Refusal:
    retry_after: float  # seconds
    kind: str  # "rate" or "streams"


class SharedLimits(Protocol):
    @property
    def active(self) -> bool:
        """Whether the shared limits are in force (Redis answers); if not, the process's own apply."""
        ...

    async def take(self, scope: str, id_: str, *, rate: tuple[int, float] | None, cap: int) -> Refusal | None:
        """Admit one request of `scope`/`id_` (e.g. "cred"/<credential id>): None when admitted
        (then `release` once it ends, if `cap`), else why not. A limit that cannot be checked
        (the shared state is away) admits."""
        ...

    def release(self, scope: str, id_: str) -> None:
        """One request of `scope`/`id_` admitted with a cap has ended."""
        ...


def lease_key(scope: str, id_: str) -> str:
    return f"{PREFIX}lease:{scope}:{id_}"


def rate_key(scope: str, id_: str) -> str:
    return f"{PREFIX}rate:{scope}:{id_}"


class RedisLimits:
    def __init__(self, link: RedisLink, lease_seconds: float) -> None:
        self.link = link
        self.lease_ms = max(1, round(lease_seconds * 1000))
        self.held: dict[str, list[str]] = {}  # lease set -> the leases this process holds in it
        # lease set -> requests admitted without a lease (Redis was away) and still running: their
        # ends must not give back a lease that a request admitted with one still holds.
        self.unleased: dict[str, int] = {}
        self._take = link.aio.register_script(TAKE)
        self._renew = link.aio.register_script(RENEW)
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def active(self) -> bool:
        return not self.link.degraded

    async def take(self, scope: str, id_: str, *, rate: tuple[int, float] | None, cap: int) -> Refusal | None:
        if rate is None and cap <= 0:
            return None
        if self.link.degraded:
            self._unleased(scope, id_, cap)
            return None
        if self._releases:
            # This process's ended requests free their slots before it asks for one (else a client
            # that sends its next request as the last one ends could be refused for its own slot).
            # (asyncio.wait: a cancelled request must not cancel the other requests' releases.)
            await asyncio.wait(set(self._releases))
        member = uuid.uuid4().hex
        window_ms, limit = (round(rate[1] * 1000), rate[0]) if rate is not None else (0, 0)
        leases = lease_key(scope, id_)
        reply = await self.link.attempt(
            lambda: self._take(
                keys=[rate_key(scope, id_), leases],
                args=[window_ms, limit, max(0, cap), self.lease_ms, member],
            )
        )
        if reply is None:
            self._unleased(scope, id_, cap)
            return None  # per-replica limits only, until Redis is back
        admitted, wait_ms, kind = reply
        if not admitted:
            return Refusal(int(wait_ms) / 1000, kind.decode() if isinstance(kind, bytes) else str(kind))
        if cap > 0:
            self.held.setdefault(leases, []).append(member)
        return None

    def _unleased(self, scope: str, id_: str, cap: int) -> None:
        if cap > 0:
            leases = lease_key(scope, id_)
            self.unleased[leases] = self.unleased.get(leases, 0) + 1

    def release(self, scope: str, id_: str) -> None:
        leases = lease_key(scope, id_)
        unleased = self.unleased.get(leases, 0)
        if unleased:  # one of the requests admitted without a lease ended
            if unleased == 1:
                del self.unleased[leases]
            else:
                self.unleased[leases] = unleased - 1
            return
        held = self.held.get(leases)
        if not held:
            return
        member = held.pop()
        if not held:
            del self.held[leases]
        task = asyncio.get_running_loop().create_task(self._drop(leases, member))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _drop(self, leases: str, member: str) -> None:
        await self.link.attempt(lambda: self.link.aio.zrem(leases, member))  # else it expires by itself

    async def renew(self) -> None:
        """Extend every lease this process holds (their requests still run)."""
        if not self.held or self.link.degraded:
            return
        keys, members = [], []
        for leases, held in self.held.items():
            for member in held:
                keys.append(leases)
                members.append(member)
        await self.link.attempt(lambda: self._renew(keys=keys, args=[self.lease_ms, *members]))
