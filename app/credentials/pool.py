"""The credential pool: each cookie's state, round-robin selection, and what an outcome does to it.

States: `active`, `cooling` (until a time; comes back by itself), `invalid` (needs a new cookie).
`transition_for` is the pure rule from an upstream outcome to a state change; the pool applies it.
Time is injected (`clock`), so the state machine is tested without sleeping.

No bad request can empty the pool (the rules are pure functions, below):
- `poison_class`: a failure that follows the request (the same 5xx, cut-off, time-out, 401 or
  non-challenge 403 on a second credential) stops fail-over and is charged to the first only.
- `may_rest`: at most `max_ejected_percent` of the credentials rest because of failure counts at
  once (at least one may); past that, failures are counted but nobody else is put to rest.
- `failure_rest`: a credential that rests again within `MAX_REST` of its last rest rests longer,
  `failure_cooldown` x its recent rests, capped at `MAX_REST`.
- panic mode (`acquire`): when no credential is active and some rest only for failure counts, they
  are used anyway rather than answering 503.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiolimiter import AsyncLimiter

from app.credentials.jar import apply_set_cookies, secret_values
from app.logs import register_secret, unregister_secret
from app.state.limits import SharedLimits
from app.upstream.failures import FailureKind, UpstreamFailure
from app.upstream.proxy import proxy_secret

log = logging.getLogger("gptomni2api.credentials")

MAX_REST = 600.0  # seconds: the longest rest for failure counts, and how long a rest stays "recent"


class CredentialState(enum.StrEnum):
    ACTIVE = "active"
    COOLING = "cooling"
    INVALID = "invalid"


@dataclass(frozen=True)
class PoolPolicy:
    cloudflare_cooldown: float = 60.0  # seconds a Cloudflare-challenged cookie rests
    rate_limit_cooldown: float = 60.0  # seconds a 429 rests when the upstream gives no Retry-After
    failure_threshold: int = 3  # consecutive 5xx / connect / time-out / cut-off failures before cooling
    failure_cooldown: float = 30.0
    max_in_flight: int = 0  # concurrent uses of one credential; 0: no cap
    rate: tuple[int, float] | None = None  # (requests, seconds) per credential, aiolimiter's leaky bucket
    max_ejected_percent: int = 50  # of the credentials, resting for failure counts at once


class RestReason(enum.StrEnum):
    FAILURES = "failures"  # FAILURE_THRESHOLD failures in a row (5xx, time-out, cut off, ...)
    CLOUDFLARE = "cloudflare"
    RATE_LIMITED = "rate_limited"


REST_REASONS = frozenset(reason.value for reason in RestReason)


class PoolSaturated(Exception):
    """Every usable credential is at its rate limit or concurrency cap, past the wait allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"every credential is at its limit; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


def credential_id(cookie: str) -> str:
    """A stable short id: the same cookie always has the same id, and the id reveals nothing."""
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()[:10]


def record_id(record: dict[str, Any]) -> str:
    """A stored record's id: its own (it outlives the cookie it was made from), or the cookie's."""
    id_ = record.get("id")
    return id_ if isinstance(id_, str) and id_ else credential_id(str(record["cookie"]))


def mask_secret(secret: str) -> str:
    if len(secret) <= 12:
        return "***"
    return f"{secret[:4]}…{secret[-4:]} ({len(secret)} chars)"


@dataclass
class Credential:
    cookie: str = field(repr=False)  # the Cookie header, kept up to date from Set-Cookie
    id: str = ""  # from the cookie first added; stays when the session renews
    state: CredentialState = CredentialState.ACTIVE
    cooling_until: float | None = None
    rest_reason: RestReason | None = None
    recent_rests: int = 0  # rests for failure counts, each within MAX_REST of the one before
    last_rest_end: float | None = None  # monotonic
    consecutive_failures: int = 0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_used: float | None = None  # wall-clock seconds
    in_flight: int = 0
    changed_at: float = 0.0  # wall-clock time of the last state or membership change
    limiter: AsyncLimiter | None = field(default=None, repr=False)
    proxy: str | None = field(default=None, repr=False)  # may hold a password
    user_agent: str | None = None
    session_renewed_at: float | None = None  # wall-clock
    session_expires_at: float | None = None  # wall-clock, when the session cookie said

    def __post_init__(self) -> None:
        if not self.id:
            self.id = credential_id(self.cookie)

    @property
    def preview(self) -> str:
        return mask_secret(self.cookie)


