"""No bad request can empty the pool: the poison rule, the ejection cap, longer rests for repeat
offenders, panic mode, session renewal and per-credential egress, over a fake clock."""

from __future__ import annotations

import pytest

from app.credentials.pool import (
    MAX_REST,
    CredentialPool,
    CredentialState,
    PoolPolicy,
    RestReason,
    failure_rest,
    may_rest,
    poison_class,
    transition_for,
)
from app.logs import REDACTED, redact
from app.upstream.failures import FailureKind, UpstreamFailure
from tests.fakes import Clock

SESSION = "__Secure-next-auth.session-token"
COOKIES = [f"acct={name}; {SESSION}=token-{name}-0000000000" for name in ("a", "b", "c", "d")]


def fail(kind: FailureKind, status: int | None = None) -> UpstreamFailure:
    return UpstreamFailure(kind, f"{kind.value} happened", status=status)


def pool_of(n: int, *, percent: int = 50, threshold: int = 1, clock: Clock | None = None) -> CredentialPool:
    policy = PoolPolicy(failure_threshold=threshold, failure_cooldown=30.0, max_ejected_percent=percent)
    return CredentialPool(COOKIES[:n], policy=policy, clock=clock or Clock(), wall_clock=lambda: 1e9)


# --- the poison rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (fail(FailureKind.SERVER_ERROR, 500), "5xx"),
        (fail(FailureKind.SERVER_ERROR, 503), "5xx"),
        (fail(FailureKind.CUT_OFF), "cut_off"),
        (fail(FailureKind.TIMEOUT), "timeout"),
        (fail(FailureKind.AUTH, 401), "401"),
        (fail(FailureKind.AUTH, 403), "403"),
        (fail(FailureKind.CLOUDFLARE_BLOCKED, 403), "403"),
        (fail(FailureKind.AUTH, 302), None),  # a redirect to sign-in says something of the cookie
        (fail(FailureKind.CLOUDFLARE, 403), None),
        (fail(FailureKind.RATE_LIMITED, 429), None),
        (fail(FailureKind.CONNECT), None),
        (fail(FailureKind.CLIENT_ERROR, 400), None),
        (fail(FailureKind.BAD_RESPONSE), None),
    ],
)
def test_poison_class(failure: UpstreamFailure, expected: str | None) -> None:
    assert poison_class(failure) == expected


# --- the cap, longer rests, panic -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("resting", "total", "percent", "allowed"),
    [
        (0, 3, 50, True),
        (1, 3, 50, False),
        (1, 4, 50, True),
        (2, 4, 50, False),
        (0, 1, 50, True),
        (0, 10, 0, True),
        (1, 10, 0, False),
        (9, 10, 100, True),
        (10, 10, 100, False),
    ],
)
def test_may_rest(resting: int, total: int, percent: int, allowed: bool) -> None:
    assert may_rest(resting, total, percent) is allowed


def test_failure_rest_grows_with_recent_rests_up_to_ten_minutes() -> None:
    assert [failure_rest(30.0, n) for n in (0, 1, 2, 3)] == [30.0, 30.0, 60.0, 90.0]
    assert failure_rest(30.0, 100) == MAX_REST == 600.0


def test_transition_escalates_with_recent_rests() -> None:
    policy = PoolPolicy(failure_threshold=1, failure_cooldown=30.0)
    first = transition_for(fail(FailureKind.SERVER_ERROR, 500), 0, policy, recent_rests=0)
    third = transition_for(fail(FailureKind.SERVER_ERROR, 500), 0, policy, recent_rests=2)
    assert first is not None and third is not None
    assert (first.cooldown, third.cooldown) == (30.0, 90.0)
    assert first.reason is RestReason.FAILURES
    cloudflare = transition_for(fail(FailureKind.CLOUDFLARE, 403), 0, policy)
    assert cloudflare is not None and cloudflare.reason is RestReason.CLOUDFLARE


def test_at_most_half_the_pool_rests_for_failures() -> None:
    pool = pool_of(4)
    a, b, c, d = pool.credentials
    for credential in (a, b, c, d):
        pool.record(credential, fail(FailureKind.SERVER_ERROR, 500))
    assert [x.state for x in (a, b, c, d)] == [CredentialState.COOLING] * 2 + [CredentialState.ACTIVE] * 2
    assert c.consecutive_failures == 1 and c.failures == {"server_error": 1}  # counted, not rested
    # Rests for other reasons do not use up the cap, and are not held back by it.
    pool.record(c, fail(FailureKind.RATE_LIMITED, 429))
    assert c.state is CredentialState.COOLING and c.rest_reason is RestReason.RATE_LIMITED
    assert pool.resting_for_failures() == 2


def test_a_repeat_offender_rests_longer_and_is_forgiven_after_ten_quiet_minutes() -> None:
    clock = Clock()
    pool = pool_of(3, clock=clock)
    a = pool.credentials[0]
    rests = []
    for _ in range(3):
        pool.record(a, fail(FailureKind.TIMEOUT))
        rests.append(a.cooling_until - clock.now if a.cooling_until else None)
        clock.now = (a.cooling_until or clock.now) + 1  # back, then it fails again at once
        assert pool.acquire() is not None
    assert rests == [30.0, 60.0, 90.0]
    clock.now += MAX_REST + 1  # ten quiet minutes
    pool.record(a, fail(FailureKind.TIMEOUT))
    assert a.cooling_until == clock.now + 30.0
    pool.reset(a)
    assert (a.state, a.rest_reason, a.recent_rests) == (CredentialState.ACTIVE, None, 0)


