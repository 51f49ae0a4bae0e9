"""The state layer's pure parts: REDIS_URL checks and masking, readiness words, usage arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.api.health_routes import readiness
from app.config import ConfigError, load_settings
from app.keys.registry import KeyUsage
from app.state.counters import minus
from app.state.link import redis_display, redis_password, validate_redis_url
from app.state.usage import from_fields, plus, to_fields


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://:pw@redis:6379/0",
        "rediss://user:pw@cache.example:6380/3",
        "redis://[::1]:6379",
    ],
)
def test_valid_redis_urls(url: str) -> None:
    assert validate_redis_url(url) == url


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://redis:6379", "redis:// or rediss://"),
        ("redis://", "no host"),
        ("redis://redis:99999", "port"),
        ("redis://redis:6379/zero", "database number"),
        ("redis://redis:6379/0?password=hunter2", "query string"),  # redis-py would read it, unmasked
    ],
)
def test_invalid_redis_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        validate_redis_url(url)


def test_a_bad_redis_url_is_a_config_error_that_does_not_quote_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(Path(__file__).parent)  # no .env here
    monkeypatch.setenv("AUTH_DISABLED", "true")
    monkeypatch.setenv("REDIS_URL", "http://:s3cret-pass@host")
    with pytest.raises(ConfigError) as failed:
        load_settings()
    assert "REDIS_URL" in str(failed.value)
    assert "s3cret" not in str(failed.value)


def test_the_password_is_masked_and_known() -> None:
    url = "rediss://app:p%40ss-word@cache.example:6380/2"
    assert redis_display(url) == "rediss://app:***@cache.example:6380/2"
    assert redis_password(url) == "p@ss-word"
    assert redis_display("redis://cache:6379/0") == "redis://cache:6379/0"
    assert redis_display("redis://:pw@[::1]:6379") == "redis://:***@[::1]:6379"


def test_readiness_words() -> None:
    assert readiness(True, False) == "ready"
    assert readiness(True, True) == "degraded"
    assert readiness(False, True) == "not_ready"
    assert readiness(False, False) == "not_ready"


def test_usage_fields_round_trip_and_arithmetic() -> None:
    usage = KeyUsage(requests=3, prompt_tokens=10, completion_tokens=4, errors={"upstream_timeout": 2})
    fields = to_fields(usage)
    assert fields == {"requests": 3, "prompt_tokens": 10, "completion_tokens": 4, "error:upstream_timeout": 2}
    assert from_fields({k.encode(): str(v).encode() for k, v in fields.items()}) == usage
    assert minus(fields, {"requests": 1, "prompt_tokens": 10}) == {
        "requests": 2,
        "completion_tokens": 4,
        "error:upstream_timeout": 2,
    }
    assert minus({"requests": 1}, {"requests": 5}) == {}  # counters never go back
    assert plus({"requests": 2}, {"requests": 1, "error:x": 1}) == KeyUsage(requests=3, errors={"x": 1})
