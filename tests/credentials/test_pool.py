"""The credential pool: states, round-robin, and what each upstream outcome does (injected clock)."""

from __future__ import annotations

from collections import Counter

import pytest

from app.credentials.pool import (
    Credential,
    CredentialPool,
    CredentialState,
    PoolPolicy,
    Transition,
    credential_id,
    mask_secret,
    transition_for,
)
from app.upstream.failures import FailureKind, UpstreamFailure
from tests.fakes import Clock

COOKIES = [
    "__Secure-next-auth.session-token=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..AAAA; NEXT_LOCALE=zh",
    "__Secure-next-auth.session-token=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..BBBB; NEXT_LOCALE=en",
    "__Secure-next-auth.session-token=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..CCCC; _ga=GA1.1.1",
]
POLICY = PoolPolicy(
    cloudflare_cooldown=60.0, rate_limit_cooldown=45.0, failure_threshold=3, failure_cooldown=30.0
)
COUNTED_KINDS = [
    FailureKind.SERVER_ERROR,
    FailureKind.CONNECT,
    FailureKind.TIMEOUT,
    FailureKind.CUT_OFF,
    FailureKind.BAD_RESPONSE,
]


def fail(kind: FailureKind, status: int | None = None, retry_after: float | None = None) -> UpstreamFailure:
    return UpstreamFailure(kind, f"{kind.value} happened", status=status, retry_after=retry_after)


def make_pool(n: int = 3, clock: Clock | None = None) -> tuple[CredentialPool, list[Credential], Clock]:
    clock = clock or Clock()
    pool = CredentialPool(COOKIES[:n], policy=POLICY, clock=clock, wall_clock=lambda: 1_700_000_000.0)
    return pool, pool.credentials, clock


def take(pool: CredentialPool, times: int, exclude: frozenset[str] = frozenset()) -> list[str | None]:
    """Acquire and release `times` times; the ids chosen (None when nothing was available)."""
    ids: list[str | None] = []
    for _ in range(times):
        credential = pool.acquire(exclude)
        ids.append(credential.id if credential else None)
        if credential:
            pool.release(credential)
    return ids


def test_round_robin_over_three() -> None:
    pool, (a, b, c), _ = make_pool()
    assert take(pool, 7) == [a.id, b.id, c.id, a.id, b.id, c.id, a.id]


def test_excluded_ids_are_skipped() -> None:
    pool, (a, b, c), _ = make_pool()
    assert take(pool, 4, frozenset({b.id})) == [a.id, c.id, a.id, c.id]
    assert take(pool, 1, frozenset({a.id, b.id, c.id})) == [None]


def test_auth_makes_invalid_and_never_selected_until_reset() -> None:
    pool, (a, _, _), _ = make_pool()
    pool.record(a, fail(FailureKind.AUTH, 401))
    assert a.state is CredentialState.INVALID
    assert a.id not in take(pool, 10)
    pool.reset(a)
    assert a.state is CredentialState.ACTIVE
    assert a.id in take(pool, 3)


def test_invalid_stays_invalid_however_much_time_passes() -> None:
    pool, (a, _, _), clock = make_pool()
    pool.record(a, fail(FailureKind.AUTH, 403))
    clock.now += 10**9
    assert pool.counts() == {"active": 2, "cooling": 0, "invalid": 1}
    assert a.id not in take(pool, 6)


def test_cloudflare_cools_for_the_policy_time_and_returns_exactly_then() -> None:
    pool, (a, _, _), clock = make_pool()
    pool.record(a, fail(FailureKind.CLOUDFLARE, 403))
    assert a.state is CredentialState.COOLING
    assert a.cooling_until == 1060.0
    clock.now = 1059.999
    assert a.id not in take(pool, 6)
    assert pool.counts()["cooling"] == 1
    assert a.state is CredentialState.COOLING
    clock.now = 1060.0
    assert a.id in take(pool, 3)
    assert a.state is CredentialState.ACTIVE
    assert a.cooling_until is None


@pytest.mark.parametrize(("retry_after", "cooldown"), [(7.0, 7.0), (0.0, 0.0), (None, 45.0)])
def test_rate_limited_honours_retry_after_else_policy(retry_after: float | None, cooldown: float) -> None:
    pool, (a, _, _), clock = make_pool()
    pool.record(a, fail(FailureKind.RATE_LIMITED, 429, retry_after=retry_after))
    assert a.cooling_until == 1000.0 + cooldown
    clock.now = 1000.0 + cooldown - 0.001
    assert a.id not in take(pool, 6)
    clock.now = 1000.0 + cooldown
    assert a.id in take(pool, 3)