def swap_cookie(credential: Credential, cookie: str) -> None:
    """The credential's cookie is now `cookie`: its values are redacted from logs, and the values it
    no longer holds are not any more (the site revoked them, so the set does not grow)."""
    old = set(secret_values(credential.cookie))
    credential.cookie = cookie
    new = secret_values(cookie)
    for value in new:
        register_secret(value)
    for value in old - set(new):
        unregister_secret(value)


@dataclass(frozen=True)
class Transition:
    state: CredentialState
    cooldown: float | None = None  # seconds, for COOLING
    count_failure: bool = True
    reason: RestReason | None = field(default=None, compare=False)  # why it rests, for COOLING


def transition_for(
    failure: UpstreamFailure | None, consecutive_failures: int, policy: PoolPolicy, recent_rests: int = 0
) -> Transition | None:
    """What an outcome does to a credential; None leaves it as it is.

    `consecutive_failures` is the count before this outcome; `recent_rests` the credential's rests
    for failure counts so far that are recent (see `failure_rest`). An AUTH failure here is a
    confirmed one: the service asks the session endpoint before it records one.
    """
    if failure is None:
        return Transition(CredentialState.ACTIVE, count_failure=False)
    kind = failure.kind
    if kind is FailureKind.AUTH:
        return Transition(CredentialState.INVALID)
    if kind is FailureKind.CLOUDFLARE:
        return Transition(CredentialState.COOLING, policy.cloudflare_cooldown, reason=RestReason.CLOUDFLARE)
    if kind is FailureKind.RATE_LIMITED:
        cooldown = failure.retry_after if failure.retry_after is not None else policy.rate_limit_cooldown
        return Transition(CredentialState.COOLING, cooldown, reason=RestReason.RATE_LIMITED)
    if kind is FailureKind.CLIENT_ERROR:
        return None  # our request was refused: not the credential's fault
    if consecutive_failures + 1 >= policy.failure_threshold:
        cooldown = failure_rest(policy.failure_cooldown, recent_rests + 1)
        return Transition(CredentialState.COOLING, cooldown, reason=RestReason.FAILURES)
    return Transition(CredentialState.ACTIVE)


def failure_rest(failure_cooldown: float, rests: int) -> float:
    """How long the `rests`-th recent rest for failure counts lasts: longer each time, up to MAX_REST."""
    return min(MAX_REST, failure_cooldown * max(1, rests))