def test_panic_mode_uses_credentials_resting_for_failures_when_none_is_active() -> None:
    panicked: list[str] = []
    pool = pool_of(2, percent=100)
    pool.on_panic = lambda credential: panicked.append(credential.id)
    a, b = pool.credentials
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    assert pool.acquire() is b  # b is active: no panic
    pool.release(b)
    pool.record(b, fail(FailureKind.CUT_OFF))
    chosen = {pool.acquire().id for _ in range(4)}  # type: ignore[union-attr]
    assert chosen == {a.id, b.id}  # round-robin over the resting ones
    assert pool.panics == 4 and len(panicked) == 4
    assert a.state is CredentialState.COOLING  # a use in panic mode does not end the rest
    pool.record(a, None)
    assert a.state is CredentialState.ACTIVE  # a success does


@pytest.mark.parametrize(
    "failure",
    [fail(FailureKind.AUTH, 401), fail(FailureKind.RATE_LIMITED, 429), fail(FailureKind.CLOUDFLARE, 403)],
)
def test_no_panic_over_credentials_that_rest_for_other_reasons(failure: UpstreamFailure) -> None:
    pool = pool_of(1)
    (a,) = pool.credentials
    pool.record(a, failure)
    assert pool.acquire() is None
    assert pool.panics == 0


def test_a_failure_during_a_panic_use_extends_the_rest_but_is_not_a_new_rest() -> None:
    clock = Clock()
    pool = pool_of(1, clock=clock)
    (a,) = pool.credentials
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    assert (a.cooling_until, a.recent_rests) == (clock.now + 30.0, 1)
    clock.now += 5
    pool.record(a, fail(FailureKind.SERVER_ERROR, 500))
    assert (a.cooling_until, a.recent_rests) == (clock.now + 30.0, 1)
    clock.now += 29
    pool.record(a, fail(FailureKind.RATE_LIMITED, 429))  # a longer rest for another reason takes over
    assert (a.cooling_until, a.rest_reason) == (clock.now + 60.0, RestReason.RATE_LIMITED)
    assert pool.acquire() is None  # and it is no longer used in panic mode


# --- sessions and egress -------------------------------------------------------------------------


def test_renewal_updates_the_cookie_keeps_the_id_and_redacts_the_new_value() -> None:
    pool = pool_of(2)
    a, b = pool.credentials
    id_before, b_before = a.id, b.cookie
    saves: list[int] = []
    pool.on_renewal = lambda: saves.append(1)
    assert pool.renew(a, [f"{SESSION}=token-a-1111111111; Max-Age=2592000"])
    assert a.id == id_before and "token-a-1111111111" in a.cookie
    assert a.session_renewed_at == 1e9 and a.session_expires_at == 1e9 + 2592000
    assert b.cookie == b_before
    assert saves == [1]
    assert redact("cookie token-a-1111111111 leaked") == f"cookie {REDACTED} leaked"
    assert not pool.renew(a, [])
    assert not pool.renew(a, [f"{SESSION}=token-a-1111111111"])  # the same value: nothing to save
    assert pool.get(id_before) is a
    # Adding the cookie first given again finds the same credential, by its id.
    assert pool.add(COOKIES[0]) == (a, False)


def test_egress_is_kept_per_credential_and_its_password_redacted() -> None:
    pool = pool_of(1)
    changes: list[int] = []
    pool.on_change = lambda: changes.append(1)
    (a,) = pool.credentials
    assert pool.configure(a, proxy="http://user:pa55word-xyz@127.0.0.1:3128", user_agent="Mozilla/5.0 X")
    assert not pool.configure(a, proxy="http://user:pa55word-xyz@127.0.0.1:3128", user_agent="Mozilla/5.0 X")
    assert changes == [1]
    assert "pa55word-xyz" not in redact("proxy http://user:pa55word-xyz@127.0.0.1:3128")
    credential, new = pool.add(COOKIES[1], proxy="socks5://10.0.0.1:1080")
    assert new and credential.proxy == "socks5://10.0.0.1:1080" and credential.user_agent is None


def test_a_session_signed_out_by_the_site_leaves_the_last_cookie_and_an_invalid_credential() -> None:
    pool = CredentialPool([f"{SESSION}=only-cookie-000000000"], wall_clock=lambda: 1e9)
    (a,) = pool.credentials
    assert not pool.renew(a, [f"{SESSION}=; Max-Age=0"])
    assert a.cookie == f"{SESSION}=only-cookie-000000000"  # never an empty jar (nor file entry)
    assert a.state is CredentialState.INVALID


def test_an_unreadable_set_cookie_is_ignored_not_raised() -> None:
    pool = pool_of(1)
    (a,) = pool.credentials
    before = a.cookie
    assert not pool.renew(a, [None])  # type: ignore[list-item]
    assert a.cookie == before
