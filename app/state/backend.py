"""The state backend: one small interface, two implementations.

`State` is what the app holds: the keeper that loads, saves and takes in the pool and the client keys
(`commit` for admin writes), the stored responses, the limits shared across replicas, whether it is
`degraded`, its background tasks, and `export` (the whole pool as a credentials file).

- embedded (no `REDIS_URL`): memory, persisted to `CREDENTIALS_FILE`; limits are per process.
  Exactly the gateway as it was before Redis.
- redis: the pool and keys as one document in Redis (app/state/store.py), change notices over
  pub/sub, limits as Lua scripts (app/state/limits.py), key usage summed (app/state/usage.py),
  responses under their own keys (app/state/responses.py). While Redis is away the process keeps
  serving on what it knows, with its own limits, and says so (`degraded`, /ready, a metric, a log
  line); when Redis is back, unsaved changes are saved and the document is read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from app.config import ConfigError, Settings
from app.credentials.keeper import PoolKeeper
from app.credentials.pool import CredentialPool
from app.credentials.store import CredentialStore, StoreData, StoreError, merge, pool_data
from app.keys.registry import KeyRegistry
from app.state.counters import SYNC_INTERVAL, SharedCounters
from app.state.limits import RedisLimits
from app.state.link import FAILURES, PREFIX, RedisLink, describe, raise_if_cancelled
from app.state.pool_counts import CredentialCountsSource
from app.state.responses import RedisResponseStore
from app.state.store import CHANNEL, RedisStore
from app.state.usage import KeyUsageSource
from app.surfaces.openai_responses.store import MemoryResponseStore, ResponseStore

log = logging.getLogger("gptomni2api.state")


def revoked_key(session_id: str) -> str:
    return f"{PREFIX}console-revoked:{session_id}"


@dataclass
class State:
    name: str  # "embedded" or "redis"
    keeper: PoolKeeper
    responses: ResponseStore
    link: RedisLink | None = None
    limits: RedisLimits | None = None
    usage: SharedCounters | None = None  # client keys' usage, summed over the replicas
    counts: SharedCounters | None = None  # credentials' successes and failures, summed
    store: RedisStore | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Console sessions signed out before they expire: id -> expiry (wall clock). With Redis also
    # there, so every replica refuses them; this copy covers this process while Redis is away.
    _revoked: dict[str, float] = field(default_factory=dict)

    @property
    def degraded(self) -> bool:
        return self.link is not None and self.link.degraded

    def describe(self) -> dict[str, Any]:
        """For /ready: which backend, and whether it is degraded."""
        return {"backend": self.name, "degraded": self.degraded}

    async def revoke_session(self, session_id: str, expires_at: float) -> None:
        """A console session was signed out: refuse it from now on, until it would have expired."""
        now = time.time()
        self._revoked = {id_: at for id_, at in self._revoked.items() if at > now}
        self._revoked[session_id] = expires_at
        if self.link is not None:
            aio, until = self.link.aio, max(int(now) + 1, int(expires_at))
            await self.link.attempt(lambda: aio.set(revoked_key(session_id), b"1", exat=until))

    async def session_revoked(self, session_id: str) -> bool:
        if session_id in self._revoked:
            return True
        if self.link is None:
            return False
        aio = self.link.aio
        return bool(await self.link.attempt(lambda: aio.exists(revoked_key(session_id))))

    async def export(self) -> StoreData:
        """The pool and the keys (the credentials file's format): what is stored (Redis, when it
        answers) merged with this process's view, which may hold changes not saved yet."""
        local = pool_data(self.keeper.pool, self.keeper.keys)
        if self.store is None or self.link is None:
            return local
        try:
            stored = await self.link.attempt(self.store.read)
        except StoreError:
            return local
        return merge(stored, local) if stored is not None else local

    def start(self, on_degraded: Callable[[bool], None] | None = None) -> None:
        """Start the background work (on the loop): saves and adoption, and with Redis the change
        listener, lease renewal, usage sums and the health watch."""
        jobs: list[Coroutine[Any, Any, None]] = []
        if self.keeper.store is not None:
            jobs.append(self.keeper.run())
        if self.link is not None:
            link = self.link
            if on_degraded is not None:
                link.on_degraded.append(lambda: on_degraded(True))
                link.on_recovered.append(lambda: on_degraded(False))
            # Back: save what changed meanwhile, and write our view even if nothing did (a Redis that
            # came back empty, without its append-only file, gets the pool again).
            link.on_recovered.append(self.keeper.schedule_save)
            jobs.append(link.watch())
            jobs.append(self._listen())
            if self.limits is not None:
                # Every third of a lease, so a lease never runs out while its request lives.
                jobs.append(link.every(self.limits.lease_ms / 3000, self.limits.renew))
            for counters in (self.usage, self.counts):
                if counters is not None:
                    jobs.append(link.every(SYNC_INTERVAL, counters.sync))
        self._tasks = [asyncio.create_task(job) for job in jobs]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for counters in (self.usage, self.counts):
            if counters is not None:
                await counters.sync()  # the last counts
        await asyncio.to_thread(self.keeper.save)
        if self.link is not None:
            await self.link.aclose()

    async def _pull(self) -> None:
        assert self.store is not None
        data = await self.store.pull()
        if data is not None:
            self.keeper.take_in(data)

    async def _listen(self) -> None:
        """Take in every change another replica saves, as its notice arrives (pub/sub). After each
        (re)subscription the document is read once, for what was missed meanwhile."""
        assert self.link is not None
        assert self.store is not None
        link, origin = self.link, self.store.origin.encode()
        while True:
            if link.degraded:
                await asyncio.sleep(0.1)
                continue
            pubsub = link.aio.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                await self._pull()
                while not link.degraded:
                    # redis-py's wait for a message can swallow a cancellation that meets its time-out
                    raise_if_cancelled()
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message.get("data") != origin:
                        await self._pull()
            except FAILURES as exc:
                raise_if_cancelled()
                link.failed(exc)
            except StoreError as exc:
                log.error("%s; keeping the pool as it is", exc)
                await asyncio.sleep(1.0)
            except Exception:  # the listener must outlive any one odd reply; it subscribes again
                log.exception("the change listener failed; subscribing again")
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(*FAILURES):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]