def may_rest(resting_for_failures: int, total: int, max_percent: int) -> bool:
    """Whether one more credential may be put to rest for failure counts: at most `max_percent` of
    `total` rest so at once, and at least one may (as Envoy's outlier detection)."""
    allowed = max(1, total * max_percent // 100)
    return resting_for_failures < allowed


def poison_class(failure: UpstreamFailure) -> str | None:
    """How a failure that may follow the request (not the credential) is compared across credentials;
    None for failures that say something about the credential or the moment (429, a Cloudflare
    challenge, a connect failure, a refused request)."""
    kind = failure.kind
    if kind is FailureKind.SERVER_ERROR:
        return "5xx"
    if kind in (FailureKind.CUT_OFF, FailureKind.TIMEOUT):
        return kind.value
    if kind is FailureKind.CLOUDFLARE_BLOCKED or (kind is FailureKind.AUTH and failure.status == 403):
        return "403"
    if kind is FailureKind.AUTH and failure.status == 401:
        return "401"
    return None


class CredentialPool:
    """Round-robin over active credentials. All methods run on the event loop; none awaits, so
    selection and bookkeeping are atomic without locks."""

    def __init__(
        self,
        cookies: Iterable[str] = (),
        *,
        policy: PoolPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy or PoolPolicy()
        self._clock = clock
        self._wall_clock = wall_clock
        self._credentials: list[Credential] = []
        self._next = 0
        self._released = asyncio.Event()
        self.removed: dict[str, float] = {}  # id -> wall-clock time of its removal (for the file)
        # Called after a membership or state change (not after counters): persistence hooks in here.
        self.on_change: Callable[[], None] | None = None
        # Called after a session renewal: traffic churn, which persistence may batch.
        self.on_renewal: Callable[[], None] | None = None
        # Called when a request is served by a resting credential because none is active (panic mode).
        self.on_panic: Callable[[Credential], None] | None = None
        # Limits shared with other replicas (Redis), checked after the pool's own; None: only these.
        self.shared: SharedLimits | None = None
        self.panics = 0
        for cookie in cookies:
            self.add(cookie)

    def _changed(self, credential: Credential | None = None) -> None:
        if credential is not None:
            credential.changed_at = self._wall_clock()
        if self.on_change is not None:
            self.on_change()

    # --- membership ---------------------------------------------------------------------------
    def add(
        self, cookie: str, *, proxy: str | None = None, user_agent: str | None = None
    ) -> tuple[Credential, bool]:
        """Add a cookie (a given proxy or User-Agent also updates an existing one); returns the
        credential and whether it is new."""
        cookie = cookie.strip()
        if not cookie:
            raise ValueError("a credential must not be empty")
        existing = self.get(credential_id(cookie)) or next(
            (c for c in self._credentials if c.cookie == cookie), None
        )
        if existing is not None:
            if proxy is not None or user_agent is not None:
                self.configure(
                    existing,
                    proxy=proxy if proxy is not None else existing.proxy,
                    user_agent=user_agent if user_agent is not None else existing.user_agent,
                )
            return existing, False
        credential = Credential(
            cookie=cookie, changed_at=self._wall_clock(), proxy=proxy or None, user_agent=user_agent or None
        )
        self.removed.pop(credential.id, None)
        self._attach(credential)
        self._changed()
        return credential, True

    def configure(self, credential: Credential, *, proxy: str | None, user_agent: str | None) -> bool:
        """Set a credential's egress (None: the default); whether anything changed."""
        if (credential.proxy, credential.user_agent) == (proxy, user_agent):
            return False
        credential.proxy, credential.user_agent = proxy, user_agent
        register_secret(proxy_secret(proxy))
        self._changed(credential)
        return True

    def renew(self, credential: Credential, set_cookies: list[str]) -> bool:
        """Take an answer's `Set-Cookie` values into the credential's jar; whether it changed.

        The old values are dropped from log redaction once replaced (the site revoked them), so the
        set of registered secrets does not grow with every renewal."""
        if not set_cookies:
            return False
        now = self._wall_clock()
        try:
            update = apply_set_cookies(credential.cookie, set_cookies, now)
        except Exception:  # an answer's odd header must never fail the request it came with
            log.warning("credential %s: a Set-Cookie header could not be read; ignored", credential.id)
            return False
        if not update.changed:
            return False
        if not update.cookie.strip():
            # The site deleted every cookie of the account: it signed the session out. An empty jar
            # is no credential (nor a valid file entry): keep the last cookie, and say it is spent.
            self.record(credential, UpstreamFailure(FailureKind.AUTH, "the site deleted the session cookies"))
            return False
        swap_cookie(credential, update.cookie)
        if update.session_changed:
            credential.session_renewed_at = now
            credential.session_expires_at = update.session_expires_at
        credential.changed_at = now
        if self.on_renewal is not None:
            self.on_renewal()
        return True

    def _attach(self, credential: Credential) -> None:
        for value in secret_values(credential.cookie):
            register_secret(value)
        register_secret(proxy_secret(credential.proxy))
        if self.policy.rate is not None and credential.limiter is None:
            credential.limiter = AsyncLimiter(*self.policy.rate)
        self._credentials.append(credential)

    def remove(self, credential_id_: str) -> bool:
        for index, credential in enumerate(self._credentials):
            if credential.id == credential_id_:
                del self._credentials[index]
                if index < self._next:
                    self._next -= 1
                self.removed[credential_id_] = self._wall_clock()
                self._changed()
                return True
        return False

    def get(self, credential_id_: str) -> Credential | None:
        return next((c for c in self._credentials if c.id == credential_id_), None)

    def __len__(self) -> int:
        return len(self._credentials)

    @property
    def credentials(self) -> list[Credential]:
        self._refresh()
        return list(self._credentials)

    # --- selection ----------------------------------------------------------------------------
    def _refresh(self) -> None:
        now = self._clock()
        for credential in self._credentials:
            if (
                credential.state is CredentialState.COOLING
                and credential.cooling_until is not None
                and credential.cooling_until <= now
            ):
                if credential.rest_reason is RestReason.FAILURES:
                    credential.last_rest_end = credential.cooling_until
                credential.state = CredentialState.ACTIVE
                credential.cooling_until = None
                credential.rest_reason = None
                credential.consecutive_failures = 0

    def _has_room(self, credential: Credential) -> bool:
        if self.policy.max_in_flight and credential.in_flight >= self.policy.max_in_flight:
            return False
        return credential.limiter is None or self._shared_rate() or credential.limiter.has_capacity()

    def _shared_rate(self) -> bool:
        """Whether the rate is counted by the shared limits now: then this process's own bucket is
        left alone (refusals would drain it), and it applies again while they are away."""
        return self.shared is not None and self.shared.active

    def acquire(self, exclude: set[str] | frozenset[str] = frozenset()) -> Credential | None:
        """The next active credential with room, in round-robin order, skipping `exclude`.

        Synchronous, so no other request can take the same slot between the check and the take.
        A credential with a rate limit must then have `limiter.acquire()` awaited before any other
        await (see `acquire_wait`); it does not suspend, since `has_capacity` said yes.
        """
        self._refresh()
        credential = self._pick(CredentialState.ACTIVE, exclude)
        if credential is None and self._panicking():
            credential = self._pick(CredentialState.COOLING, exclude, RestReason.FAILURES)
            if credential is not None:
                self.panics += 1
                if self.on_panic is not None:
                    self.on_panic(credential)
        return credential

    def _pick(
        self,
        state: CredentialState,
        exclude: set[str] | frozenset[str],
        reason: RestReason | None = None,
    ) -> Credential | None:
        count = len(self._credentials)
        for step in range(count):
            index = (self._next + step) % count
            credential = self._credentials[index]
            if (
                credential.state is state
                and credential.rest_reason is reason
                and credential.id not in exclude
                and self._has_room(credential)
            ):
                self._next = (index + 1) % count
                credential.in_flight += 1
                credential.last_used = self._wall_clock()
                return credential
        return None

    def _panicking(self) -> bool:
        """No credential is active, and some rest only for failure counts (5xx, time-outs): those
        are used rather than nobody (never one that is invalid, rate limited or challenged)."""
        return not any(c.state is CredentialState.ACTIVE for c in self._credentials) and any(
            c.rest_reason is RestReason.FAILURES for c in self._credentials
        )

    def resting_for_failures(self) -> int:
        return sum(1 for c in self._credentials if c.rest_reason is RestReason.FAILURES)

    def _blocked_by_limits(self, exclude: set[str] | frozenset[str]) -> bool:
        """Whether some usable credential is only held back by its rate limit or its cap."""
        panicking = self._panicking()
        return any(
            (c.state is CredentialState.ACTIVE or (panicking and c.rest_reason is RestReason.FAILURES))
            and c.id not in exclude
            for c in self._credentials
        )

    def _time_to_room(self) -> float:
        if self.policy.rate is None:
            return 0.0
        requests, seconds = self.policy.rate
        return seconds / requests  # one request's worth leaks out of a full bucket in this time

    async def acquire_wait(self, exclude: set[str] | frozenset[str], wait: float) -> Credential | None:
        """`acquire`, waiting up to `wait` seconds while credentials are only held back by limits.

        None when no usable credential exists at all; PoolSaturated when the wait runs out.
        """
        deadline = self._clock() + wait
        held_back: dict[str, float] = {}  # refused by the shared limits this round: id -> seconds to wait
        while True:
            credential = self.acquire(exclude | set(held_back))
            if credential is not None:
                if credential.limiter is not None and not self._shared_rate():
                    await credential.limiter.acquire()
                refusal = await self._take_shared(credential)
                if refusal is None:
                    return credential
                held_back[credential.id] = refusal
                continue  # the next credential may have room
            if not self._blocked_by_limits(exclude):
                return None
            remaining = deadline - self._clock()
            if remaining <= 0:
                shared_wait = min(held_back.values(), default=0.0)
                raise PoolSaturated(max(1.0, self._time_to_room(), shared_wait))
            held_back.clear()  # after the pause below, the shared limits are asked again
            self._released.clear()
            # Wake on a release (a cap frees up) or after a short while (a bucket leaks).
            try:
                async with asyncio.timeout(min(remaining, 0.05)):
                    await self._released.wait()
            except TimeoutError:
                pass

    async def _take_shared(self, credential: Credential) -> float | None:
        """The shared limits' word on one more use of `credential` (app/state/limits.py): None when
        admitted, or seconds to wait (then the local use taken is given back)."""
        if self.shared is None:
            return None
        try:
            refusal = await self.shared.take(
                "cred", credential.id, rate=self.policy.rate, cap=self.policy.max_in_flight
            )
        except BaseException:  # cancelled (the client left) while Redis answered: the use is not taken
            credential.in_flight = max(0, credential.in_flight - 1)
            self._released.set()
            raise
        if refusal is None:
            return None
        credential.in_flight = max(0, credential.in_flight - 1)
        return refusal.retry_after

    def release(self, credential: Credential) -> None:
        """One use of `credential` is over (whatever its outcome; see `record`)."""
        credential.in_flight = max(0, credential.in_flight - 1)
        if self.shared is not None and self.policy.max_in_flight:
            self.shared.release("cred", credential.id)
        self._released.set()

    def record(self, credential: Credential, failure: UpstreamFailure | None) -> None:
        """The outcome of one use: None when it answered in full, else the failure."""
        now = self._clock()
        recent = (
            credential.recent_rests
            if credential.last_rest_end is not None and now - credential.last_rest_end < MAX_REST
            else 0
        )
        transition = transition_for(failure, credential.consecutive_failures, self.policy, recent)
        if (
            transition is not None
            and transition.reason is RestReason.FAILURES
            and credential.rest_reason is not RestReason.FAILURES
            and not may_rest(
                self.resting_for_failures(), len(self._credentials), self.policy.max_ejected_percent
            )
        ):
            # The cap: this credential's failures still count, but it keeps serving.
            transition = Transition(CredentialState.ACTIVE)
        if failure is None:
            credential.successes += 1
            credential.consecutive_failures = 0
        else:
            credential.failures[failure.kind.value] = credential.failures.get(failure.kind.value, 0) + 1
            credential.last_error = failure.message
        if transition is None:
            return
        if failure is not None and transition.count_failure:
            credential.consecutive_failures += 1
        if self.get(credential.id) is None:
            return  # removed while in use: nothing to change
        before = (credential.state, credential.cooling_until)
        if transition.state is CredentialState.COOLING and credential.state is CredentialState.COOLING:
            # Already resting (a use in panic mode, or one that started before the rest): the rest
            # that was set stands, unless this outcome asks for a longer one.
            until = now + (transition.cooldown or 0.0)
            if credential.cooling_until is not None and credential.cooling_until >= until:
                return
        credential.state = transition.state
        if transition.state is CredentialState.COOLING:
            credential.cooling_until = now + (transition.cooldown or 0.0)
            if transition.reason is RestReason.FAILURES and credential.rest_reason is not RestReason.FAILURES:
                credential.recent_rests = recent + 1
            credential.rest_reason = transition.reason
        else:
            credential.cooling_until = None
            credential.rest_reason = None
        if (credential.state, credential.cooling_until) != before:
            self._changed(credential)

    def reset(self, credential: Credential) -> None:
        credential.state = CredentialState.ACTIVE
        credential.cooling_until = None
        credential.rest_reason = None
        credential.recent_rests = 0
        credential.consecutive_failures = 0
        self._changed(credential)

    # --- persistence ----------------------------------------------------------------------------
    def cooling_until_wall(self, credential: Credential) -> float | None:
        if credential.cooling_until is None:
            return None
        return self._wall_clock() + (credential.cooling_until - self._clock())

    def snapshot(self) -> list[dict[str, Any]]:
        """Each credential's cookie and state, with wall-clock times (for a file)."""
        self._refresh()
        return [
            {
                "id": c.id,
                "cookie": c.cookie,
                "state": c.state.value,
                "cooling_until": self.cooling_until_wall(c),
                "rest_reason": c.rest_reason.value if c.rest_reason is not None else None,
                "changed_at": c.changed_at,
                "last_error": c.last_error,
                "proxy": c.proxy,
                "user_agent": c.user_agent,
                "session_renewed_at": c.session_renewed_at,
                "session_expires_at": c.session_expires_at,
            }
            for c in self._credentials
        ]

    def adopt(self, records: Iterable[dict[str, Any]], removed: dict[str, float]) -> None:
        """Take in what another process (or an earlier run) stored: cookies it added, states it
        saw later than we did, and removals. Does not call `on_change`."""
        now_wall, now = self._wall_clock(), self._clock()
        for record in records:
            cookie = str(record["cookie"])
            id_ = record_id(record)
            changed_at = float(record.get("changed_at") or 0.0)
            credential = self.get(id_)
            if credential is None:
                # Our own removal counts too: a stale record must not bring back what we removed.
                if max(removed.get(id_, -math.inf), self.removed.get(id_, -math.inf)) >= changed_at:
                    continue
                credential = Credential(cookie=cookie, id=id_, changed_at=changed_at)
                self._attach(credential)
            elif credential.changed_at >= changed_at:
                continue
            elif credential.cookie != cookie:  # renewed by another process
                swap_cookie(credential, cookie)
            credential.state = CredentialState(record.get("state", "active"))
            until = record.get("cooling_until")
            credential.cooling_until = now + (float(until) - now_wall) if until is not None else None
            reason = record.get("rest_reason")
            credential.rest_reason = (
                RestReason(reason) if isinstance(reason, str) and reason in REST_REASONS else None
            )
            if credential.state is CredentialState.COOLING and credential.cooling_until is None:
                credential.state = CredentialState.ACTIVE
            if credential.state is not CredentialState.COOLING:
                credential.rest_reason = None
            elif credential.rest_reason is None:
                credential.rest_reason = RestReason.FAILURES
            credential.last_error = record.get("last_error") or credential.last_error
            credential.proxy = record.get("proxy") or None
            register_secret(proxy_secret(credential.proxy))
            credential.user_agent = record.get("user_agent") or None
            credential.session_renewed_at = record.get("session_renewed_at")
            credential.session_expires_at = record.get("session_expires_at")
            credential.changed_at = changed_at
        for id_, removed_at in removed.items():
            self.removed[id_] = max(removed_at, self.removed.get(id_, removed_at))
            credential = self.get(id_)
            if credential is not None and credential.changed_at <= removed_at:
                self._credentials.remove(credential)
                self._next = 0

    # --- reporting ----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        self._refresh()
        counts = {state.value: 0 for state in CredentialState}
        for credential in self._credentials:
            counts[credential.state.value] += 1
        return counts

    def next_recovery_in(self) -> float | None:
        """Seconds until the first cooling credential is back, if any is cooling."""
        now = self._clock()
        times = [
            c.cooling_until
            for c in self._credentials
            if c.state is CredentialState.COOLING and c.cooling_until is not None
        ]
        return max(0.0, min(times) - now) if times else None
