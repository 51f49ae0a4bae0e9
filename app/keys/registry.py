"""Client keys: named keys with limits and usage, looked up by the hash of the presented secret.

A key's secret is shown once, when it is created; the registry keeps only its SHA-256 (`hash`) and a
masked `prefix`. `authenticate` finds a key by hash, comparing every stored digest with
`hmac.compare_digest` (no early exit). `admit` applies a key's rules to one request, in order:
disabled or expired (401), a model not in its allow-list (403), its `rpm` (429) and its `max_streams`
(429); each refusal is a `KeyRefusal`, free of any HTTP dialect.

All methods are synchronous: on the event loop, each check-and-take is atomic without locks (as in
`CredentialPool`). The monotonic clock (`clock`) drives the rpm window; the wall clock (`wall_clock`)
gives expiry, `created_at`, `changed_at` and `last_used`, which are persisted.

Keys from `API_KEYS` (`add_env`) are fixed: source "env", no limits, never in `snapshot`, and neither
`patch` nor `delete` touches them (`KeyReadOnlyError`).

`adopt` takes in what another process or an earlier run stored: per key the later `changed_at` wins
for its settings, a tombstone later than a record drops it; usage counters and `last_used` only
ever grow (each takes the larger of the two sides).
"""

from __future__ import annotations

import builtins
import hashlib
import hmac
import math
import re
import secrets
import string
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

from app.keys.limits import WINDOW, window_retry_after
from app.keys.limits import KeyRefusal as KeyRefusal  # re-exported: callers import it from here
from app.logs import register_secret
from app.state.limits import SharedLimits

NAME_MAX = 64
ID_ALPHABET = string.ascii_letters + string.digits
ENV_NAME = re.compile(r"env-[0-9]+")  # reserved for keys from API_KEYS
HASH_FORMAT = re.compile(r"[0-9a-f]{64}")
EDITABLE = ("name", "rpm", "max_streams", "models", "expires_at", "disabled")

KeySource = Literal["admin", "env"]


class KeyFieldError(ValueError):
    """A setting of a key is not valid: `field` names it, the message says why (never a secret)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class KeyReadOnlyError(ValueError):
    """A key from `API_KEYS` cannot be changed or deleted at run time."""


# --- secrets ----------------------------------------------------------------------------------------
def hash_key(secret: str) -> str:
    """The SHA-256 hex digest of the key's UTF-8 bytes: what is stored instead of the key."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return "sk-" + secrets.token_urlsafe(32)


