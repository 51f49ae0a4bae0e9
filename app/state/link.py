"""The connection to Redis (`REDIS_URL`), and whether it is up.

One `RedisLink` per process holds both clients of redis-py: the asyncio one for the request path
(limits, stored responses, change notices) and the synchronous one for the pool's saves, which run in
a worker thread (app/credentials/keeper.py). Every caller that sees Redis fail calls `failed`: the
link turns `degraded` (once, with a log line and a metric), callers fall back to what this process
knows, and `watch` pings until Redis answers again, then runs the `on_recovered` callbacks, which
resynchronise.

The URL's password is a secret: it is registered for log redaction, and `display` (used in every
message) masks it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry as SyncRetry

from app.logs import register_secret

log = logging.getLogger("gptomni2api.state")

T = TypeVar("T")

PREFIX = "gptomni2api:"  # every key the gateway writes in Redis starts with this
TIMEOUT = 1.0  # seconds for a connect or a reply: a dead Redis must not hold a request up for long
WATCH_INTERVAL = 0.25  # seconds between pings while degraded
HEALTH_INTERVAL = 1.0  # seconds between pings while up (an outage is noticed without traffic too)

# What a Redis call may raise when Redis is away or broken: each is a reason to degrade, not a 500.
FAILURES: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError, asyncio.TimeoutError)


def raise_if_cancelled() -> None:
    """In an `except FAILURES`: re-raise a cancellation that a time-out turned into a TimeoutError
    (`asyncio.timeout` does that when both happen at once); it is not Redis failing."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def validate_redis_url(url: str) -> str:
    """`url` if it is a usable `redis://` or `rediss://` URL; ValueError (never quoting it) if not."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a valid URL (redis://[:password@]host:port/db)") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError("must start with redis:// or rediss:// (TLS)")
    if not parts.hostname:
        raise ValueError("names no host (redis://[:password@]host:port/db)")
    if port is not None and not 0 < port < 65536:
        raise ValueError("has a port out of range")
    if parts.query or parts.fragment:
        # redis-py would take `?password=...` from here, which no message could mask: not accepted.
        raise ValueError("must not have a query string; put the password before the host")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError("the path must be a database number, e.g. /0")
    return url


def redis_password(url: str) -> str | None:
    password = urlsplit(url).password
    return unquote(password) if password else None


def redis_display(url: str) -> str:
    """The URL as messages show it: the password masked, the rest as given."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return parts._replace(netloc=netloc).geturl()


def describe(error: BaseException) -> str:
    """Why a Redis call failed, in words that hold no password (redaction catches it regardless)."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class RedisLink:
    def __init__(self, url: str, *, timeout: float = TIMEOUT) -> None:
        self.url = url
        self.display = redis_display(url)
        register_secret(redis_password(url))
        # One retry, on a new connection, for a connection the server closed (a Redis that restarted
        # leaves the pools full of them); a Redis that is down fails the retry at once too. Never on
        # a time-out: the command may have run (an increment must not count twice).
        self.sync: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=SyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.aio: aioredis.Redis = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=AsyncRetry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self.degraded = False
        self.on_degraded: list[Callable[[], None]] = []
        self.on_recovered: list[Callable[[], None]] = []

    def check(self) -> None:
        """At start-up: Redis must answer, or the process must not start. ConnectionError names
        REDIS_URL (masked) and the reason."""
        try:
            self.sync.ping()
        except FAILURES as exc:
            raise ConnectionError(
                f"cannot reach Redis at REDIS_URL={self.display}: {describe(exc)}. Start Redis, fix "
                "REDIS_URL, or unset it to keep the pool in this process (CREDENTIALS_FILE)."
            ) from None

    async def attempt(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """`call()`'s result, or None when Redis is away: degraded already (then nothing is sent),
        or failing now (then the link degrades). For the callers that fall back on this process's
        own view when Redis cannot answer."""
        if self.degraded:
            return None
        try:
            return await call()
        except FAILURES as exc:
            raise_if_cancelled()
            self.failed(exc)
            return None

    async def every(self, seconds: float, job: Callable[[], Awaitable[object]]) -> None:
        """Forever: wait `seconds`, run `job`. An odd failure (a torn connection's reply) counts as
        Redis away; the loop goes on."""
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as exc:
                raise_if_cancelled()
                self.failed(exc)

    def failed(self, error: BaseException) -> None:
        """A Redis call failed: degrade (once per outage)."""
        if self.degraded:
            return
        self.degraded = True
        log.warning(
            "state degraded: Redis at REDIS_URL=%s failed (%s); serving from the last known pool with "
            "per-replica limits until it is back",
            self.display,
            describe(error),
        )
        for callback in self.on_degraded:
            callback()

    async def _recovered(self) -> None:
        # Connections made before the outage are dead: drop them all before anyone uses one.
        # (Idle ones only: a connection in use belongs to its caller, whose retry gets a new one.)
        await self.aio.connection_pool.disconnect(inuse_connections=False)
        self.sync.connection_pool.disconnect(inuse_connections=False)
        self.degraded = False
        log.info("state ready: Redis at REDIS_URL=%s answers again; resynchronising", self.display)
        for callback in self.on_recovered:
            callback()

    async def watch(self) -> None:
        """Forever: ping; degrade when Redis stops answering, recover when it answers again."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL if self.degraded else HEALTH_INTERVAL)
            try:
                await self.aio.ping()
                if self.degraded:
                    await self._recovered()
            except Exception as exc:  # any failure to answer (a torn connection too) is Redis away
                raise_if_cancelled()
                self.failed(exc)

    async def aclose(self) -> None:
        await self.aio.aclose()
        self.sync.close()
