"""The credential pool end to end: health, cool-downs, fail-over, round-robin, rate limits, the
admin API, and a pool that survives a restart — with the emulator counting what reached it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, gateway_settings

ADMIN_KEY = "sk-admin-key-for-tests-5555555555"


def cookie(tag: str, **emu: Any) -> str:
    """A unique fake cookie; `emu` options make the emulator treat this account that way."""
    extra = "".join(f"; emu_{k}={v}" for k, v in emu.items())
    return f"__Secure-next-auth.session-token={tag}-{uuid.uuid4().hex}{extra}"


def ask(gateway: Gateway, text: str = "hello", **kwargs: Any) -> Any:
    return gateway.openai().chat.completions.create(
        model="gptomni", messages=[{"role": "user", "content": text}], **kwargs
    )


def count(emulator: Emulator, cookie_value: str) -> int:
    return int(emulator.stats()["by_cookie"].get(cookie_value, 0))


def admin(
    gateway: Gateway, method: str, path: str, key: str | None = ADMIN_KEY, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{gateway.url}/admin{path}", headers=headers, timeout=30, **kwargs)


def listing(gateway: Gateway) -> dict[str, dict[str, Any]]:
    response = admin(gateway, "GET", "/credentials")
    assert response.status_code == 200, response.text
    return {c["id"]: c for c in response.json()["data"]}


def state_of(gateway: Gateway, cookie_value: str) -> dict[str, Any]:
    (entry,) = [
        c
        for c in listing(gateway).values()
        if c["preview"].endswith(f"{cookie_value[-4:]} ({len(cookie_value)} chars)")
    ]
    return entry


def test_cloudflare_blocked_cookie_cools_down_and_comes_back(start_gateway: Any, emulator: Emulator) -> None:
    blocked, good = cookie("cf", cf=1), cookie("good")
    gw = start_gateway(
        gateway_settings(emulator, [blocked, good], CLOUDFLARE_COOLDOWN="1.5", ADMIN_KEY=ADMIN_KEY)
    )
    for _ in range(4):
        assert ask(gw).choices[0].message.content
    assert count(emulator, blocked) == 1  # tried once, then resting
    assert state_of(gw, blocked)["state"] == "cooling"
    time.sleep(1.6)
    assert state_of(gw, blocked)["state"] == "active"  # back by itself
    for _ in range(2):
        ask(gw)
    assert count(emulator, blocked) == 2  # and tried again


def test_429_is_honoured_for_its_retry_after(start_gateway: Any, emulator: Emulator) -> None:
    limited, good = cookie("limited", status=429, retry_after=2), cookie("good")
    gw = start_gateway(
        gateway_settings(emulator, [limited, good], ADMIN_KEY=ADMIN_KEY, RATE_LIMIT_COOLDOWN="60")
    )
    asked_at = time.time()
    ask(gw)
    entry = state_of(gw, limited)
    assert entry["state"] == "cooling"
    until = time.mktime(time.strptime(entry["cooling_until"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert 0.5 <= until - asked_at <= 3.5  # the upstream's 2 s, not the 60 s default
    for _ in range(3):
        ask(gw)
    assert count(emulator, limited) == 1
    time.sleep(2.2)
    for _ in range(2):
        ask(gw)
    assert count(emulator, limited) == 2


def test_round_robin_spreads_30_requests_evenly(start_gateway: Any, emulator: Emulator) -> None:
    cookies = [cookie(f"rr{i}") for i in range(3)]
    gw = start_gateway(gateway_settings(emulator, cookies))
    errors: list[BaseException] = []

    def one() -> None:
        try:
            ask(gw)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(30)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    counts = [count(emulator, c) for c in cookies]
    assert sum(counts) == 30
    assert all(abs(c - 10) <= 1 for c in counts), counts


def test_rate_limit_holds_under_50_concurrent_requests(start_gateway: Any, emulator: Emulator) -> None:
    cookies = [cookie("rl-a"), cookie("rl-b")]
    gw = start_gateway(
        gateway_settings(emulator, cookies, CREDENTIAL_RATE_LIMIT="5/60", RATE_LIMIT_WAIT="0.5")
    )
    statuses: list[int] = []
    retry_afters: list[str] = []
    lock = threading.Lock()

    def one() -> None:
        response = httpx.post(
            f"{gw.url}/v1/chat/completions",
            json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
            timeout=30,
        )
        with lock:
            statuses.append(response.status_code)
            if response.status_code == 429:
                assert response.json()["error"]["type"] == "rate_limit_error"
                retry_afters.append(response.headers["retry-after"])

    threads = [threading.Thread(target=one) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    received = [count(emulator, c) for c in cookies]
    assert received == [5, 5]  # the upstream never saw more than the limit
    assert statuses.count(200) == 10
    assert statuses.count(429) == 40
    assert all(int(r) >= 1 for r in retry_afters)


def test_a_rate_limited_request_waits_for_capacity(start_gateway: Any, emulator: Emulator) -> None:
    only = cookie("rl-wait")
    gw = start_gateway(gateway_settings(emulator, [only], CREDENTIAL_RATE_LIMIT="2/1", RATE_LIMIT_WAIT="5"))
    started = time.monotonic()
    for _ in range(4):
        assert ask(gw).choices[0].message.content  # the 3rd and 4th wait for the bucket, no 429
    assert time.monotonic() - started >= 0.4
    assert count(emulator, only) == 4


def test_max_streams_per_credential_caps_concurrency(start_gateway: Any, emulator: Emulator) -> None:
    only = cookie("cap")
    gw = start_gateway(
        gateway_settings(emulator, [only], MAX_STREAMS_PER_CREDENTIAL="1", RATE_LIMIT_WAIT="10")
    )
    emulator.reset()
    results: list[str] = []

    def one() -> None:
        completion = ask(gw, "[[emu duration=0.6]]\n<<<EMU_REPLY\nslow answer here\nEMU_REPLY>>>")
        results.append(completion.choices[0].message.content)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert results == ["slow answer here"] * 3
    assert emulator.stats()["max_in_flight"] == 1


def test_expired_cookie_is_probed_back_once_refreshed(start_gateway: Any, emulator: Emulator) -> None:
    tag = f"refreshable-{uuid.uuid4().hex}"
    refreshable, good = cookie(tag), cookie("good")
    emulator.fault(tag, status=401)
    gw = start_gateway(
        gateway_settings(emulator, [refreshable, good], ADMIN_KEY=ADMIN_KEY, PROBE_INTERVAL="0.5")
    )
    ask(gw)
    ask(gw)
    assert state_of(gw, refreshable)["state"] == "invalid"
    probed = count(emulator, refreshable)
    time.sleep(1.2)
    assert count(emulator, refreshable) > probed  # the background probe re-checks it
    assert state_of(gw, refreshable)["state"] == "invalid"
    emulator.fault(tag)  # the account signed in again
    deadline = time.monotonic() + 5
    while state_of(gw, refreshable)["state"] != "active":
        assert time.monotonic() < deadline, "the refreshed cookie was not noticed"
        time.sleep(0.1)


def test_admin_probe_and_reset(start_gateway: Any, emulator: Emulator) -> None:
    tag = f"admin-probe-{uuid.uuid4().hex}"
    flaky = cookie(tag)
    emulator.fault(tag, status=403)
    gw = start_gateway(gateway_settings(emulator, [flaky], ADMIN_KEY=ADMIN_KEY))
    with pytest.raises(openai.APIStatusError):
        ask(gw)
    (entry,) = listing(gw).values()
    assert entry["state"] == "invalid" and entry["failures"] == {"auth": 1}
    assert "403" in entry["last_error"]
    probe = admin(gw, "POST", f"/credentials/{entry['id']}/probe").json()
    assert probe["ok"] is False and probe["credential"]["state"] == "invalid"
    emulator.fault(tag)
    probe = admin(gw, "POST", f"/credentials/{entry['id']}/probe").json()
    assert probe["ok"] is True and probe["credential"]["state"] == "active"
    emulator.fault(tag, status=401)
    with pytest.raises(openai.APIStatusError):
        ask(gw)
    reset = admin(gw, "POST", f"/credentials/{entry['id']}/reset").json()
    assert reset["state"] == "active"
    assert admin(gw, "POST", "/credentials/nope/reset").status_code == 404
    emulator.fault(tag)


def test_admin_add_remove_list_survive_a_restart(
    start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    store = tmp_path / "data" / "credentials.json"
    first, second, expired = cookie("first"), cookie("second"), cookie("expired", status=401)
    settings = gateway_settings(emulator, [first], ADMIN_KEY=ADMIN_KEY, CREDENTIALS_FILE=str(store))
    gw = start_gateway(settings, name="persist-1")
    added = admin(gw, "POST", "/credentials", json={"cookies": [second, expired, second]})
    assert added.status_code == 201
    body = added.json()
    assert len(body["added"]) == 2 and len(body["existing"]) == 1
    assert admin(gw, "POST", "/credentials", json={"cookie": second}).status_code == 200  # already there
    first_id = next(
        i for i, c in listing(gw).items() if c["preview"].endswith(first[-4:] + f" ({len(first)} chars)")
    )
    assert admin(gw, "DELETE", f"/credentials/{first_id}").status_code == 200
    assert admin(gw, "DELETE", f"/credentials/{first_id}").status_code == 404
    for _ in range(3):  # the expired one is found out and marked invalid
        ask(gw)
    before = {i: c["state"] for i, c in listing(gw).items()}
    assert sorted(before.values()) == ["active", "invalid"]
    for value in (first, second, expired):
        assert value not in json.dumps(listing(gw))  # ids and previews only
    assert store.stat().st_mode & 0o777 == 0o600
    assert gw.stop() is not None

    gw2 = start_gateway(settings, name="persist-2")  # GPTOMNI_CREDENTIALS still lists `first`
    after = {i: c["state"] for i, c in listing(gw2).items()}
    assert after == before  # the file wins: `first` stays removed, states as they were
    assert ask(gw2).choices[0].message.content


def test_corrupt_credentials_file_is_a_clear_start_up_error(emulator: Emulator, tmp_path: Path) -> None:
    from tests.conftest import base_env
    from tests.deploy.processes import refused_starts

    store = tmp_path / "credentials.json"
    store.write_text('{"credentials": [{"cookie": "session=abc", "state": "act')  # cut off mid-write
    env = base_env() | gateway_settings(emulator, [], CREDENTIALS_FILE=str(store))
    for code, output, _ in refused_starts(env, tmp_path, timeout=30):
        assert code == 2
        assert str(store) in output and "not valid JSON" in output
        assert "Traceback" not in output
        assert "session=abc" not in output
    assert store.read_text().endswith('"act')  # left as it was, for the user to look at


def test_admin_routes_need_the_admin_key(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [cookie("x")], ADMIN_KEY=ADMIN_KEY))
    routes = [
        ("GET", "/credentials", {}),
        ("POST", "/credentials", {"json": {"cookie": "a=b"}}),
        ("DELETE", "/credentials/abc", {}),
        ("POST", "/credentials/abc/probe", {}),
        ("POST", "/credentials/abc/reset", {}),
    ]
    for method, path, kwargs in routes:
        for key in (None, MASTER_KEY, "sk-wrong"):
            response = admin(gw, method, path, key=key, **kwargs)
            assert response.status_code == 401, (method, path, key is None)
            assert response.json()["error"]["code"] == "invalid_admin_key"
    assert len(listing(gw)) == 1  # nothing was added by the refused POST


def test_admin_is_off_without_an_admin_key(start_gateway: Any, emulator: Emulator) -> None:
    gw = start_gateway(gateway_settings(emulator, [cookie("x")]))
    response = admin(gw, "GET", "/credentials", key=MASTER_KEY)
    assert response.status_code == 404
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_ready_reports_503_until_a_credential_is_active(start_gateway: Any, emulator: Emulator) -> None:
    expired = cookie("ready-expired", status=401)
    gw = start_gateway(gateway_settings(emulator, [expired], ADMIN_KEY=ADMIN_KEY))
    ready = httpx.get(f"{gw.url}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["credentials"]["active"] == 1
    with pytest.raises(openai.APIStatusError):
        ask(gw)
    ready = httpx.get(f"{gw.url}/ready", timeout=5)
    assert ready.status_code == 503
    assert ready.json() == {"status": "not_ready", "credentials": {"active": 0, "cooling": 0, "invalid": 1}}
    admin(gw, "POST", "/credentials", json={"cookie": cookie("ready-good")})
    assert httpx.get(f"{gw.url}/ready", timeout=5).status_code == 200  # at once


def test_logs_of_a_full_run_hold_no_cookie(start_gateway: Any, emulator: Emulator, workdir: Path) -> None:
    """Every failure path that logs, then every log this session wrote, searched for every cookie."""
    bad = [cookie("log-cf", cf=1), cookie("log-exp", status=401), cookie("log-429", status=429)]
    good = cookie("log-good")
    gw = start_gateway(
        gateway_settings(
            emulator, [*bad, good], ADMIN_KEY=ADMIN_KEY, LOG_LEVEL="debug", UPSTREAM_MAX_ATTEMPTS="4"
        )
    )
    for _ in range(3):
        ask(gw)
    admin(gw, "POST", "/credentials", json={"cookie": cookie("log-added")})
    for entry in listing(gw).values():
        admin(gw, "POST", f"/credentials/{entry['id']}/probe")
    gw.stop()
    logs = {path: path.read_text(errors="replace") for path in workdir.rglob("*.log")}
    assert any("failed" in text for text in logs.values())  # the failures were logged
    for path, text in logs.items():
        for value in (*bad, good, MASTER_KEY, ADMIN_KEY):
            assert value not in text, f"a secret is in {path.name}"
        assert "session-token=log-" not in text, f"a cookie is in {path.name}"


def test_a_saturated_cloudscraper_pool_is_a_clean_503_not_a_credential_failure(
    start_gateway: Any, emulator: Emulator
) -> None:
    only = cookie("busy")
    gw = start_gateway(
        gateway_settings(
            emulator,
            [only],
            UPSTREAM_TRANSPORT="cloudscraper",
            CLOUDSCRAPER_THREADS="1",
            RATE_LIMIT_WAIT="0.3",
            ADMIN_KEY=ADMIN_KEY,
        )
    )
    slow = threading.Thread(
        target=ask, args=(gw, "[[emu duration=2 chunk_size=2]]\n<<<EMU_REPLY\nslow one\nEMU_REPLY>>>")
    )
    slow.start()
    time.sleep(0.5)  # the one thread is now busy reading the slow answer
    response = httpx.post(
        f"{gw.url}/v1/chat/completions",
        json={"model": "gptomni", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    )
    slow.join(10)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "transport_saturated"
    assert response.headers["retry-after"] == "1"
    entry = state_of(gw, only)
    assert entry["state"] == "active" and entry["failures"] == {}  # not held against the account
    assert ask(gw).choices[0].message.content  # and with the thread free again, it answers
