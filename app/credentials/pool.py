"""The credential pool: each cookie's state, round-robin selection, and what an outcome does to it.

States: `active`, `cooling` (until a time; comes back by itself), `invalid` (needs a new cookie).
`transition_for` is the pure rule from an upstream outcome to a state change; the pool applies it.
Time is injected (`clock`), so the state machine is tested without sleeping.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiolimiter import AsyncLimiter

from app.logs import register_secret
from app.upstream.failures import FailureKind, UpstreamFailure


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


class PoolSaturated(Exception):
    """Every usable credential is at its rate limit or concurrency cap, past the wait allowed."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"every credential is at its limit; retry in {retry_after:.1f} s")
        self.retry_after = retry_after


def credential_id(cookie: str) -> str:
    """A stable short id: the same cookie always has the same id, and the id reveals nothing."""
    return hashlib.sha256(cookie.encode("utf-8")).hexdigest()[:10]


def mask_secret(secret: str) -> str:
    if len(secret) <= 12:
        return "***"
    return f"{secret[:4]}…{secret[-4:]} ({len(secret)} chars)"


@dataclass
class Credential:
    cookie: str = field(repr=False)
    id: str = ""
    state: CredentialState = CredentialState.ACTIVE
    cooling_until: float | None = None
    consecutive_failures: int = 0
    successes: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_used: float | None = None  # wall-clock seconds
    in_flight: int = 0
    changed_at: float = 0.0  # wall-clock time of the last state or membership change
    limiter: AsyncLimiter | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = credential_id(self.cookie)

    @property
    def preview(self) -> str:
        return mask_secret(self.cookie)


@dataclass(frozen=True)
class Transition:
    state: CredentialState
    cooldown: float | None = None  # seconds, for COOLING
    count_failure: bool = True


