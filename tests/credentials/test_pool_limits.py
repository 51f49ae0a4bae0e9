"""CredentialPool: per-credential caps and rates, waiting for room, and the persistence hooks."""

from __future__ import annotations

import asyncio
import time

import pytest

from app.credentials.pool import (
    Credential,
    CredentialPool,
    CredentialState,
    PoolPolicy,
    PoolSaturated,
    credential_id,
)
from app.upstream.failures import FailureKind, UpstreamFailure
from tests.fakes import Clock

A = "session-token=AAAA-limits-cookie-0001"
B = "session-token=BBBB-limits-cookie-0002"
C = "session-token=CCCC-limits-cookie-0003"
WALL = 1_700_000_000.0


def fail(kind: FailureKind) -> UpstreamFailure:
    return UpstreamFailure(kind, f"{kind.value} happened")


def ids(credentials: list[Credential | None]) -> list[str | None]:
    return [c.id if c is not None else None for c in credentials]


# --- max_in_flight ----------------------------------------------------------------------------


def test_max_in_flight_caps_one_credential() -> None:
    pool = CredentialPool([A], policy=PoolPolicy(max_in_flight=2))
    first, second = pool.acquire(), pool.acquire()
    assert first is not None and second is first
    assert first.in_flight == 2
    assert pool.acquire() is None
    pool.release(first)
    assert pool.acquire() is first
    assert first.in_flight == 2


def test_max_in_flight_skips_capped_credential() -> None:
    pool = CredentialPool([A, B], policy=PoolPolicy(max_in_flight=1))
    a = pool.acquire()
    b = pool.acquire()
    assert ids([a, b]) == [credential_id(A), credential_id(B)]
    assert pool.acquire() is None
    assert b is not None
    pool.release(b)
    assert pool.acquire() is b  # A is still busy: B again


def test_no_cap_by_default() -> None:
    pool = CredentialPool([A])
    taken = [pool.acquire() for _ in range(50)]
    assert all(c is not None for c in taken)
    assert taken[0] is not None and taken[0].in_flight == 50


def test_release_never_goes_negative() -> None:
    pool = CredentialPool([A], policy=PoolPolicy(max_in_flight=1))
    (a,) = pool.credentials
    pool.release(a)
    assert a.in_flight == 0
    assert pool.acquire() is a
    assert pool.acquire() is None


# --- acquire_wait -------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_rate_allows_a_burst_then_refills() -> None:
    pool = CredentialPool([A], policy=PoolPolicy(rate=(3, 0.3)))
    burst = [await pool.acquire_wait(frozenset(), 0) for _ in range(3)]
    assert all(c is not None for c in burst)
    with pytest.raises(PoolSaturated) as info:
        await pool.acquire_wait(frozenset(), 0)
    assert info.value.retry_after >= 1.0
    started = time.monotonic()
    again = await pool.acquire_wait(frozenset(), 2.0)  # one request leaks out after ~0.1 s
    waited = time.monotonic() - started
    assert again is not None and again.id == credential_id(A)
    assert 0.05 <= waited < 1.0


@pytest.mark.anyio
async def test_rate_is_per_credential() -> None:
    pool = CredentialPool([A, B], policy=PoolPolicy(rate=(1, 60.0)))
    first = await pool.acquire_wait(frozenset(), 0)
    second = await pool.acquire_wait(frozenset(), 0)
    assert sorted(ids([first, second])) == sorted([credential_id(A), credential_id(B)])
    with pytest.raises(PoolSaturated) as info:
        await pool.acquire_wait(frozenset(), 0.1)
    assert info.value.retry_after >= 60.0  # one request's worth of a 1-per-60-s bucket