@pytest.mark.parametrize("kind", COUNTED_KINDS)
def test_failures_cool_only_after_threshold_consecutive(kind: FailureKind) -> None:
    pool, (a, _, _), clock = make_pool()
    pool.record(a, fail(kind, 502))
    pool.record(a, fail(kind, 502))
    assert a.state is CredentialState.ACTIVE
    assert a.consecutive_failures == 2
    assert a.id in take(pool, 3)
    pool.record(a, fail(kind, 502))
    assert a.state is CredentialState.COOLING
    assert a.cooling_until == clock.now + POLICY.failure_cooldown
    assert a.failures[kind.value] == 3


def test_success_resets_the_failure_count() -> None:
    pool, (a, _, _), _ = make_pool()
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    pool.record(a, None)
    assert a.consecutive_failures == 0
    assert a.successes == 1
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    assert a.state is CredentialState.ACTIVE
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    assert a.state is CredentialState.COOLING


def test_recovery_from_cooling_resets_the_failure_count() -> None:
    pool, (a, _, _), clock = make_pool()
    for _ in range(3):
        pool.record(a, fail(FailureKind.TIMEOUT))
    clock.now += POLICY.failure_cooldown
    assert pool.counts()["active"] == 3
    pool.record(a, fail(FailureKind.TIMEOUT))
    assert a.state is CredentialState.ACTIVE
    assert a.consecutive_failures == 1


def test_client_error_changes_nothing() -> None:
    pool, (a, _, _), _ = make_pool()
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    for _ in range(5):
        pool.record(a, fail(FailureKind.CLIENT_ERROR, 400))
    assert a.state is CredentialState.ACTIVE
    assert a.consecutive_failures == 1
    assert a.cooling_until is None
    assert a.failures == {"server_error": 1, "client_error": 5}


def test_failure_bookkeeping() -> None:
    pool, (a, _, _), _ = make_pool()
    failure = fail(FailureKind.CLOUDFLARE, 503)
    pool.record(a, failure)
    assert a.last_error == failure.message
    assert a.failures == {"cloudflare": 1}


def test_counts_and_next_recovery_in() -> None:
    pool, (a, b, c), clock = make_pool()
    assert pool.counts() == {"active": 3, "cooling": 0, "invalid": 0}
    assert pool.next_recovery_in() is None
    pool.record(a, fail(FailureKind.CLOUDFLARE, 403))  # back at 1060
    pool.record(b, fail(FailureKind.RATE_LIMITED, 429, retry_after=20.0))  # back at 1020
    assert pool.counts() == {"active": 1, "cooling": 2, "invalid": 0}
    assert pool.next_recovery_in() == 20.0
    clock.now = 1015.0
    assert pool.next_recovery_in() == 5.0
    clock.now = 1020.0
    assert pool.counts() == {"active": 2, "cooling": 1, "invalid": 0}
    assert pool.next_recovery_in() == 40.0
    pool.record(c, fail(FailureKind.AUTH, 401))
    assert pool.counts() == {"active": 1, "cooling": 1, "invalid": 1}
    clock.now = 2000.0
    assert not pool.next_recovery_in()  # due now (0.0) or already back (None), never negative
    assert pool.counts() == {"active": 2, "cooling": 0, "invalid": 1}
    assert pool.next_recovery_in() is None


def test_add_dedupes_by_id() -> None:
    pool = CredentialPool()
    first, new = pool.add(COOKIES[0])
    assert new
    again, new_again = pool.add(f"  {COOKIES[0]}\n")
    assert again is first
    assert not new_again
    assert len(pool) == 1
    pool2 = CredentialPool([COOKIES[0], COOKIES[1], COOKIES[0]])
    assert len(pool2) == 2