def transition_for(
    failure: UpstreamFailure | None, consecutive_failures: int, policy: PoolPolicy
) -> Transition | None:
    """What an outcome does to a credential; None leaves it as it is.

    `consecutive_failures` is the count before this outcome.
    """
    if failure is None:
        return Transition(CredentialState.ACTIVE, count_failure=False)
    kind = failure.kind
    if kind is FailureKind.AUTH:
        return Transition(CredentialState.INVALID)
    if kind is FailureKind.CLOUDFLARE:
        return Transition(CredentialState.COOLING, policy.cloudflare_cooldown)
    if kind is FailureKind.RATE_LIMITED:
        cooldown = failure.retry_after if failure.retry_after is not None else policy.rate_limit_cooldown
        return Transition(CredentialState.COOLING, cooldown)
    if kind is FailureKind.CLIENT_ERROR:
        return None  # our request was refused: not the credential's fault
    if consecutive_failures + 1 >= policy.failure_threshold:
        return Transition(CredentialState.COOLING, policy.failure_cooldown)
    return Transition(CredentialState.ACTIVE)


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
        for cookie in cookies:
            self.add(cookie)

    def _changed(self, credential: Credential | None = None) -> None:
        if credential is not None:
            credential.changed_at = self._wall_clock()
        if self.on_change is not None:
            self.on_change()

    # --- membership ---------------------------------------------------------------------------
    def add(self, cookie: str) -> tuple[Credential, bool]:
        """Add a cookie; returns the credential and whether it is new."""
        cookie = cookie.strip()
        if not cookie:
            raise ValueError("a credential must not be empty")
        existing = self.get(credential_id(cookie))
        if existing is not None:
            return existing, False
        credential = Credential(cookie=cookie, changed_at=self._wall_clock())
        self.removed.pop(credential.id, None)
        self._attach(credential)
        self._changed()
        return credential, True

    def _attach(self, credential: Credential) -> None:
        register_secret(credential.cookie)
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
                credential.state = CredentialState.ACTIVE
                credential.cooling_until = None
                credential.consecutive_failures = 0

    def _has_room(self, credential: Credential) -> bool:
        if self.policy.max_in_flight and credential.in_flight >= self.policy.max_in_flight:
            return False
        return credential.limiter is None or credential.limiter.has_capacity()

    def acquire(self, exclude: set[str] | frozenset[str] = frozenset()) -> Credential | None:
        """The next active credential with room, in round-robin order, skipping `exclude`.

        Synchronous, so no other request can take the same slot between the check and the take.
        A credential with a rate limit must then have `limiter.acquire()` awaited before any other
        await (see `acquire_wait`); it does not suspend, since `has_capacity` said yes.
        """
        self._refresh()
        count = len(self._credentials)
        for step in range(count):
            index = (self._next + step) % count
            credential = self._credentials[index]
            if (
                credential.state is CredentialState.ACTIVE
                and credential.id not in exclude
                and self._has_room(credential)
            ):
                self._next = (index + 1) % count
                credential.in_flight += 1
                credential.last_used = self._wall_clock()
                return credential
        return None

    def _blocked_by_limits(self, exclude: set[str] | frozenset[str]) -> bool:
        """Whether some usable credential is only held back by its rate limit or its cap."""
        return any(c.state is CredentialState.ACTIVE and c.id not in exclude for c in self._credentials)

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
        while True:
            credential = self.acquire(exclude)
            if credential is not None:
                if credential.limiter is not None:
                    await credential.limiter.acquire()
                return credential
            if not self._blocked_by_limits(exclude):
                return None
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise PoolSaturated(max(1.0, self._time_to_room()))
            self._released.clear()
            # Wake on a release (a cap frees up) or after a short while (a bucket leaks).
            try:
                async with asyncio.timeout(min(remaining, 0.05)):
                    await self._released.wait()
            except TimeoutError:
                pass

    def release(self, credential: Credential) -> None:
        """One use of `credential` is over (whatever its outcome; see `record`)."""
        credential.in_flight = max(0, credential.in_flight - 1)
        self._released.set()

    def record(self, credential: Credential, failure: UpstreamFailure | None) -> None:
        """The outcome of one use: None when it answered in full, else the failure."""
        transition = transition_for(failure, credential.consecutive_failures, self.policy)
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
        credential.state = transition.state
        if transition.state is CredentialState.COOLING:
            credential.cooling_until = self._clock() + (transition.cooldown or 0.0)
        else:
            credential.cooling_until = None
        if (credential.state, credential.cooling_until) != before:
            self._changed(credential)

    def reset(self, credential: Credential) -> None:
        credential.state = CredentialState.ACTIVE
        credential.cooling_until = None
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
                "cookie": c.cookie,
                "state": c.state.value,
                "cooling_until": self.cooling_until_wall(c),
                "changed_at": c.changed_at,
                "last_error": c.last_error,
            }
            for c in self._credentials
        ]

    def adopt(self, records: Iterable[dict[str, Any]], removed: dict[str, float]) -> None:
        """Take in what another process (or an earlier run) stored: cookies it added, states it
        saw later than we did, and removals. Does not call `on_change`."""
        now_wall, now = self._wall_clock(), self._clock()
        for record in records:
            cookie = str(record["cookie"])
            changed_at = float(record.get("changed_at") or 0.0)
            credential = self.get(credential_id(cookie))
            if credential is None:
                id_ = credential_id(cookie)
                # Our own removal counts too: a stale record must not bring back what we removed.
                if max(removed.get(id_, -math.inf), self.removed.get(id_, -math.inf)) >= changed_at:
                    continue
                credential = Credential(cookie=cookie, changed_at=changed_at)
                self._attach(credential)
            elif credential.changed_at >= changed_at:
                continue
            credential.state = CredentialState(record.get("state", "active"))
            until = record.get("cooling_until")
            credential.cooling_until = now + (float(until) - now_wall) if until is not None else None
            if credential.state is CredentialState.COOLING and credential.cooling_until is None:
                credential.state = CredentialState.ACTIVE
            credential.last_error = record.get("last_error") or credential.last_error
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