@pytest.mark.anyio
async def test_acquire_wait_returns_as_soon_as_a_cap_frees() -> None:
    pool = CredentialPool([A], policy=PoolPolicy(max_in_flight=1))
    held = await pool.acquire_wait(frozenset(), 0)
    assert held is not None

    async def release_later() -> None:
        await asyncio.sleep(0.05)
        pool.release(held)

    started = time.monotonic()
    releaser = asyncio.create_task(release_later())
    got = await pool.acquire_wait(frozenset(), 5.0)
    await releaser
    assert got is held
    assert time.monotonic() - started < 1.0
    assert held.in_flight == 1


@pytest.mark.anyio
async def test_acquire_wait_raises_when_cap_never_frees() -> None:
    pool = CredentialPool([A], policy=PoolPolicy(max_in_flight=1))
    assert pool.acquire() is not None
    started = time.monotonic()
    with pytest.raises(PoolSaturated) as info:
        await pool.acquire_wait(frozenset(), 0.15)
    assert 0.1 <= time.monotonic() - started < 1.0
    assert info.value.retry_after >= 1.0


@pytest.mark.anyio
async def test_acquire_wait_without_limits_returns_at_once() -> None:
    pool = CredentialPool([A, B])
    got = [await pool.acquire_wait(frozenset(), 5.0) for _ in range(3)]
    assert ids(got) == [credential_id(A), credential_id(B), credential_id(A)]


@pytest.mark.anyio
@pytest.mark.parametrize("situation", ["all_invalid", "all_cooling", "all_excluded", "empty"])
async def test_acquire_wait_returns_none_at_once_without_usable_credentials(situation: str) -> None:
    pool = CredentialPool(
        [] if situation == "empty" else [A, B], policy=PoolPolicy(max_in_flight=1, rate=(1, 60.0))
    )
    exclude: frozenset[str] = frozenset()
    for credential in pool.credentials:
        if situation == "all_invalid":
            pool.record(credential, fail(FailureKind.AUTH))
        elif situation == "all_cooling":
            pool.record(credential, fail(FailureKind.CLOUDFLARE))
    if situation == "all_excluded":
        exclude = frozenset(c.id for c in pool.credentials)
    started = time.monotonic()
    assert await pool.acquire_wait(exclude, 5.0) is None
    assert time.monotonic() - started < 0.5


@pytest.mark.anyio
async def test_acquire_wait_ignores_unusable_and_waits_for_the_limited_one() -> None:
    pool = CredentialPool([A, B], policy=PoolPolicy(max_in_flight=1))
    a, b = pool.credentials
    pool.record(a, fail(FailureKind.AUTH))
    assert pool.acquire() is b
    with pytest.raises(PoolSaturated):
        await pool.acquire_wait(frozenset(), 0.05)
    pool.release(b)
    assert await pool.acquire_wait(frozenset(), 0.05) is b


# --- snapshot / adopt ----------------------------------------------------------------------------


def test_snapshot_adopt_round_trip_converts_cooling_time() -> None:
    source = CredentialPool([A, B, C], clock=Clock(1000.0), wall_clock=Clock(WALL))
    _, b, c = source.credentials
    source.record(b, fail(FailureKind.CLOUDFLARE))  # 60 s
    source.record(c, fail(FailureKind.AUTH))
    snapshot = source.snapshot()
    by_cookie = {r["cookie"]: r for r in snapshot}
    assert by_cookie[B]["cooling_until"] == pytest.approx(WALL + 60.0)
    assert by_cookie[A]["cooling_until"] is None
    assert by_cookie[C]["state"] == "invalid"
    assert by_cookie[C]["last_error"] == c.last_error

    # another process: a different monotonic clock, 10 s later on the wall
    target = CredentialPool(clock=Clock(50.0), wall_clock=Clock(WALL + 10.0))
    target.adopt(snapshot, {})
    states = {x.cookie: x.state for x in target.credentials}
    assert states == {A: CredentialState.ACTIVE, B: CredentialState.COOLING, C: CredentialState.INVALID}
    adopted_b = target.get(b.id)
    assert adopted_b is not None
    assert adopted_b.cooling_until == pytest.approx(50.0 + 50.0)
    assert target.next_recovery_in() == pytest.approx(50.0)
    assert adopted_b.changed_at == by_cookie[B]["changed_at"]
    adopted_c = target.get(c.id)
    assert adopted_c is not None and adopted_c.last_error == c.last_error
    # and back again: the same wall-clock times
    for again in target.snapshot():
        original = by_cookie[again["cookie"]]
        assert again["state"] == original["state"]
        assert again["changed_at"] == original["changed_at"]
        if original["cooling_until"] is None:
            assert again["cooling_until"] is None
        else:
            assert again["cooling_until"] == pytest.approx(original["cooling_until"])