def key_prefix(secret: str) -> str:
    """The key, masked: `sk-AbCd…wxyz` (its first 7 and last 4 characters) for a generated key; a
    shorter key shows at most a sixth of its length at the start and an eighth at the end, so what
    is hidden still cannot be guessed."""
    head = min(7, len(secret) // 6)
    tail = min(4, len(secret) // 8)
    return secret[:head] + "…" + (secret[-tail:] if tail else "")


def new_key_id() -> str:
    return "key_" + "".join(secrets.choice(ID_ALPHABET) for _ in range(12))


def env_key_id(number: int) -> str:
    """A fixed key's id: its place in API_KEYS (an id from its hash would let anyone who sees the id
    test guesses of a human-chosen key offline)."""
    return f"env_{number}"


# --- validation -------------------------------------------------------------------------------------
def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate_name(value: object) -> str:
    if not isinstance(value, str):
        raise KeyFieldError("name", "name must be a string")
    name = value.strip()
    if not 1 <= len(name) <= NAME_MAX:
        raise KeyFieldError("name", f"name must be 1 to {NAME_MAX} characters")
    if not name.isprintable():
        raise KeyFieldError("name", "name must hold only printable characters")
    return name


def validate_limit(field_: str, value: object) -> int | None:
    """`rpm` or `max_streams`: a positive integer, or None for no limit."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise KeyFieldError(field_, f"{field_} must be a positive integer or null")
    return value


def validate_models(value: object) -> list[str] | None:
    """A non-empty list of model names (duplicates dropped, order kept), or None for every model."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise KeyFieldError("models", "models must be a non-empty list of model names or null")
    models: list[str] = []
    for index, model in enumerate(value):
        if not isinstance(model, str) or not model.strip():
            raise KeyFieldError("models", f"models[{index}] must be a non-empty string")
        if model not in models:
            models.append(model)
    return models


LATEST_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z: what a date-time can still say (stored times too)


def validate_expires_at(value: object, now: float | None) -> float | None:
    """A wall-clock time in seconds since the epoch, later than `now` (None: no check), or None."""
    if value is None:
        return None
    if not _is_number(value):
        raise KeyFieldError("expires_at", "expires_at must be a time in seconds since the epoch, or null")
    expires_at = float(cast(float, value))
    if not 0 < expires_at <= LATEST_TIME:
        raise KeyFieldError(
            "expires_at", "expires_at must be a time before the year 10000 (in seconds, not ms)"
        )
    if now is not None and expires_at <= now:
        raise KeyFieldError("expires_at", "expires_at must be in the future")
    return expires_at


def validate_disabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise KeyFieldError("disabled", "disabled must be true or false")
    return value


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- keys -------------------------------------------------------------------------------------------
@dataclass
class KeyUsage:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # by class

    def to_record(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "errors": dict(self.errors),
        }

    @classmethod
    def from_record(cls, record: object) -> KeyUsage:
        if not isinstance(record, Mapping):
            raise ValueError("usage must be an object")
        counts: dict[str, int] = {}
        for name in ("requests", "prompt_tokens", "completion_tokens"):
            value = record.get(name, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"usage.{name} must be a non-negative integer")
            counts[name] = value
        errors = record.get("errors", {})
        if not isinstance(errors, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in errors.items()
        ):
            raise ValueError("usage.errors must map error classes to non-negative integers")
        return cls(errors=dict(errors), **counts)

    def merge_max(self, other: KeyUsage) -> None:
        """Counters only grow: keep the larger of each (another process's view, or ours)."""
        self.requests = max(self.requests, other.requests)
        self.prompt_tokens = max(self.prompt_tokens, other.prompt_tokens)
        self.completion_tokens = max(self.completion_tokens, other.completion_tokens)
        for kind, count in other.errors.items():
            self.errors[kind] = max(self.errors.get(kind, 0), count)


@dataclass
class ClientKey:
    id: str
    name: str
    hash: str  # SHA-256 hex of the secret; the secret itself is never kept
    prefix: str  # masked, for people to tell keys apart
    rpm: int | None = None
    max_streams: int | None = None
    models: list[str] | None = None  # None: every model
    expires_at: float | None = None  # wall-clock
    disabled: bool = False
    created_at: float = 0.0  # wall-clock
    changed_at: float = 0.0  # wall-clock time of the last change of settings
    last_used: float | None = None  # wall-clock
    usage: KeyUsage = field(default_factory=KeyUsage)
    source: KeySource = "admin"
    # Runtime only, never persisted:
    in_flight: int = field(default=0, repr=False, compare=False)
    window: deque[float] = field(default_factory=deque, repr=False, compare=False)  # monotonic
    # The usage the key was read with from a store (None: made here): the part of `usage` that is
    # not this process's own counting (app/state/usage.py adds only the rest to the shared sums).
    stored_usage: KeyUsage | None = field(default=None, repr=False, compare=False)

    def expired(self, now: float) -> bool:
        """Whether the key has expired at wall-clock time `now`."""
        return self.expires_at is not None and now >= self.expires_at

    def to_record(self) -> dict[str, Any]:
        """Everything but the runtime state, JSON-safe (for the file)."""
        return {
            "id": self.id,
            "name": self.name,
            "hash": self.hash,
            "prefix": self.prefix,
            "rpm": self.rpm,
            "max_streams": self.max_streams,
            "models": list(self.models) if self.models is not None else None,
            "expires_at": self.expires_at,
            "disabled": self.disabled,
            "created_at": self.created_at,
            "changed_at": self.changed_at,
            "last_used": self.last_used,
            "usage": self.usage.to_record(),
            "source": self.source,
        }

    def to_public(self) -> dict[str, Any]:
        """What an admin sees: the record without the hash, with the requests in flight."""
        record = self.to_record()
        del record["hash"]
        record["in_flight"] = self.in_flight
        return record

    @classmethod
    def from_record(cls, record: object) -> ClientKey:
        """A stored key, each field checked; ValueError names the key's id and the field."""
        if not isinstance(record, Mapping):
            raise ValueError("a key record must be an object")
        id_ = record.get("id")
        if not isinstance(id_, str) or not id_:
            raise ValueError("a key record has no 'id' (a non-empty string)")
        where = f"key record {id_!r}"
        try:
            source = record.get("source", "admin")
            if source not in ("admin", "env"):
                raise KeyFieldError("source", "source must be 'admin' or 'env'")
            key_hash = record.get("hash")
            if not isinstance(key_hash, str) or not HASH_FORMAT.fullmatch(key_hash):
                raise KeyFieldError("hash", "hash must be a SHA-256 digest in lower-case hex")
            prefix = record.get("prefix", "…")
            if not isinstance(prefix, str):
                raise KeyFieldError("prefix", "prefix must be a string")
            times: dict[str, float | None] = {}
            for name in ("created_at", "changed_at", "last_used"):
                value = record.get(name)
                if value is not None and not _is_number(value):
                    raise KeyFieldError(name, f"{name} must be a time in seconds since the epoch, or null")
                times[name] = float(value) if value is not None else None
            usage = KeyUsage.from_record(record.get("usage", {}))
            return cls(
                id=id_,
                name=validate_name(record.get("name")),
                hash=key_hash,
                prefix=prefix,
                rpm=validate_limit("rpm", record.get("rpm")),
                max_streams=validate_limit("max_streams", record.get("max_streams")),
                models=validate_models(record.get("models")),
                expires_at=validate_expires_at(record.get("expires_at"), None),
                disabled=validate_disabled(record.get("disabled", False)),
                created_at=times["created_at"] or 0.0,
                changed_at=times["changed_at"] or 0.0,
                last_used=times["last_used"],
                usage=usage,
                source=cast(KeySource, source),
                stored_usage=KeyUsage.from_record(usage.to_record()),
            )
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


class Admission:
    """One admitted request of a key: `release()` when it ends (idempotent; also on leaving a `with`),
    `record()` its estimated tokens, `error()` its failure class."""

    def __init__(
        self, key: ClientKey, on_usage: Callable[[], None], on_release: Callable[[], None] | None = None
    ) -> None:
        self.key = key
        self._on_usage = on_usage
        self._on_release = on_release  # frees the key's shared slot (app/state/limits.py)
        self.released = False

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        self.key.in_flight = max(0, self.key.in_flight - 1)
        if self._on_release is not None:
            self._on_release()

    def withdraw(self) -> None:
        """Undo the admission (the shared limits refused it): it counts nowhere, holds no slot."""
        if self.released:
            return
        self.released = True
        key = self.key
        key.in_flight = max(0, key.in_flight - 1)
        key.usage.requests = max(0, key.usage.requests - 1)
        if key.rpm is not None and key.window:
            key.window.pop()

    def record(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.key.usage.prompt_tokens += max(0, prompt_tokens)
        self.key.usage.completion_tokens += max(0, completion_tokens)
        self._on_usage()

    def error(self, kind: str) -> None:
        self.key.usage.errors[kind] = self.key.usage.errors.get(kind, 0) + 1
        self._on_usage()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def __repr__(self) -> str:
        return f"Admission({self.key.id}, {self.key.name!r}, released={self.released})"


class KeyRegistry:
    """The client keys, by id. All methods are synchronous; none awaits."""

    def __init__(
        self, *, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._keys: dict[str, ClientKey] = {}
        self.removed: dict[str, float] = {}  # id -> wall-clock time of its deletion (tombstones)
        # Called after create / patch / delete (not after usage, nor adopt): persistence hooks in here.
        self.on_change: Callable[[], None] | None = None
        # Limits shared with other replicas (Redis), checked after a key's own; None: only these.
        self.shared: SharedLimits | None = None
        self.usage_shared = False  # usage counted across replicas (Redis): records' usage is not merged
        # Called after usage changes (admit, record, error): for batched saves.
        self.on_usage: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def _used(self) -> None:
        if self.on_usage is not None:
            self.on_usage()

    # --- membership -----------------------------------------------------------------------------
    def create(
        self,
        name: str,
        *,
        rpm: int | None = None,
        max_streams: int | None = None,
        models: builtins.list[str] | None = None,
        expires_at: float | None = None,
    ) -> tuple[ClientKey, str]:
        """A new key and its secret (shown once, never kept). KeyFieldError for a bad setting."""
        now = self._wall_clock()
        checked_name = self._check_name(name, None)
        key_rpm = validate_limit("rpm", rpm)
        key_streams = validate_limit("max_streams", max_streams)
        key_models = validate_models(models)
        key_expires = validate_expires_at(expires_at, now)
        secret = new_secret()
        key_hash = hash_key(secret)
        id_ = new_key_id()
        while id_ in self._keys or id_ in self.removed:
            id_ = new_key_id()
        key = ClientKey(
            id=id_,
            name=checked_name,
            hash=key_hash,
            prefix=key_prefix(secret),
            rpm=key_rpm,
            max_streams=key_streams,
            models=key_models,
            expires_at=key_expires,
            created_at=now,
            changed_at=now,
        )
        self._keys[id_] = key
        self._changed()
        return key, secret

    def _check_name(self, value: object, own_id: str | None) -> str:
        name = validate_name(value)
        if ENV_NAME.fullmatch(name):
            raise KeyFieldError("name", "names env-1, env-2, … are kept for the keys from API_KEYS")
        if any(k.name == name and k.id != own_id for k in self._keys.values()):
            raise KeyFieldError("name", f"a key named {name!r} exists already")
        return name

    def add_env(self, secrets_: Iterable[str]) -> builtins.list[ClientKey]:
        """The fixed keys from `API_KEYS`, named env-1, env-2, … in their order (an empty or
        repeated key is skipped), without limits. Returns the keys added."""
        added: builtins.list[ClientKey] = []
        now = self._wall_clock()
        for number, secret in enumerate(secrets_, start=1):
            if not secret:
                continue
            key_hash = hash_key(secret)
            if any(hmac.compare_digest(k.hash, key_hash) for k in self._keys.values()):
                continue
            register_secret(secret)
            id_ = env_key_id(number)
            key = ClientKey(
                id=id_,
                name=f"env-{number}",
                hash=key_hash,
                prefix=key_prefix(secret),
                created_at=now,
                changed_at=now,
                source="env",
            )
            self._keys[id_] = key
            added.append(key)
        return added

    def get(self, id_: str) -> ClientKey | None:
        return self._keys.get(id_)

    def list(self) -> builtins.list[ClientKey]:
        return builtins.list(self._keys.values())

    def __len__(self) -> int:
        return len(self._keys)

    def patch(self, id_: str, /, **changes: object) -> ClientKey:
        """Change a key's settings (`name`, `rpm`, `max_streams`, `models`, `expires_at`,
        `disabled`; None clears a limit) and return the key. All are checked before any applies.
        KeyError for an unknown id (check with `get` first); KeyFieldError for a bad or unknown
        field; KeyReadOnlyError for a key from API_KEYS."""
        key = self._keys.get(id_)
        if key is None:
            raise KeyError(f"no client key with id {id_!r}")
        if key.source == "env":
            raise KeyReadOnlyError(f"the key {key.name!r} comes from API_KEYS and cannot be changed")
        now = self._wall_clock()
        checked: dict[str, object] = {}
        for name, value in changes.items():
            if name == "name":
                checked[name] = self._check_name(value, key.id)
            elif name in ("rpm", "max_streams"):
                checked[name] = validate_limit(name, value)
            elif name == "models":
                checked[name] = validate_models(value)
            elif name == "expires_at":
                checked[name] = validate_expires_at(value, now)
            elif name == "disabled":
                checked[name] = validate_disabled(value)
            else:
                raise KeyFieldError(name, f"{name} is not a setting of a key ({', '.join(EDITABLE)})")
        changed = False
        for name, value in checked.items():
            if getattr(key, name) != value:
                setattr(key, name, value)
                changed = True
        if changed:
            if key.rpm is None:
                key.window.clear()
            key.changed_at = now
            self._changed()
        return key

    def delete(self, id_: str) -> bool:
        """Revoke a key: the next `authenticate` no longer finds it. False for an unknown id."""
        key = self._keys.get(id_)
        if key is None:
            return False
        if key.source == "env":
            raise KeyReadOnlyError(f"the key {key.name!r} comes from API_KEYS and cannot be deleted")
        del self._keys[id_]
        self.removed[id_] = self._wall_clock()
        self._changed()
        return True

    # --- persistence ----------------------------------------------------------------------------
    def snapshot(self) -> builtins.list[dict[str, Any]]:
        """The records of the keys made at run time (not those from API_KEYS), for a file."""
        return [k.to_record() for k in self._keys.values() if k.source == "admin"]

    def adopt(self, records: Iterable[object], removed: Mapping[str, float]) -> None:
        """Take in what another process (or an earlier run) stored. Every record is checked first
        (ValueError, nothing taken in); then per key the later `changed_at` wins for its settings,
        usage counters and `last_used` take the larger side, and a tombstone at or after a key's
        `changed_at` removes it (ours count too). Records and tombstones of keys from API_KEYS are
        ignored. Does not call `on_change`."""
        incoming = [ClientKey.from_record(record) for record in records]
        for id_, at in removed.items():
            if not isinstance(id_, str) or not _is_number(at):
                raise ValueError("removed keys must map ids to times in seconds since the epoch")
        for new in incoming:
            if new.source != "admin":
                continue
            key = self._keys.get(new.id)
            if key is None:
                if new.id in removed or new.id in self.removed:
                    continue  # ids are never reused: a revoked key stays revoked
                self._keys[new.id] = new
                continue
            if key.source != "admin":
                continue
            if new.changed_at > key.changed_at:
                for name in ("name", "prefix", *EDITABLE, "created_at", "changed_at"):
                    setattr(key, name, getattr(new, name))
                if key.rpm is None:
                    key.window.clear()
            if not self.usage_shared:  # shared counters are summed in Redis instead (app/state/usage.py)
                key.usage.merge_max(new.usage)
            if new.last_used is not None and (key.last_used is None or new.last_used > key.last_used):
                key.last_used = new.last_used
        for id_, at in removed.items():
            current = self._keys.get(id_)
            if current is not None and current.source == "env":
                continue
            self.removed[id_] = max(float(at), self.removed.get(id_, float(at)))
            if current is not None:
                del self._keys[id_]

    # --- requests -------------------------------------------------------------------------------
    def authenticate(self, presented: str) -> ClientKey | None:
        """The key whose secret was presented, or None. Every stored digest is compared in constant
        time, with no early exit. Does not look at `disabled` or expiry (`admit` does)."""
        if not presented:
            return None
        digest = hash_key(presented)
        found: ClientKey | None = None
        for key in self._keys.values():
            if hmac.compare_digest(key.hash, digest):
                found = key
        return found

    def check_active(self, key: ClientKey) -> None:
        """KeyRefusal (401) when the key is disabled (`key_revoked`) or expired (`key_expired`):
        the first of `admit`'s checks, for a caller that checks a key before it knows the model."""
        if key.disabled:
            raise KeyRefusal(401, "key_revoked", f"the key {key.name!r} is disabled")
        if key.expires_at is not None and self._wall_clock() >= key.expires_at:
            raise KeyRefusal(401, "key_expired", f"the key {key.name!r} expired at {_iso(key.expires_at)}")

    def count_error(self, key: ClientKey, kind: str) -> None:
        """Count an error of a request that was never admitted (a refusal, a bad request)."""
        key.usage.errors[kind] = key.usage.errors.get(kind, 0) + 1
        self._used()

    def admit(self, key: ClientKey, model: str) -> Admission:
        """Check one request of `key` for `model` (see the module's docstring for the order); on
        success count it and return its `Admission`. KeyRefusal otherwise; a refusal counts nothing."""
        self.check_active(key)
        if key.models is not None and model not in key.models:
            allowed = ", ".join(key.models)
            raise KeyRefusal(
                403,
                "model_not_allowed",
                f"the key {key.name!r} may not use the model {model!r}; it may use: {allowed}",
            )
        wall, now = self._wall_clock(), self._clock()
        if key.rpm is not None:
            wait = window_retry_after(key.window, key.rpm, now)
            if wait is not None:
                raise KeyRefusal(
                    429,
                    "key_rate_limited",
                    f"the key {key.name!r} is limited to {key.rpm} requests per minute; retry in {wait} s",
                    wait,
                )
        if key.max_streams is not None and key.in_flight >= key.max_streams:
            raise KeyRefusal(
                429,
                "key_streams_exhausted",
                f"the key {key.name!r} has {key.in_flight} requests in flight, its limit; "
                "retry when one ends",
                1,
            )
        if key.rpm is not None:
            key.window.append(now)
        key.in_flight += 1
        key.last_used = wall
        key.usage.requests += 1
        self._used()
        shared = self.shared
        on_release = (lambda: shared.release("key", key.id)) if shared is not None else None
        return Admission(key, self._used, on_release)

    async def admit_shared(self, key: ClientKey, model: str) -> Admission:
        """`admit`, then the same limits across replicas (when shared): KeyRefusal (429) when
        another replica's requests used them up."""
        admission = self.admit(key, model)
        if self.shared is None:
            return admission
        try:
            refusal = await self.shared.take(
                "key",
                key.id,
                rate=(key.rpm, WINDOW) if key.rpm is not None else None,
                cap=key.max_streams or 0,
            )
        except BaseException:  # cancelled while Redis answered: the request was never admitted
            admission.withdraw()
            raise
        if refusal is None:
            return admission
        admission.withdraw()
        wait = max(1, math.ceil(refusal.retry_after))
        if refusal.kind == "streams":
            raise KeyRefusal(
                429,
                "key_streams_exhausted",
                f"the key {key.name!r} has {key.max_streams} requests in flight across the gateway's "
                "replicas, its limit; retry when one ends",
                wait,
            )
        raise KeyRefusal(
            429,
            "key_rate_limited",
            f"the key {key.name!r} is limited to {key.rpm} requests per minute; retry in {wait} s",
            wait,
        )