def build_state(settings: Settings, pool: CredentialPool, keys: KeyRegistry) -> State:
    """The backend the settings ask for, filled (file or Redis, then GPTOMNI_CREDENTIALS). Raises
    ConfigError for a corrupt file, an unreachable Redis, or an unusable document in it."""
    memory = MemoryResponseStore(settings.responses_ttl, settings.responses_max, settings.responses_max_bytes)
    if settings.redis_url is None:
        file = CredentialStore(settings.credentials_file) if settings.credentials_file else None
        keeper = PoolKeeper(pool, file, keys)
        try:
            keeper.start(settings.gptomni_credentials)
        except StoreError as exc:
            raise ConfigError(str(exc)) from None
        except OSError as exc:
            raise ConfigError(f"CREDENTIALS_FILE {settings.credentials_file}: {exc.strerror}") from None
        return State("embedded", keeper, memory)

    link = RedisLink(settings.redis_url.get_secret_value())
    try:
        link.check()
    except ConnectionError as exc:
        raise ConfigError(str(exc)) from None
    store = RedisStore(link)
    keeper = PoolKeeper(pool, store, keys)
    try:
        if settings.credentials_file:
            imported = store.import_file(settings.credentials_file)
            if imported is not None:
                log.warning(
                    "imported %d credential(s) and the client keys from CREDENTIALS_FILE=%s into %s; "
                    "from now on the pool lives in Redis and the file is no longer written",
                    imported,
                    settings.credentials_file,
                    store.what,
                )
        keeper.start(settings.gptomni_credentials)
    except StoreError as exc:
        raise ConfigError(str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"{store.what}: {exc.strerror or describe(exc)}") from None
    except FAILURES as exc:
        raise ConfigError(f"{store.what}: {describe(exc)}") from None
    limits = RedisLimits(link, settings.stream_lease_seconds)
    pool.shared = limits
    keys.shared = limits
    responses = RedisResponseStore(link, settings.responses_ttl, memory)
    usage = SharedCounters(link, KeyUsageSource(keys))
    counts = SharedCounters(link, CredentialCountsSource(pool))
    return State("redis", keeper, responses, link, limits, usage, counts, store)