def test_adopted_cooling_comes_back_on_time() -> None:
    source = CredentialPool([A], clock=Clock(0.0), wall_clock=Clock(WALL))
    source.record(source.credentials[0], fail(FailureKind.CLOUDFLARE))
    clock = Clock(7.0)
    target = CredentialPool(clock=clock, wall_clock=Clock(WALL))
    target.adopt(source.snapshot(), {})
    assert target.acquire() is None
    clock.now = 7.0 + 60.0
    assert target.acquire() is not None


def test_adopt_cooling_without_time_is_active() -> None:
    pool = CredentialPool(wall_clock=Clock(WALL))
    pool.adopt([{"cookie": A, "state": "cooling", "cooling_until": None, "changed_at": 1.0}], {})
    assert pool.credentials[0].state is CredentialState.ACTIVE


def test_adopt_older_record_does_not_overwrite_newer_local_state() -> None:
    pool = CredentialPool([A], wall_clock=Clock(WALL + 100))
    (a,) = pool.credentials
    pool.record(a, fail(FailureKind.AUTH))
    pool.adopt([{"cookie": A, "state": "active", "changed_at": WALL}], {})
    assert a.state is CredentialState.INVALID
    assert a.changed_at == WALL + 100
    pool.adopt([{"cookie": A, "state": "active", "changed_at": WALL + 100}], {})  # a tie: ours stays
    assert a.state is CredentialState.INVALID


def test_adopt_newer_record_overwrites_local_state() -> None:
    pool = CredentialPool([A], wall_clock=Clock(WALL))
    (a,) = pool.credentials
    pool.record(a, fail(FailureKind.AUTH))
    pool.adopt([{"cookie": A, "state": "active", "changed_at": WALL + 5}], {})
    assert a.state is CredentialState.ACTIVE
    assert a.changed_at == WALL + 5
    assert pool.acquire() is a


def test_adopt_tombstones_remove_and_are_remembered() -> None:
    pool = CredentialPool([A, B], wall_clock=Clock(WALL))
    pool.adopt([], {credential_id(A): WALL + 1, "feedface00": WALL - 50})
    assert [c.cookie for c in pool.credentials] == [B]
    assert pool.removed == {credential_id(A): WALL + 1, "feedface00": WALL - 50}
    # a stale record of A (changed before its removal) does not bring it back
    pool.adopt([{"cookie": A, "state": "active", "changed_at": WALL}], {credential_id(A): WALL + 1})
    assert pool.get(credential_id(A)) is None
    assert [c.cookie for c in pool.credentials] == [B]
    assert pool.acquire() is not None


def test_adopt_tombstone_older_than_local_change_keeps_credential() -> None:
    pool = CredentialPool([A], wall_clock=Clock(WALL + 10))
    pool.adopt([], {credential_id(A): WALL})
    assert pool.get(credential_id(A)) is not None
    assert pool.removed == {credential_id(A): WALL}


def test_adopt_record_later_than_tombstone_is_added() -> None:
    pool = CredentialPool(wall_clock=Clock(WALL))
    pool.adopt([{"cookie": A, "changed_at": WALL + 5}], {credential_id(A): WALL})
    assert [c.cookie for c in pool.credentials] == [A]