@pytest.mark.parametrize("cookie", ["", "   ", "\n"])
def test_add_refuses_empty(cookie: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        CredentialPool().add(cookie)


def test_ids_are_stable_distinct_and_reveal_nothing() -> None:
    ids = [credential_id(cookie) for cookie in COOKIES]
    assert len(set(ids)) == len(COOKIES)
    assert ids == [CredentialPool([cookie]).credentials[0].id for cookie in COOKIES]
    assert ids == [credential_id(cookie) for cookie in COOKIES]
    for cookie, id_ in zip(COOKIES, ids, strict=True):
        assert len(id_) == 10
        assert all(ch in "0123456789abcdef" for ch in id_)
        for secret_part in (cookie, cookie.split(";")[0], cookie.split("..")[1][:4]):
            assert secret_part not in id_


def test_repr_and_preview_hide_the_cookie() -> None:
    pool, (a, _, _), _ = make_pool()
    pool.record(a, fail(FailureKind.AUTH, 401))
    token = COOKIES[0].split("=", 1)[1].split(";")[0]
    for text in (repr(a), str(a), a.id, a.preview, repr(pool.credentials)):
        assert COOKIES[0] not in text
        assert token not in text
        assert "session-token" not in text


@pytest.mark.parametrize(("secret", "masked"), [("short", "***"), ("exactly12chr", "***")])
def test_mask_secret_short(secret: str, masked: str) -> None:
    assert mask_secret(secret) == masked


def test_mask_secret_long_shows_only_ends() -> None:
    secret = "sk-abcdefghijklmnopqrstuvwxyz"
    masked = mask_secret(secret)
    assert "ghijklmnop" not in masked
    assert str(len(secret)) in masked


def test_remove_keeps_round_robin_fair() -> None:
    pool = CredentialPool([*COOKIES, "fourth=cookie-value-dddd"], policy=POLICY, clock=Clock())
    a, b, c, d = pool.credentials
    assert take(pool, 2) == [a.id, b.id]  # c is next
    assert pool.remove(a.id)  # removed before the cursor
    assert take(pool, 3) == [c.id, d.id, b.id]  # c is next again
    assert pool.remove(c.id)  # c is now next: the one after it takes its turn
    assert take(pool, 4) == [d.id, b.id, d.id, b.id]
    assert not pool.remove(c.id)
    assert len(pool) == 2


def test_remove_last_wraps_to_first() -> None:
    pool, (a, b, c), _ = make_pool()
    assert take(pool, 2) == [a.id, b.id]
    assert pool.remove(c.id)
    assert take(pool, 4) == [a.id, b.id, a.id, b.id]


def test_removal_then_even_share() -> None:
    pool = CredentialPool([*COOKIES, "fourth=cookie-value-dddd", "fifth=cookie-value-eeee"], clock=Clock())
    creds = pool.credentials
    take(pool, 3)
    pool.remove(creds[1].id)
    pool.remove(creds[4].id)
    shares = Counter(take(pool, 30))
    assert shares == {creds[0].id: 10, creds[2].id: 10, creds[3].id: 10}


def test_record_after_remove_does_not_change_state() -> None:
    pool, (a, _, _), _ = make_pool()
    held = pool.acquire()
    assert held is a
    pool.remove(a.id)
    pool.record(a, fail(FailureKind.CLOUDFLARE, 403))
    pool.release(a)
    assert a.state is CredentialState.ACTIVE
    assert len(pool) == 2
    assert pool.get(a.id) is None


def test_acquire_returns_none_when_all_invalid_or_empty() -> None:
    pool, creds, _ = make_pool()
    for credential in creds:
        pool.record(credential, fail(FailureKind.AUTH, 401))
    assert pool.acquire() is None
    assert CredentialPool().acquire() is None


def test_in_flight_and_last_used() -> None:
    pool, (a,), _ = make_pool(1)
    assert a.last_used is None
    first = pool.acquire()
    second = pool.acquire()
    assert first is a
    assert second is a
    assert a.in_flight == 2
    assert a.last_used == 1_700_000_000.0
    pool.release(a)
    assert a.in_flight == 1
    pool.release(a)
    pool.release(a)
    assert a.in_flight == 0


@pytest.mark.parametrize(
    ("failure", "before", "expected"),
    [
        (None, 2, Transition(CredentialState.ACTIVE, count_failure=False)),
        (fail(FailureKind.AUTH, 401), 0, Transition(CredentialState.INVALID)),
        (fail(FailureKind.CLOUDFLARE, 503), 0, Transition(CredentialState.COOLING, 60.0)),
        (fail(FailureKind.RATE_LIMITED, 429, 7.0), 0, Transition(CredentialState.COOLING, 7.0)),
        (fail(FailureKind.RATE_LIMITED, 429), 0, Transition(CredentialState.COOLING, 45.0)),
        (fail(FailureKind.CLIENT_ERROR, 400), 2, None),
        (fail(FailureKind.SERVER_ERROR, 500), 0, Transition(CredentialState.ACTIVE)),
        (fail(FailureKind.SERVER_ERROR, 500), 1, Transition(CredentialState.ACTIVE)),
        (fail(FailureKind.SERVER_ERROR, 500), 2, Transition(CredentialState.COOLING, 30.0)),
        (fail(FailureKind.CUT_OFF), 5, Transition(CredentialState.COOLING, 30.0)),
    ],
)
def test_transition_for(failure: UpstreamFailure | None, before: int, expected: Transition | None) -> None:
    assert transition_for(failure, before, POLICY) == expected
