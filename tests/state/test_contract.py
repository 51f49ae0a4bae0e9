"""The state interface's contract, run against both backends: embedded (memory + CREDENTIALS_FILE)
and Redis (a real redis-server). Two `State`s on one store stand for two replicas (or two restarts).

What both must do: keep the pool and the keys across restarts, let an admin write be read back once
`commit` returned, carry a change from one instance to the other, store responses, export the pool in
the file's format, and hold each instance's own limits. What only Redis can do (limits and usage
across instances, a change seen within 100 ms, degrading and recovering) is tested below the
contract, on Redis alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from app.config import ConfigError, Settings
from app.core.job import Turn
from app.credentials.pool import CredentialPool, CredentialState, PoolPolicy, PoolSaturated
from app.credentials.store import parse_store
from app.keys.registry import KeyRefusal, KeyRegistry
from app.state.backend import State, build_state
from app.surfaces.openai_responses.store import StoredResponse
from app.upstream.failures import FailureKind, UpstreamFailure

pytestmark = pytest.mark.anyio

COOKIE_A = "session=contract-cookie-aaaaaaaaaaaa"
COOKIE_B = "session=contract-cookie-bbbbbbbbbbbb"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=["embedded", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return str(request.param)


@pytest.fixture
def store_settings(backend: str, tmp_path: Path, start_redis: Any) -> dict[str, Any]:
    """The settings that put every instance of this test on one store."""
    if backend == "embedded":
        return {"credentials_file": str(tmp_path / "pool.json")}
    return {"redis_url": start_redis().url}


def make_settings(store: dict[str, Any], **extra: Any) -> Settings:
    return Settings(_env_file=None, auth_disabled=True, **store, **extra)  # type: ignore[call-arg]


@pytest.fixture
async def open_state(store_settings: dict[str, Any]) -> AsyncIterator[Callable[..., State]]:
    """`open_state(cookies=[], policy=None, **settings)`: a started State; all stopped at the end."""
    opened: list[State] = []

    def open_(cookies: list[str] | None = None, policy: PoolPolicy | None = None, **extra: Any) -> State:
        settings = make_settings(store_settings, gptomni_credentials=cookies or [], **extra)
        pool = CredentialPool(policy=policy)
        state = build_state(settings, pool, KeyRegistry())
        state.start()
        opened.append(state)
        return state

    yield open_
    for state in opened:
        await state.stop()


async def eventually(check: Callable[[], bool], within: float = 5.0) -> float:
    """Seconds until `check()` held; fails after `within` seconds."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > within:
            pytest.fail(f"not within {within} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def ids(state: State) -> set[str]:
    return {c.id for c in state.keeper.pool.credentials}


# --- the contract: both backends -------------------------------------------------------------------
async def test_the_pool_and_keys_survive_a_restart(open_state: Callable[..., State]) -> None:
    first = open_state([COOKIE_A])
    first.keeper.pool.add(COOKIE_B)
    key, _ = first.keeper.keys.create("team")  # type: ignore[union-attr]
    await first.keeper.commit()
    await first.stop()
    again = open_state()
    assert ids(again) == ids(first)
    assert isinstance(again.keeper.keys, KeyRegistry)
    assert again.keeper.keys.get(key.id) is not None


async def test_a_committed_change_is_read_by_a_new_instance(open_state: Callable[..., State]) -> None:
    writer = open_state([COOKIE_A, COOKIE_B])
    credential = writer.keeper.pool.credentials[0]
    writer.keeper.pool.record(credential, UpstreamFailure(FailureKind.AUTH, "signed out"))
    writer.keeper.pool.remove(writer.keeper.pool.credentials[1].id)
    await writer.keeper.commit()
    reader = open_state()
    states = {c.id: c.state for c in reader.keeper.pool.credentials}
    assert states == {credential.id: CredentialState.INVALID}


async def test_a_removed_cookie_stays_removed_though_configured(open_state: Callable[..., State]) -> None:
    first = open_state([COOKIE_A])
    first.keeper.pool.remove(first.keeper.pool.credentials[0].id)
    await first.keeper.commit()
    again = open_state([COOKIE_A])
    assert ids(again) == set()


async def test_a_change_reaches_a_running_instance(open_state: Callable[..., State]) -> None:
    a, b = open_state([COOKIE_A]), open_state()
    await eventually(lambda: len(ids(b)) == 1)
    credential, _ = a.keeper.pool.add(COOKIE_B)
    await a.keeper.commit()
    await eventually(lambda: credential.id in ids(b))
    a.keeper.pool.record(credential, UpstreamFailure(FailureKind.AUTH, "signed out"))
    await eventually(lambda: b.keeper.pool.get(credential.id).state is CredentialState.INVALID)  # type: ignore[union-attr]
    a.keeper.pool.remove(credential.id)
    await eventually(lambda: credential.id not in ids(b))


async def test_responses_are_stored_read_and_deleted(open_state: Callable[..., State]) -> None:
    state = open_state(responses_ttl=0.5)
    record = StoredResponse("resp_contract", {"id": "resp_contract", "output": []}, (Turn("user", "hi"),))
    await state.responses.put(record)
    assert await state.responses.get("resp_contract") == record
    assert await state.responses.delete("resp_contract") is True
    assert await state.responses.get("resp_contract") is None
    await state.responses.put(record)
    await asyncio.sleep(0.7)
    assert await state.responses.get("resp_contract") is None  # expired


async def test_export_is_a_credentials_file(open_state: Callable[..., State]) -> None:
    state = open_state([COOKIE_A, COOKIE_B])
    state.keeper.pool.remove(state.keeper.pool.credentials[1].id)
    state.keeper.keys.create("exported")  # type: ignore[union-attr]
    data = await state.export()
    from app.credentials.store import encode_store

    parsed = parse_store(encode_store(data).decode(), "export")
    assert [r["cookie"] for r in parsed.credentials] == [COOKIE_A]
    assert len(parsed.removed) == 1
    assert [k["name"] for k in parsed.keys] == ["exported"]


async def test_an_instance_holds_its_own_credential_rate_limit(open_state: Callable[..., State]) -> None:
    state = open_state([COOKIE_A], policy=PoolPolicy(rate=(2, 60.0)))
    pool = state.keeper.pool
    for _ in range(2):
        pool.release(await pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
    with pytest.raises(PoolSaturated):
        await pool.acquire_wait(set(), 0)


async def test_an_instance_holds_a_keys_stream_cap(open_state: Callable[..., State]) -> None:
    state = open_state()
    keys = state.keeper.keys
    assert isinstance(keys, KeyRegistry)
    key, _ = keys.create("capped", max_streams=1)
    first = await keys.admit_shared(key, "m")
    with pytest.raises(KeyRefusal) as refused:
        await keys.admit_shared(key, "m")
    assert refused.value.kind == "key_streams_exhausted"
    first.release()
    (await keys.admit_shared(key, "m")).release()


# --- Redis only: what one process alone cannot do --------------------------------------------------
@pytest.fixture
def redis_url(start_redis: Any) -> str:
    return str(start_redis().url)


def open_redis(
    url: str, cookies: list[str] | None = None, policy: PoolPolicy | None = None, **extra: Any
) -> State:
    settings = make_settings({"redis_url": url}, gptomni_credentials=cookies or [], **extra)
    state = build_state(settings, CredentialPool(policy=policy), KeyRegistry())
    state.start()
    return state


async def closing(*states: State) -> None:
    for state in states:
        await state.stop()


async def test_redis_a_change_is_seen_by_another_replica_within_100_ms(redis_url: str) -> None:
    a, b = open_redis(redis_url, [COOKIE_A]), open_redis(redis_url)
    try:
        await eventually(lambda: len(ids(b)) == 1)
        await asyncio.sleep(0.2)  # b's listener is subscribed
        credential, _ = a.keeper.pool.add(COOKIE_B)
        await a.keeper.commit()
        assert await eventually(lambda: credential.id in ids(b), within=2) < 0.1
        a.keeper.pool.reset(credential)
        a.keeper.pool.record(credential, UpstreamFailure(FailureKind.AUTH, "signed out"))
        await a.keeper.commit()
        took = await eventually(
            lambda: b.keeper.pool.get(credential.id).state is CredentialState.INVALID,  # type: ignore[union-attr]
            within=2,
        )
        assert took < 0.1
    finally:
        await closing(a, b)


async def test_redis_a_credential_rate_limit_holds_across_replicas(redis_url: str) -> None:
    policy = PoolPolicy(rate=(3, 60.0))
    replicas = [open_redis(redis_url, [COOKIE_A], policy) for _ in range(3)]
    admitted, waits = 0, []
    try:
        for _ in range(3):
            for replica in replicas:  # each replica alone would admit 3
                try:
                    replica.keeper.pool.release(await replica.keeper.pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
                    admitted += 1
                except PoolSaturated as exc:
                    waits.append(exc.retry_after)
    finally:
        await closing(*replicas)
    assert (admitted, len(waits)) == (3, 6)
    assert min(waits) > 30  # the window's oldest request leaves in about a minute


async def test_redis_a_stream_cap_is_a_lease_that_a_dead_replica_loses(redis_url: str) -> None:
    policy = PoolPolicy(max_in_flight=1)
    a = open_redis(redis_url, [COOKIE_A], policy, stream_lease_seconds=0.6)
    b = open_redis(redis_url, [COOKIE_A], policy, stream_lease_seconds=0.6)
    try:
        held = await a.keeper.pool.acquire_wait(set(), 0)
        assert held is not None
        await asyncio.sleep(1.0)  # longer than the lease: a renews it while the use lasts
        with pytest.raises(PoolSaturated):
            await b.keeper.pool.acquire_wait(set(), 0)
        a.keeper.pool.release(held)
        await eventually(lambda: not a.limits.held, within=1)  # type: ignore[union-attr]
        await asyncio.sleep(0.05)
        b.keeper.pool.release(await b.keeper.pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
        await asyncio.sleep(0.1)  # b's release reaches Redis
        # A replica that dies holding a slot: its lease is no longer renewed and runs out.
        dying = await a.keeper.pool.acquire_wait(set(), 0)
        assert dying is not None
        for task in a._tasks:
            task.cancel()
        with pytest.raises(PoolSaturated):
            await b.keeper.pool.acquire_wait(set(), 0)
        started = time.monotonic()
        while True:
            try:
                b.keeper.pool.release(await b.keeper.pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
                break
            except PoolSaturated:
                await asyncio.sleep(0.05)
        assert time.monotonic() - started < 1.5
    finally:
        await closing(a, b)


async def test_redis_key_usage_is_summed_across_replicas(redis_url: str) -> None:
    a, b = open_redis(redis_url), open_redis(redis_url)
    try:
        keys_a, keys_b = a.keeper.keys, b.keeper.keys
        assert isinstance(keys_a, KeyRegistry) and isinstance(keys_b, KeyRegistry)
        key, _ = keys_a.create("shared", rpm=4)
        await a.keeper.commit()
        await eventually(lambda: keys_b.get(key.id) is not None)
        key_b = keys_b.get(key.id)
        assert key_b is not None
        for registry, k in ((keys_a, key), (keys_b, key_b), (keys_a, key), (keys_b, key_b)):
            admission = await registry.admit_shared(k, "m")
            admission.record(10, 5)
            admission.release()
        with pytest.raises(KeyRefusal) as refused:  # rpm 4 across both
            await keys_b.admit_shared(key_b, "m")
        assert refused.value.kind == "key_rate_limited"
        assert a.usage is not None and b.usage is not None
        await a.usage.sync()
        await b.usage.sync()
        await a.usage.sync()
        for k in (key, key_b):
            assert (k.usage.requests, k.usage.prompt_tokens, k.usage.completion_tokens) == (4, 40, 20)
    finally:
        await closing(a, b)


async def test_redis_away_degrades_then_resynchronises(start_redis: Any) -> None:
    server = start_redis()
    a, b = open_redis(server.url, [COOKIE_A]), open_redis(server.url)
    policy_limits: list[bool] = []
    a.link.on_degraded.append(lambda: policy_limits.append(True))  # type: ignore[union-attr]
    try:
        await eventually(lambda: len(ids(b)) == 1)
        server.stop()
        await eventually(lambda: a.degraded and b.degraded, within=5)
        assert policy_limits == [True]
        # Served from the last known pool; an admin write is not acknowledged meanwhile.
        assert await a.keeper.pool.acquire_wait(set(), 0) is not None
        credential, _ = a.keeper.pool.add(COOKIE_B)
        from app.credentials.keeper import NotSaved

        with pytest.raises(NotSaved):
            await a.keeper.commit()
        server.start()
        await eventually(lambda: not a.degraded and not b.degraded, within=5)
        await eventually(lambda: credential.id in ids(b), within=5)  # the unsaved add arrived
    finally:
        await closing(a, b)


def test_redis_unreachable_at_start_names_redis_url_not_its_password(tmp_path: Path) -> None:
    from tests.processes import free_port

    url = f"redis://:hunter2-secret-pass@127.0.0.1:{free_port()}/0"
    with pytest.raises(ConfigError) as failed:
        build_state(make_settings({"redis_url": url}), CredentialPool(), KeyRegistry())
    message = str(failed.value)
    assert "REDIS_URL=redis://:***@127.0.0.1:" in message
    assert "hunter2" not in message


async def test_redis_imports_the_credentials_file_once(redis_url: str, tmp_path: Path) -> None:
    file = tmp_path / "pool.json"
    embedded = build_state(
        make_settings({"credentials_file": str(file)}, gptomni_credentials=[COOKIE_A]),
        CredentialPool(),
        KeyRegistry(),
    )
    await embedded.stop()
    first = open_redis(redis_url, credentials_file=str(file))
    assert ids(first) == ids(embedded)
    first.keeper.pool.remove(next(iter(ids(first))))
    await first.keeper.commit()
    await first.stop()
    again = open_redis(redis_url, credentials_file=str(file))  # the file still holds the cookie
    try:
        assert ids(again) == set()  # imported once: the removal in Redis stands
    finally:
        await again.stop()


async def test_redis_a_request_admitted_while_degraded_gives_back_no_other_requests_lease(
    redis_url: str,
) -> None:
    policy = PoolPolicy(max_in_flight=2)
    a, b = open_redis(redis_url, [COOKIE_A], policy), open_redis(redis_url, [COOKIE_A], policy)
    try:
        assert a.link is not None
        a.link.degraded = True  # Redis away: admitted on this replica's own count, without a lease
        unleased = await a.keeper.pool.acquire_wait(set(), 0)
        a.link.degraded = False
        leased = await a.keeper.pool.acquire_wait(set(), 0)
        assert unleased is not None and leased is not None
        a.keeper.pool.release(unleased)  # its end must not give back `leased`'s slot
        await asyncio.sleep(0.1)
        b.keeper.pool.release(await b.keeper.pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
        held = await b.keeper.pool.acquire_wait(set(), 0)
        with pytest.raises(PoolSaturated):  # a's leased request and this one: the cap of 2
            await b.keeper.pool.acquire_wait(set(), 0)
        b.keeper.pool.release(held)  # type: ignore[arg-type]
        a.keeper.pool.release(leased)
    finally:
        await closing(a, b)


async def test_redis_a_request_cancelled_while_redis_answers_takes_no_slot(redis_url: str) -> None:
    state = open_redis(redis_url, [COOKIE_A], PoolPolicy(max_in_flight=1))
    try:
        assert state.limits is not None
        pool = state.keeper.pool
        gate = asyncio.Event()
        take = state.limits.take

        async def slow_take(*args: Any, **kwargs: Any) -> Any:
            await gate.wait()  # Redis is slow to answer; the client leaves meanwhile
            return await take(*args, **kwargs)

        state.limits.take = slow_take  # type: ignore[method-assign]
        waiting = asyncio.create_task(pool.acquire_wait(set(), 1))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        state.limits.take = take  # type: ignore[method-assign]
        assert pool.credentials[0].in_flight == 0
        pool.release(await pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
    finally:
        await state.stop()


async def test_redis_a_usage_batch_counts_once_however_often_it_is_sent(redis_url: str) -> None:
    state = open_redis(redis_url)
    try:
        keys, usage = state.keeper.keys, state.usage
        assert isinstance(keys, KeyRegistry) and usage is not None and state.link is not None
        key, _ = keys.create("once")
        await usage.sync()
        for _ in range(3):
            keys.admit(key, "m").release()
        batch = usage._batch()
        usage.pending = batch
        await usage.sync()
        usage.pending = batch  # its reply was lost (a time-out): the same batch is sent again
        await usage.sync()
        assert key.usage.requests == 3
        assert await state.link.aio.hget(f"gptomni2api:usage:{key.id}", "requests") == b"3"
    finally:
        await state.stop()


async def test_redis_credential_successes_and_failures_are_summed_across_replicas(redis_url: str) -> None:
    a, b = open_redis(redis_url, [COOKIE_A]), open_redis(redis_url, [COOKIE_A])
    try:
        assert a.counts is not None and b.counts is not None
        on_a, on_b = a.keeper.pool.credentials[0], b.keeper.pool.credentials[0]
        for _ in range(3):
            a.keeper.pool.record(on_a, None)
        b.keeper.pool.record(on_b, None)
        b.keeper.pool.record(on_b, UpstreamFailure(FailureKind.TIMEOUT, "slow"))
        await a.counts.sync()
        await b.counts.sync()
        await a.counts.sync()
        for credential in (on_a, on_b):  # whichever replica the console asks, the same numbers
            assert (credential.successes, credential.failures) == (4, {"timeout": 1})
    finally:
        await closing(a, b)


async def test_redis_refusals_leave_the_replicas_own_bucket_for_when_redis_is_away(redis_url: str) -> None:
    policy = PoolPolicy(rate=(2, 60.0))
    a, b = open_redis(redis_url, [COOKIE_A], policy), open_redis(redis_url, [COOKIE_A], policy)
    try:
        assert b.link is not None
        for _ in range(2):
            a.keeper.pool.release(await a.keeper.pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
        for _ in range(3):  # the shared limit is used up: b is refused, and spends nothing of its own
            with pytest.raises(PoolSaturated):
                await b.keeper.pool.acquire_wait(set(), 0)
        for task in b._tasks:  # (no health check to notice that Redis is in fact still there)
            task.cancel()
        b.link.degraded = True  # Redis away: b's own limit of 2 applies, whole
        for _ in range(2):
            b.keeper.pool.release(await b.keeper.pool.acquire_wait(set(), 0))  # type: ignore[arg-type]
        with pytest.raises(PoolSaturated):
            await b.keeper.pool.acquire_wait(set(), 0)
    finally:
        await closing(a, b)