def test_adopt_does_not_resurrect_a_locally_removed_cookie() -> None:
    # BUG: adopt() checks only the `removed` passed in, not the pool's own tombstones, so a stale record
    # from another process's file (written before our removal reached it) brings the cookie back.
    peer = CredentialPool([A, B], wall_clock=Clock(WALL))
    stale = peer.snapshot()
    pool = CredentialPool([A, B], wall_clock=Clock(WALL + 100))
    pool.remove(credential_id(A))
    pool.adopt(stale, {})
    assert pool.get(credential_id(A)) is None
    assert [c.cookie for c in pool.credentials] == [B]


def test_adopt_does_not_call_on_change() -> None:
    calls: list[int] = []
    pool = CredentialPool(wall_clock=Clock(WALL))
    pool.on_change = lambda: calls.append(1)
    pool.adopt(
        [{"cookie": A, "changed_at": WALL}, {"cookie": B, "changed_at": WALL}], {credential_id(B): WALL}
    )
    assert [c.cookie for c in pool.credentials] == [A]
    assert calls == []


@pytest.mark.anyio
async def test_adopted_credentials_get_their_rate_limiter() -> None:
    pool = CredentialPool(policy=PoolPolicy(rate=(1, 60.0)), wall_clock=Clock(WALL))
    pool.adopt([{"cookie": A, "changed_at": WALL}], {})
    assert await pool.acquire_wait(frozenset(), 0) is not None
    with pytest.raises(PoolSaturated):
        await pool.acquire_wait(frozenset(), 0)


# --- membership, tombstones, on_change --------------------------------------------------------


def test_remove_records_a_tombstone_and_add_clears_it() -> None:
    wall = Clock(WALL)
    pool = CredentialPool([A, B], wall_clock=wall)
    wall.now = WALL + 3
    assert pool.remove(credential_id(A))
    assert pool.removed == {credential_id(A): WALL + 3}
    assert not pool.remove(credential_id(A))  # already gone
    assert pool.removed == {credential_id(A): WALL + 3}
    wall.now = WALL + 9
    credential, new = pool.add(A)
    assert new
    assert credential.changed_at == WALL + 9
    assert pool.removed == {}


def test_on_change_for_membership_and_state_but_not_quiet_successes() -> None:
    calls: list[str] = []
    wall = Clock(WALL)
    pool = CredentialPool(clock=Clock(0.0), wall_clock=wall)
    pool.on_change = lambda: calls.append("x")

    a, _ = pool.add(A)
    assert len(calls) == 1
    pool.add(A)  # already there
    assert len(calls) == 1
    pool.record(a, None)  # active and stays active
    pool.record(a, fail(FailureKind.CLIENT_ERROR))  # not the credential's fault
    pool.record(a, fail(FailureKind.SERVER_ERROR))  # counted, still active
    assert len(calls) == 1
    assert a.successes == 1
    wall.now = WALL + 1
    pool.record(a, fail(FailureKind.AUTH))
    assert len(calls) == 2
    assert a.changed_at == WALL + 1
    pool.record(a, fail(FailureKind.AUTH))  # invalid again: nothing changes
    assert len(calls) == 2
    wall.now = WALL + 2
    pool.record(a, None)  # back to active
    assert len(calls) == 3
    assert a.changed_at == WALL + 2
    pool.remove(a.id)
    assert len(calls) == 4
    assert not pool.remove(a.id)
    assert len(calls) == 4


def test_record_on_removed_credential_changes_nothing() -> None:
    calls: list[int] = []
    pool = CredentialPool([A], wall_clock=Clock(WALL))
    (a,) = pool.credentials
    pool.remove(a.id)
    pool.on_change = lambda: calls.append(1)
    pool.record(a, fail(FailureKind.AUTH))
    assert calls == []
    assert a.state is CredentialState.ACTIVE
