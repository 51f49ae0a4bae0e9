"""The credential pool: each cookie's state, round-robin selection, and what an outcome does to it.

States: `active`, `cooling` (until a time; comes back by itself), `invalid` (needs a new cookie).
`transition_for` is the pure rule from an upstream outcome to a state change; the pool applies it.
Time is injected (`clock`), so the state machine is tested without sleeping.
"""

from __future__ import annotations

import enum
import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
        for cookie in cookies:
            self.add(cookie)

    # --- membership ---------------------------------------------------------------------------
    def add(self, cookie: str) -> tuple[Credential, bool]:
        """Add a cookie; returns the credential and whether it is new."""
        cookie = cookie.strip()
        if not cookie:
            raise ValueError("a credential must not be empty")
        existing = self.get(credential_id(cookie))
        if existing is not None:
            return existing, False
        credential = Credential(cookie=cookie)
        self._credentials.append(credential)
        return credential, True

    def remove(self, credential_id_: str) -> bool:
        for index, credential in enumerate(self._credentials):
            if credential.id == credential_id_:
                del self._credentials[index]
                if index < self._next:
                    self._next -= 1
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

    def acquire(self, exclude: set[str] | frozenset[str] = frozenset()) -> Credential | None:
        """The next active credential in round-robin order, skipping `exclude`; None if none."""
        self._refresh()
        count = len(self._credentials)
        for step in range(count):
            index = (self._next + step) % count
            credential = self._credentials[index]
            if credential.state is CredentialState.ACTIVE and credential.id not in exclude:
                self._next = (index + 1) % count
                credential.in_flight += 1
                credential.last_used = self._wall_clock()
                return credential
        return None

    def release(self, credential: Credential) -> None:
        """One use of `credential` is over (whatever its outcome; see `record`)."""
        credential.in_flight = max(0, credential.in_flight - 1)

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
        credential.state = transition.state
        if transition.state is CredentialState.COOLING:
            credential.cooling_until = self._clock() + (transition.cooldown or 0.0)
        else:
            credential.cooling_until = None

    def reset(self, credential: Credential) -> None:
        credential.state = CredentialState.ACTIVE
        credential.cooling_until = None
        credential.consecutive_failures = 0

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
