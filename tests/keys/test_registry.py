"""Client keys: hashing and lookup, validation, per-key limits over fake clocks, usage, persistence."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import math
import re
from typing import Any

import pytest

from app.keys import (
    Admission,
    ClientKey,
    KeyFieldError,
    KeyReadOnlyError,
    KeyRefusal,
    KeyRegistry,
    KeyUsage,
    hash_key,
    key_prefix,
    new_secret,
)
from app.logs import redact
from tests.fakes import Clock

WALL = 1_750_000_000.0
ENV_SECRETS = ["env-secret-number-one-0123456789", "env-secret-number-two-0123456789"]


@pytest.fixture
def clock() -> Clock:
    return Clock(1000.0)


@pytest.fixture
def wall() -> Clock:
    return Clock(WALL)


@pytest.fixture
def registry(clock: Clock, wall: Clock) -> KeyRegistry:
    return KeyRegistry(clock=clock, wall_clock=wall)


def refusal(registry: KeyRegistry, key: ClientKey, model: str = "gpt-4o") -> KeyRefusal:
    with pytest.raises(KeyRefusal) as caught:
        registry.admit(key, model)
    return caught.value


# --- secrets and lookup -----------------------------------------------------------------------------
def test_hash_is_the_sha256_hex_of_the_utf8_key() -> None:
    assert hash_key("sk-abc") == hashlib.sha256(b"sk-abc").hexdigest()
    assert hash_key("sk-é") == hashlib.sha256("sk-é".encode()).hexdigest()


def test_new_secrets_are_long_random_and_distinct() -> None:
    made = {new_secret() for _ in range(50)}
    assert len(made) == 50
    for secret in made:
        assert re.fullmatch(r"sk-[A-Za-z0-9_-]{43}", secret)


def test_prefix_shows_seven_and_four_of_a_generated_key() -> None:
    secret = "sk-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcwxyz"
    assert len(secret) == len(new_secret())
    assert key_prefix(secret) == "sk-AbCd…wxyz"


@pytest.mark.parametrize(
    ("secret", "masked"),
    [("0123456789abcdef", "01…ef"), ("short", "…"), ("", "…"), ("0123456789abcdefghijklmnop", "0123…nop")],
)
def test_prefix_of_a_short_key_shows_less(secret: str, masked: str) -> None:
    assert key_prefix(secret) == masked


def test_create_keeps_only_the_hash(registry: KeyRegistry, wall: Clock) -> None:
    key, secret = registry.create("alice")
    assert re.fullmatch(r"key_[A-Za-z0-9]{12}", key.id)
    assert key.hash == hash_key(secret)
    assert key.prefix == key_prefix(secret)
    assert (key.name, key.source, key.created_at, key.changed_at, key.last_used) == (
        "alice",
        "admin",
        WALL,
        WALL,
        None,
    )
    assert secret not in repr(key)
    assert secret not in json.dumps(key.to_record())
    assert secret not in json.dumps(registry.snapshot())
    assert secret not in repr(registry.list())


def test_authenticate_finds_the_key_by_its_secret(registry: KeyRegistry) -> None:
    alice, alice_secret = registry.create("alice")
    bob, bob_secret = registry.create("bob")
    assert registry.authenticate(alice_secret) is alice
    assert registry.authenticate(bob_secret) is bob
    assert registry.authenticate(alice_secret + "x") is None
    assert registry.authenticate(alice_secret[:-1]) is None
    assert registry.authenticate("") is None
    assert registry.authenticate("sk-unknown") is None


def test_authenticate_compares_every_digest_in_constant_time(
    registry: KeyRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets_ = [registry.create(f"user-{n}")[1] for n in range(5)]
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for secret in (secrets_[0], secrets_[4], "sk-nobody"):
        calls.clear()
        registry.authenticate(secret)
        assert len(calls) == 5  # no early exit: as many comparisons for the first key as for none
        assert all(b == hash_key(secret) for _, b in calls)


# --- validation --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": "   "}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "tab\there"}, "name"),
        ({"name": "line\nbreak"}, "name"),
        ({"name": 7}, "name"),
        ({"name": None}, "name"),
        ({"name": "env-1"}, "name"),
        ({"name": "taken"}, "name"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": -1}, "rpm"),
        ({"rpm": True}, "rpm"),
        ({"rpm": 1.5}, "rpm"),
        ({"rpm": "3"}, "rpm"),
        ({"max_streams": 0}, "max_streams"),
        ({"max_streams": False}, "max_streams"),
        ({"max_streams": 2.0}, "max_streams"),
        ({"models": []}, "models"),
        ({"models": [""]}, "models"),
        ({"models": ["gpt-4o", "  "]}, "models"),
        ({"models": [3]}, "models"),
        ({"models": "gpt-4o"}, "models"),
        ({"expires_at": WALL}, "expires_at"),
        ({"expires_at": WALL - 1}, "expires_at"),
        ({"expires_at": "tomorrow"}, "expires_at"),
        ({"expires_at": True}, "expires_at"),
        ({"expires_at": math.nan}, "expires_at"),
        ({"expires_at": math.inf}, "expires_at"),
    ],
)
def test_create_refuses_a_bad_setting(registry: KeyRegistry, settings: dict[str, Any], field: str) -> None:
    registry.create("taken")
    changes: list[int] = []
    registry.on_change = lambda: changes.append(1)
    arguments: dict[str, Any] = {"name": "new", **settings}
    with pytest.raises(KeyFieldError) as caught:
        registry.create(**arguments)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert field in str(caught.value)
    assert len(registry) == 1
    assert changes == []


def test_create_accepts_every_good_setting(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create(
        "  Team Bot ✓ ",
        rpm=3,
        max_streams=2,
        models=["gpt-4o", "o3", "gpt-4o"],
        expires_at=WALL + 1,
    )
    assert (key.name, key.rpm, key.max_streams, key.models, key.expires_at) == (
        "Team Bot ✓",
        3,
        2,
        ["gpt-4o", "o3"],
        WALL + 1,
    )
    assert registry.create("x" * 64)[0].name == "x" * 64
    assert registry.create("env-one")[0].name == "env-one"  # only env-<number> is reserved


def test_create_calls_on_change(registry: KeyRegistry) -> None:
    changes: list[int] = []
    registry.on_change = lambda: changes.append(1)
    registry.create("alice")
    assert changes == [1]


# --- patch and delete ----------------------------------------------------------------------------------
def test_patch_changes_settings_and_none_clears_a_limit(registry: KeyRegistry, wall: Clock) -> None:
    key, secret = registry.create("alice", rpm=5, max_streams=1, models=["gpt-4o"])
    changes: list[int] = []
    registry.on_change = lambda: changes.append(1)
    wall.now += 10
    patched = registry.patch(
        key.id, rpm=None, max_streams=4, models=None, name="alice2", expires_at=WALL + 99
    )
    assert patched is key
    assert (key.name, key.rpm, key.max_streams, key.models, key.expires_at) == (
        "alice2",
        None,
        4,
        None,
        WALL + 99,
    )
    assert key.changed_at == WALL + 10
    assert key.created_at == WALL
    assert changes == [1]
    assert registry.authenticate(secret) is key  # the secret stays the same


def test_patch_without_a_change_changes_nothing(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create("alice", rpm=5)
    changes: list[int] = []
    registry.on_change = lambda: changes.append(1)
    wall.now += 10
    assert registry.patch(key.id, rpm=5, name="alice") is key
    assert registry.patch(key.id) is key
    assert key.changed_at == WALL
    assert changes == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "bob"}, "name"),
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"rpm": 0}, "rpm"),
        ({"max_streams": "2"}, "max_streams"),
        ({"models": []}, "models"),
        ({"expires_at": WALL - 5}, "expires_at"),
        ({"disabled": "yes"}, "disabled"),
        ({"disabled": None}, "disabled"),
        ({"hash": "00" * 32}, "hash"),
        ({"usage": {}}, "usage"),
        ({"rpm": 10, "models": [""]}, "models"),  # nothing applies when one is bad
    ],
)
def test_patch_refuses_a_bad_or_unknown_field(
    registry: KeyRegistry, changes: dict[str, Any], field: str
) -> None:
    registry.create("bob")
    key, _ = registry.create("alice", rpm=5)
    before = key.to_record()
    with pytest.raises(KeyFieldError) as caught:
        registry.patch(key.id, **changes)
    assert caught.value.field == field
    assert key.to_record() == before


def test_patch_of_an_unknown_key_is_a_key_error(registry: KeyRegistry) -> None:
    with pytest.raises(KeyError, match="key_nobody"):
        registry.patch("key_nobody", rpm=3)


def test_delete_revokes_for_the_next_authenticate(registry: KeyRegistry, wall: Clock) -> None:
    key, secret = registry.create("alice")
    changes: list[int] = []
    registry.on_change = lambda: changes.append(1)
    wall.now += 5
    assert registry.delete(key.id) is True
    assert registry.authenticate(secret) is None
    assert registry.get(key.id) is None
    assert registry.removed == {key.id: WALL + 5}
    assert changes == [1]
    assert registry.delete(key.id) is False
    assert changes == [1]


def test_an_admitted_request_of_a_deleted_key_still_ends_cleanly(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice", max_streams=1)
    admission = registry.admit(key, "gpt-4o")
    registry.delete(key.id)
    admission.record(3, 4)
    admission.release()
    assert key.in_flight == 0


# --- admit: rpm ------------------------------------------------------------------------------------------
def test_rpm_admits_exactly_rpm_requests_per_minute(registry: KeyRegistry, clock: Clock) -> None:
    key, _ = registry.create("alice", rpm=3)
    for _ in range(3):
        registry.admit(key, "gpt-4o").release()
    refused = refusal(registry, key)
    assert (refused.status, refused.kind, refused.retry_after) == (429, "key_rate_limited", 60)
    assert "alice" in refused.message and "3 requests per minute" in refused.message
    clock.now += 59.5
    assert refusal(registry, key).retry_after == 1
    clock.now += 0.5  # 60 s after the first: one slot, all three were at the same time
    for _ in range(3):
        registry.admit(key, "gpt-4o").release()
    assert refusal(registry, key).retry_after == 60


def test_rpm_window_slides(registry: KeyRegistry, clock: Clock) -> None:
    key, _ = registry.create("alice", rpm=3)
    start = clock.now
    for offset in (0, 20, 40):
        clock.now = start + offset
        registry.admit(key, "gpt-4o").release()
    clock.now = start + 50
    assert refusal(registry, key).retry_after == 10  # the request at 0 leaves at 60
    clock.now = start + 60
    registry.admit(key, "gpt-4o").release()  # 20, 40, 60 count now
    clock.now = start + 61
    assert refusal(registry, key).retry_after == 19  # the request at 20 leaves at 80
    clock.now = start + 79.2
    assert refusal(registry, key).retry_after == 1
    clock.now = start + 80
    registry.admit(key, "gpt-4o").release()


def test_rpm_never_admits_more_than_rpm_in_any_minute(registry: KeyRegistry, clock: Clock) -> None:
    key, _ = registry.create("alice", rpm=7)
    start = clock.now
    admitted: list[float] = []
    for step in range(600 * 4):  # a client retrying every quarter second for ten minutes
        clock.now = start + step * 0.25
        refused: KeyRefusal | None = None
        try:
            registry.admit(key, "gpt-4o").release()
        except KeyRefusal as exc:
            refused = exc
        if refused is None:
            admitted.append(clock.now)
        else:
            assert refused.retry_after is not None and refused.retry_after >= 1
    assert len(admitted) == 7 * 10
    for index, at in enumerate(admitted):
        assert sum(1 for other in admitted[index:] if other < at + 60) <= 7


def test_retry_after_is_when_a_slot_frees(registry: KeyRegistry, clock: Clock) -> None:
    key, _ = registry.create("alice", rpm=2)
    start = clock.now
    registry.admit(key, "gpt-4o").release()
    clock.now = start + 12.3
    registry.admit(key, "gpt-4o").release()
    clock.now = start + 30
    wait = refusal(registry, key).retry_after
    assert wait == 30
    clock.now += wait - 0.001
    refusal(registry, key)
    clock.now += 0.001
    registry.admit(key, "gpt-4o").release()


def test_a_refused_request_counts_nothing(registry: KeyRegistry, clock: Clock, wall: Clock) -> None:
    key, _ = registry.create("alice", rpm=1)
    registry.admit(key, "gpt-4o").release()
    wall.now += 5
    for _ in range(10):
        refusal(registry, key)
    assert key.usage.requests == 1
    assert key.last_used == WALL
    assert len(key.window) == 1
    clock.now += 60
    registry.admit(key, "gpt-4o").release()


def test_one_keys_rpm_leaves_another_alone(registry: KeyRegistry) -> None:
    limited, _ = registry.create("limited", rpm=3)
    other, _ = registry.create("other", rpm=3)
    free, _ = registry.create("free")
    for _ in range(3):
        registry.admit(limited, "gpt-4o").release()
    refusal(registry, limited)
    for _ in range(3):
        registry.admit(other, "gpt-4o").release()
    for _ in range(100):
        registry.admit(free, "gpt-4o").release()


def test_lowering_rpm_applies_to_requests_already_counted(registry: KeyRegistry, clock: Clock) -> None:
    key, _ = registry.create("alice", rpm=10)
    start = clock.now
    for offset in (0, 10, 20, 30):
        clock.now = start + offset
        registry.admit(key, "gpt-4o").release()
    registry.patch(key.id, rpm=2)
    clock.now = start + 40
    assert refusal(registry, key).retry_after == 40  # 0, 10 and 20 must leave: 20 leaves at 80
    registry.patch(key.id, rpm=None)
    registry.admit(key, "gpt-4o").release()
    registry.patch(key.id, rpm=1)  # the window starts afresh when a limit is set again
    registry.admit(key, "gpt-4o").release()
    refusal(registry, key)


# --- admit: streams -----------------------------------------------------------------------------------
def test_max_streams_counts_requests_in_flight(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice", max_streams=2)
    first = registry.admit(key, "gpt-4o")
    second = registry.admit(key, "gpt-4o")
    assert key.in_flight == 2
    refused = refusal(registry, key)
    assert (refused.status, refused.kind, refused.retry_after) == (429, "key_streams_exhausted", 1)
    assert "alice" in refused.message
    first.release()
    first.release()  # idempotent: frees one slot, not two
    assert key.in_flight == 1
    third = registry.admit(key, "gpt-4o")
    refusal(registry, key)
    second.release()
    third.release()
    assert key.in_flight == 0


def test_an_admission_releases_on_leaving_a_with_block(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice", max_streams=1)
    with registry.admit(key, "gpt-4o") as admission:
        assert isinstance(admission, Admission)
        assert key.in_flight == 1
        refusal(registry, key)
    assert admission.released
    assert key.in_flight == 0
    with pytest.raises(RuntimeError), registry.admit(key, "gpt-4o"):
        raise RuntimeError("upstream failed")
    assert key.in_flight == 0


# --- admit: models, expiry, disable, order -----------------------------------------------------------
def test_a_model_outside_the_allow_list_is_refused(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice", models=["gpt-4o", "o3"])
    registry.admit(key, "gpt-4o").release()
    registry.admit(key, "o3").release()
    refused = refusal(registry, key, "claude-opus")
    assert (refused.status, refused.kind, refused.retry_after) == (403, "model_not_allowed", None)
    assert "'claude-opus'" in refused.message
    assert "gpt-4o, o3" in refused.message and "alice" in refused.message
    assert key.usage.requests == 2


def test_no_allow_list_allows_every_model(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice")
    for model in ("gpt-4o", "o3", "anything"):
        registry.admit(key, model).release()


def test_expiry_follows_the_wall_clock(registry: KeyRegistry, clock: Clock, wall: Clock) -> None:
    key, secret = registry.create("alice", expires_at=WALL + 100)
    registry.admit(key, "gpt-4o").release()
    wall.now = WALL + 99.9
    assert not key.expired(wall.now)
    registry.admit(key, "gpt-4o").release()
    clock.now += 10_000  # the monotonic clock does not expire keys
    wall.now = WALL + 100
    assert key.expired(wall.now)
    refused = refusal(registry, key)
    assert (refused.status, refused.kind, refused.retry_after) == (401, "key_expired", None)
    assert "alice" in refused.message and "2025-06-15T15:08:20Z" in refused.message
    assert secret not in refused.message
    assert registry.authenticate(secret) is key  # authenticate leaves expiry to admit


def test_a_disabled_key_is_refused_until_enabled(registry: KeyRegistry, wall: Clock) -> None:
    key, secret = registry.create("alice")
    registry.patch(key.id, disabled=True)
    assert registry.authenticate(secret) is key
    refused = refusal(registry, key)
    assert (refused.status, refused.kind) == (401, "key_revoked")
    assert "alice" in refused.message and "disabled" in refused.message
    assert secret not in refused.message
    registry.patch(key.id, disabled=False)
    registry.admit(key, "gpt-4o").release()


def test_checks_run_in_order(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create("alice", rpm=1, max_streams=1, models=["gpt-4o"], expires_at=WALL + 10)
    held = registry.admit(key, "gpt-4o")  # the minute's request, still in flight
    assert refusal(registry, key).kind == "key_rate_limited"  # before streams
    assert refusal(registry, key, "o3").kind == "model_not_allowed"  # before rpm
    wall.now += 10
    assert refusal(registry, key, "o3").kind == "key_expired"  # before the model
    registry.patch(key.id, disabled=True, expires_at=None)
    wall.now += 1
    assert refusal(registry, key, "o3").kind == "key_revoked"
    held.release()


# --- usage -------------------------------------------------------------------------------------------
def test_usage_counts_requests_tokens_and_errors(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create("alice")
    changes: list[int] = []
    usage: list[int] = []
    registry.on_change = lambda: changes.append(1)
    registry.on_usage = lambda: usage.append(1)
    wall.now += 7
    admission = registry.admit(key, "gpt-4o")
    assert key.usage.requests == 1
    assert key.last_used == WALL + 7
    admission.record(120, 30)
    admission.release()
    admission.record(0, 5)  # a stream's tail may be counted after the slot is given back
    second = registry.admit(key, "gpt-4o")
    second.error("upstream_5xx")
    second.error("upstream_5xx")
    second.error("timeout")
    second.release()
    assert key.usage == KeyUsage(
        requests=2, prompt_tokens=120, completion_tokens=35, errors={"upstream_5xx": 2, "timeout": 1}
    )
    assert len(usage) == 2 + 2 + 3  # each admit, record and error
    assert changes == []
    assert key.changed_at == WALL  # usage is not a change of settings
    record = key.to_record()
    assert record["usage"] == {
        "requests": 2,
        "prompt_tokens": 120,
        "completion_tokens": 35,
        "errors": {"upstream_5xx": 2, "timeout": 1},
    }
    assert record["last_used"] == WALL + 7


# --- records, snapshot and adopt -----------------------------------------------------------------------
RECORD_FIELDS = {
    "id",
    "name",
    "hash",
    "prefix",
    "rpm",
    "max_streams",
    "models",
    "expires_at",
    "disabled",
    "created_at",
    "changed_at",
    "last_used",
    "usage",
    "source",
}


def test_a_record_is_json_and_round_trips(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice", rpm=3, max_streams=2, models=["gpt-4o"], expires_at=WALL + 60)
    with registry.admit(key, "gpt-4o") as admission:
        admission.record(1, 2)
        admission.error("cut_off")
        record = key.to_record()
    assert set(record) == RECORD_FIELDS
    assert json.loads(json.dumps(record)) == record
    copy_ = ClientKey.from_record(json.loads(json.dumps(record)))
    assert copy_ == key
    assert copy_.in_flight == 0 and not copy_.window  # runtime state is not in a record
    public = key.to_public()
    assert "hash" not in public
    assert public["in_flight"] == 0


def test_from_record_defaults_the_optional_fields() -> None:
    record = {"id": "key_a", "name": "alice", "hash": "ab" * 32, "prefix": "sk-AbCd…wxyz"}
    key = ClientKey.from_record(record)
    assert (key.rpm, key.max_streams, key.models, key.expires_at, key.disabled, key.source) == (
        None,
        None,
        None,
        None,
        False,
        "admin",
    )
    assert key.usage == KeyUsage()


GOOD: dict[str, Any] = {
    "id": "key_abcdefabcdef",
    "name": "alice",
    "hash": hash_key("sk-the-secret-of-alice"),
    "prefix": "sk-the-…lice",
    "rpm": 3,
    "max_streams": None,
    "models": ["gpt-4o"],
    "expires_at": None,
    "disabled": False,
    "created_at": WALL,
    "changed_at": WALL,
    "last_used": None,
    "usage": {"requests": 1, "prompt_tokens": 2, "completion_tokens": 3, "errors": {}},
    "source": "admin",
}


@pytest.mark.parametrize(
    ("changes", "word"),
    [
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"name": ""}, "name"),
        ({"name": ["alice"]}, "name"),
        ({"hash": "sk-the-secret-of-alice"}, "hash"),
        ({"hash": "AB" * 32}, "hash"),
        ({"prefix": None}, "prefix"),
        ({"rpm": 0}, "rpm"),
        ({"rpm": "3"}, "rpm"),
        ({"max_streams": -2}, "max_streams"),
        ({"models": "gpt-4o"}, "models"),
        ({"models": [None]}, "models"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"disabled": 1}, "disabled"),
        ({"created_at": "yesterday"}, "created_at"),
        ({"changed_at": True}, "changed_at"),
        ({"last_used": math.inf}, "last_used"),
        ({"usage": []}, "usage"),
        ({"usage": {"requests": -1}}, "usage.requests"),
        ({"usage": {"prompt_tokens": 1.5}}, "usage.prompt_tokens"),
        ({"usage": {"errors": {"5xx": "two"}}}, "usage.errors"),
        ({"source": "root"}, "source"),
    ],
)
def test_from_record_refuses_a_bad_field(changes: dict[str, Any], word: str) -> None:
    record = {**copy.deepcopy(GOOD), **changes}
    with pytest.raises(ValueError, match=re.escape(word)) as caught:
        ClientKey.from_record(record)
    message = str(caught.value)
    assert "sk-the-secret-of-alice" not in message
    assert GOOD["hash"] not in message
    if isinstance(record["id"], str) and record["id"]:
        assert record["id"] in message


def test_from_record_refuses_what_is_not_an_object() -> None:
    with pytest.raises(ValueError, match="object"):
        ClientKey.from_record(["key_a"])


def test_snapshot_and_adopt_round_trip(registry: KeyRegistry, clock: Clock, wall: Clock) -> None:
    alice, alice_secret = registry.create("alice", rpm=3, models=["gpt-4o"])
    bob, bob_secret = registry.create("bob", max_streams=1, expires_at=WALL + 3600)
    gone, gone_secret = registry.create("gone")
    registry.add_env(ENV_SECRETS[:1])
    with registry.admit(alice, "gpt-4o") as admission:
        admission.record(10, 20)
    registry.delete(gone.id)
    stored = json.loads(json.dumps({"keys": registry.snapshot(), "removed": registry.removed}))
    assert [r["name"] for r in stored["keys"]] == ["alice", "bob"]  # never the env keys

    later = KeyRegistry(clock=Clock(5.0), wall_clock=wall)
    changes: list[int] = []
    later.on_change = lambda: changes.append(1)
    later.adopt(stored["keys"], stored["removed"])
    assert changes == []
    assert [k.to_record() for k in later.list()] == [alice.to_record(), bob.to_record()]
    assert later.removed == {gone.id: WALL}
    assert later.authenticate(alice_secret) is later.get(alice.id)
    assert later.authenticate(bob_secret) is later.get(bob.id)
    assert later.authenticate(gone_secret) is None
    assert later.snapshot() == registry.snapshot()


def test_adopt_the_newer_change_wins(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create("alice", rpm=3)
    held = registry.admit(key, "gpt-4o")
    newer = {**key.to_record(), "rpm": 10, "name": "alice (ops)", "changed_at": WALL + 5}
    older = {**key.to_record(), "rpm": 1, "disabled": True, "changed_at": WALL - 5}
    registry.adopt([older], {})
    assert (key.rpm, key.disabled) == (3, False)
    registry.adopt([newer], {})
    assert registry.get(key.id) is key  # the same object: its requests in flight stay counted
    assert (key.rpm, key.name, key.changed_at) == (10, "alice (ops)", WALL + 5)
    assert key.in_flight == 1 and len(key.window) == 1
    held.release()
    assert key.in_flight == 0


def test_adopt_usage_only_grows(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create("alice")
    for _ in range(3):
        with registry.admit(key, "gpt-4o") as admission:
            admission.error("timeout")
    record = key.to_record()
    record["usage"] = {"requests": 1, "prompt_tokens": 50, "completion_tokens": 0, "errors": {"5xx": 4}}
    record["last_used"] = WALL - 100
    registry.adopt([record], {})
    assert key.usage == KeyUsage(3, 50, 0, {"timeout": 3, "5xx": 4})
    assert key.last_used == WALL
    record["last_used"] = WALL + 100
    registry.adopt([record], {})
    assert key.last_used == WALL + 100


def test_adopt_tombstones_win_over_older_records(registry: KeyRegistry, wall: Clock) -> None:
    key, secret = registry.create("alice")
    record = key.to_record()
    other = KeyRegistry(wall_clock=wall)
    other.adopt([record], {})
    wall.now += 1
    other.delete(key.id)
    registry.adopt(other.snapshot(), other.removed)
    assert registry.get(key.id) is None
    assert registry.authenticate(secret) is None
    assert registry.removed == {key.id: WALL + 1}
    registry.adopt([record], {})  # a stale record does not bring the key back: our tombstone counts
    assert registry.get(key.id) is None
    revived = {**record, "changed_at": WALL + 2}  # nor does a later change: ids are never reused
    registry.adopt([revived], {key.id: WALL + 1})
    assert registry.authenticate(secret) is None


def test_a_revocation_wins_over_a_later_change_elsewhere(registry: KeyRegistry, wall: Clock) -> None:
    # One process revokes the key while another, not having read the file yet, changes its limit:
    # the key must stay revoked.
    key, secret = registry.create("alice")
    wall.now += 10
    registry.patch(key.id, rpm=4)
    registry.adopt([], {key.id: WALL + 5})
    assert registry.get(key.id) is None
    assert registry.authenticate(secret) is None
    assert registry.removed == {key.id: WALL + 5}


def test_adopt_checks_every_record_before_taking_any(registry: KeyRegistry) -> None:
    good = {**GOOD}
    bad = {**GOOD, "id": "key_bbbbbbbbbbbb", "rpm": -1}
    with pytest.raises(ValueError, match="key_bbbbbbbbbbbb"):
        registry.adopt([good, bad], {})
    assert len(registry) == 0
    with pytest.raises(ValueError, match="removed"):
        registry.adopt([good], {"key_x": "yesterday"})  # type: ignore[dict-item]
    assert len(registry) == 0


def test_adopt_ignores_env_keys(registry: KeyRegistry) -> None:
    [env] = registry.add_env(ENV_SECRETS[:1])
    stored_env = {**env.to_record(), "rpm": 1, "changed_at": WALL + 100}
    registry.adopt([stored_env], {env.id: WALL + 100})
    assert registry.get(env.id) is env
    assert env.rpm is None
    assert registry.removed == {}
    fresh = KeyRegistry()
    fresh.adopt([{**GOOD, "id": "env_aaaaaaaaaaaa", "source": "env"}], {})
    assert len(fresh) == 0


# --- env keys ----------------------------------------------------------------------------------------
def test_env_keys_are_fixed_and_unlimited(registry: KeyRegistry) -> None:
    changes: list[int] = []
    registry.on_change = lambda: changes.append(1)
    added = registry.add_env([*ENV_SECRETS, ENV_SECRETS[0], ""])
    assert [k.name for k in added] == ["env-1", "env-2"]
    for key, secret in zip(added, ENV_SECRETS, strict=True):
        assert key.id.startswith("env_") and hash_key(secret)[:8] not in key.id
        assert key.source == "env"
        assert (key.rpm, key.max_streams, key.models, key.expires_at) == (None, None, None, None)
        assert registry.authenticate(secret) is key
        assert secret not in repr(key)
        assert redact(f"Bearer {secret}") == "Bearer [redacted]"
    assert registry.snapshot() == []
    assert changes == []
    for _ in range(50):
        registry.admit(added[0], "anything")
    with pytest.raises(KeyReadOnlyError, match="env-1"):
        registry.patch(added[0].id, rpm=3)
    with pytest.raises(KeyReadOnlyError, match="env-2"):
        registry.delete(added[1].id)
    assert registry.get(added[1].id) is added[1]
    assert registry.add_env(ENV_SECRETS) == []  # already there


def test_env_names_cannot_be_taken_by_admin_keys(registry: KeyRegistry) -> None:
    registry.add_env(ENV_SECRETS)
    key, _ = registry.create("alice")
    with pytest.raises(KeyFieldError):
        registry.patch(key.id, name="env-2")
    with pytest.raises(KeyFieldError):
        registry.create("env-7")


def test_list_keeps_the_order_of_creation(registry: KeyRegistry) -> None:
    names = ["c", "a", "b"]
    for name in names:
        registry.create(name)
    assert [k.name for k in registry.list()] == names


# --- checks before the model is known --------------------------------------------------------------
def test_check_active_refuses_disabled_and_expired_keys(registry: KeyRegistry, wall: Clock) -> None:
    key, _ = registry.create("alice", rpm=1, expires_at=WALL + 10)
    registry.check_active(key)
    registry.admit(key, "gpt-4o").release()
    registry.check_active(key)  # limits are admit's business
    wall.now += 10
    with pytest.raises(KeyRefusal) as caught:
        registry.check_active(key)
    assert (caught.value.status, caught.value.kind) == (401, "key_expired")
    registry.patch(key.id, expires_at=None, disabled=True)
    with pytest.raises(KeyRefusal) as caught:
        registry.check_active(key)
    assert (caught.value.status, caught.value.kind) == (401, "key_revoked")


def test_count_error_counts_a_request_never_admitted(registry: KeyRegistry) -> None:
    key, _ = registry.create("alice")
    usage: list[int] = []
    changes: list[int] = []
    registry.on_usage = lambda: usage.append(1)
    registry.on_change = lambda: changes.append(1)
    registry.count_error(key, "key_revoked")
    registry.count_error(key, "key_revoked")
    assert key.usage == KeyUsage(errors={"key_revoked": 2})
    assert (len(usage), changes) == (2, [])


def test_key_refusal_is_importable_from_the_registry_module() -> None:
    from app.keys import registry as module

    assert module.KeyRefusal is KeyRefusal
