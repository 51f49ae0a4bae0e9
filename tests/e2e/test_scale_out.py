"""Scale-out on Redis end to end: three app processes behind the real nginx (the project's nginx.conf)
sharing one real redis-server (tests/redis_server.py), with the emulator counting what reached it.

One pool and one set of limits for all: an account's rate limit holds across the replicas; a cookie
added, a key created, a credential removed, invalidated or reset on one replica is seen by the
others within 100 ms; a stored response is read and continued on another replica; a replica killed
with `kill -9` mid-stream frees its stream slot within the lease;
Redis stopped and restarted under load costs no request a 5xx, and `/ready` says `degraded`, then
`ready`. Also: an unusable REDIS_URL stops the start with a clear error that never shows the
password, and a CREDENTIALS_FILE is imported once and comes back whole from `/admin/export`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MASTER_KEY, Emulator, Gateway, base_env, free_port, gateway_settings
from tests.deploy.processes import Nginx, refused_starts
from tests.redis_server import RedisServer

ADMIN_KEY = "sk-admin-scale-out-000000000000"
PROPAGATION = 0.1  # seconds: a change on one replica is seen by every other within this
LEASE = 2.0  # STREAM_LEASE_SECONDS where a lease is under test
CHAT_PATH = "/v1/chat/completions"


def cookie(tag: str, **emu: Any) -> str:
    """A unique fake cookie; `emu` options make the emulator treat this account that way."""
    extra = "".join(f"; emu_{k}={v}" for k, v in emu.items())
    return f"__Secure-next-auth.session-token={tag}-{uuid.uuid4().hex}{extra}"


def credential_id(cookie_value: str) -> str:
    """The id the gateway shows for a cookie (app/credentials/pool.py `credential_id`)."""
    return hashlib.sha256(cookie_value.encode("utf-8")).hexdigest()[:10]


def count(emulator: Emulator, cookie_value: str) -> int:
    return int(emulator.stats()["by_cookie"].get(cookie_value, 0))


def chat(
    url: str,
    text: str = "hello",
    *,
    key: str = MASTER_KEY,
    request_id: str | None = None,
    client: httpx.Client | None = None,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"}
    if request_id is not None:
        headers["X-Request-ID"] = request_id
    body = {"model": "gptomni", "messages": [{"role": "user", "content": text}]}
    if client is not None:
        return client.post(f"{url}{CHAT_PATH}", json=body, headers=headers, timeout=30)
    return httpx.post(f"{url}{CHAT_PATH}", json=body, headers=headers, timeout=30)


def admin(
    gateway: Gateway, method: str, path: str, *, client: httpx.Client | None = None, **kwargs: Any
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    if client is not None:
        return client.request(method, f"{gateway.url}/admin{path}", headers=headers, timeout=10, **kwargs)
    return httpx.request(method, f"{gateway.url}/admin{path}", headers=headers, timeout=10, **kwargs)


def states(gateway: Gateway, client: httpx.Client | None = None) -> dict[str, str]:
    """{credential id: state} as this replica lists its pool."""
    response = admin(gateway, "GET", "/credentials", client=client)
    assert response.status_code == 200, response.text
    return {c["id"]: c["state"] for c in response.json()["data"]}


def ready(gateway: Gateway) -> httpx.Response:
    return httpx.get(f"{gateway.url}/ready", timeout=5)


def degraded_metric(gateway: Gateway) -> float | None:
    response = httpx.get(
        f"{gateway.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=5
    )
    assert response.status_code == 200, response.text
    text = response.text
    for line in text.splitlines():
        if line.startswith("gptomni2api_state_degraded"):
            return float(line.rsplit(" ", 1)[1])
    return None


def within(seconds: float, check: Callable[[], bool], what: str, *, pause: float = 0.005) -> float:
    """Poll `check` until it holds; when the check that held began, in seconds from the call. The
    check's own round trip is not counted: a check begun within `seconds` that holds is in time."""
    started = time.monotonic()
    while True:
        began = time.monotonic() - started
        if check():
            return began
        if began > seconds:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(pause)


class Cluster:
    """Three replicas (uvicorn `main:app`), each with REDIS_URL, behind one nginx."""

    def __init__(self, workdir: Path, settings: dict[str, str], redis: RedisServer) -> None:
        self.redis = redis
        names = ("replica-a", "replica-b", "replica-c")
        with ThreadPoolExecutor(len(names)) as pool:
            started = [pool.submit(Gateway, workdir, settings, name=name) for name in names]
        self.replicas: list[Gateway] = []
        errors = []
        for future in started:
            try:
                self.replicas.append(future.result())
            except RuntimeError as exc:
                errors.append(str(exc))
        if errors:
            self.stop()
            raise RuntimeError("a replica did not start: " + "\n".join(errors))
        try:
            self.nginx = Nginx(workdir, [f"127.0.0.1:{gw.port}" for gw in self.replicas])
        except BaseException:
            self.stop()
            raise
        self.url = self.nginx.url

    def served(self, request_ids: list[str]) -> list[int]:
        """How many of these requests each replica answered (from its access lines)."""
        deadline = time.monotonic() + 5
        while True:
            found = [
                sum(1 for rid in request_ids if f"request_id={rid} " in gw.log()) for gw in self.replicas
            ]
            if sum(found) >= len(request_ids) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def stop(self) -> None:
        if getattr(self, "nginx", None) is not None:
            self.nginx.stop()
        for gw in self.replicas:
            gw.stop()


@pytest.fixture
def start_cluster(
    emulator: Emulator, workdir: Path, start_redis: Callable[..., RedisServer]
) -> Iterator[Callable[..., Cluster]]:
    """`start_cluster(cookies, **settings)`: a password-protected redis-server and three replicas on
    it behind nginx. At the end: all stopped, and the Redis password is in no replica's log."""
    clusters: list[Cluster] = []

    def start(cookies: list[str], **extra: str) -> Cluster:
        redis = start_redis(password=f"redis-pw-{secrets.token_hex(12)}")
        settings = gateway_settings(
            emulator,
            cookies,
            REDIS_URL=redis.url,
            ADMIN_KEY=ADMIN_KEY,
            TRUSTED_PROXIES="127.0.0.1",
            **extra,
        )
        cluster = Cluster(workdir, settings, redis)
        clusters.append(cluster)
        return cluster

    yield start
    for cluster in clusters:
        cluster.stop()
        assert cluster.redis.password is not None
        for gw in cluster.replicas:
            assert cluster.redis.password not in gw.log_path.read_text(errors="replace"), gw.log_path.name


def run_together(n: int, one: Callable[[int], httpx.Response]) -> list[httpx.Response]:
    """`one(i)` for i in range(n), all at once (a barrier lines the threads up)."""
    barrier = threading.Barrier(n)

    def go(index: int) -> httpx.Response:
        barrier.wait(10)
        return one(index)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(go, range(n)))


# --- one set of limits ---------------------------------------------------------------------------


def test_an_account_limit_of_6_a_minute_holds_across_three_replicas(
    start_cluster: Callable[..., Cluster], emulator: Emulator
) -> None:
    only = cookie("limit")
    cluster = start_cluster([only], CREDENTIAL_RATE_LIMIT="6/60", RATE_LIMIT_WAIT="0")
    ids = [f"limit-{i}-{uuid.uuid4().hex[:8]}" for i in range(18)]
    responses = run_together(len(ids), lambda i: chat(cluster.url, request_id=ids[i]))

    assert count(emulator, only) == 6  # the upstream saw the account's limit, not three times it
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 6 + [429] * 12, statuses
    for refused in (r for r in responses if r.status_code == 429):
        assert refused.json()["error"]["code"] == "rate_limit_exceeded", refused.text
        assert int(refused.headers["retry-after"]) >= 1
    served = cluster.served(ids)
    assert sum(served) == len(ids)
    assert sum(1 for n in served if n) >= 2, f"nginx sent everything to one replica: {served}"
    # Every replica, whatever nginx gave it, refuses now: the window is shared.
    for gw in cluster.replicas:
        assert chat(gw.url).status_code == 429
    assert count(emulator, only) == 6
    keys = cluster.redis.command("KEYS", "*")
    assert isinstance(keys, list) and keys
    assert all(key.startswith(b"gptomni2api:") for key in keys), keys  # one prefix, nothing else touched


# --- one pool: changes reach every replica at once -----------------------------------------------


def test_a_cookie_added_on_one_replica_is_used_by_the_others_at_once(
    start_cluster: Callable[..., Cluster], emulator: Emulator
) -> None:
    cluster = start_cluster([])
    a, b, c = cluster.replicas
    added = cookie("added")
    added_id = credential_id(added)
    with httpx.Client() as client_b, httpx.Client() as client_c:
        for gw, client in ((b, client_b), (c, client_c)):
            assert states(gw, client) == {}  # warm the connections; nothing there yet

        response = admin(a, "POST", "/credentials", json={"cookie": added})
        assert response.status_code == 201, response.text
        within(
            PROPAGATION,
            lambda: added_id in states(b, client_b) and added_id in states(c, client_c),
            "B and C list the cookie A added",
            pause=0,
        )
        for gw in (b, c):
            answer = chat(gw.url)
            assert answer.status_code == 200, answer.text
        assert count(emulator, added) == 2

        # A client key made on B works on A and C at once, and its usage is counted for all.
        made = admin(b, "POST", "/keys", json={"name": "scale-out"})
        assert made.status_code == 201, made.text
        key, key_id = made.json()["key"], made.json()["id"]
        within(PROPAGATION, lambda: chat(c.url, key=key, client=client_c).status_code == 200, "C takes it")
        assert chat(a.url, key=key).status_code == 200
        within(
            5,
            lambda: admin(b, "GET", f"/keys/{key_id}").json()["usage"]["requests"] == 2,
            "B counts the key's two requests made on A and C",
            pause=0.05,
        )

        # Removed on C: gone from A and B at once, and never sent again.
        assert admin(c, "DELETE", f"/credentials/{added_id}").status_code == 200
        within(
            PROPAGATION,
            lambda: added_id not in states(b, client_b) and added_id not in states(a),
            "A and B drop the cookie C removed",
            pause=0,
        )
        refused = chat(a.url)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "no_credentials"
        assert count(emulator, added) == 4  # the two chats with the key, nothing after the removal


def test_a_credential_invalidated_by_one_replica_is_skipped_by_all(
    start_cluster: Callable[..., Cluster], emulator: Emulator
) -> None:
    ended = cookie("ended", status=401)  # the session endpoint says {}: signed out for good
    good = cookie("good")
    cluster = start_cluster([ended, good])
    a, b, c = cluster.replicas
    ended_id = credential_id(ended)
    for _ in range(3):  # round-robin reaches the ended one within two chats; A fails over to `good`
        answer = chat(a.url)
        assert answer.status_code == 200, answer.text
        if count(emulator, ended):
            break
    assert count(emulator, ended) == 1
    assert states(a)[ended_id] == "invalid"
    within(
        PROPAGATION,
        lambda: states(b).get(ended_id) == "invalid" and states(c).get(ended_id) == "invalid",
        "B and C list it invalid",
        pause=0,
    )
    for url in (b.url, c.url, b.url, c.url, cluster.url, cluster.url, cluster.url):
        answer = chat(url)
        assert answer.status_code == 200, answer.text
    assert count(emulator, ended) == 1  # nobody sent it again
    for gw in cluster.replicas:
        assert ready(gw).json()["credentials"] == {"active": 1, "cooling": 0, "invalid": 1}

    # Reset on C (say the account signed in again): active on A and B at once.
    assert admin(c, "POST", f"/credentials/{ended_id}/reset").status_code == 200
    within(
        PROPAGATION,
        lambda: states(a).get(ended_id) == "active" and states(b).get(ended_id) == "active",
        "A and B list it active again",
        pause=0,
    )


def test_a_response_stored_by_one_replica_is_read_and_continued_by_another(
    start_cluster: Callable[..., Cluster], emulator: Emulator
) -> None:
    account = cookie("responses")
    cluster = start_cluster([account])
    a, b, c = cluster.replicas
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    first = httpx.post(
        f"{a.url}/v1/responses",
        json={"model": "gptomni", "input": "<<<EMU_REPLY\nfirst answer\nEMU_REPLY>>>"},
        headers=headers,
        timeout=30,
    )
    assert first.status_code == 200, first.text
    response_id = first.json()["id"]
    read = httpx.get(f"{b.url}/v1/responses/{response_id}", headers=headers, timeout=10)
    assert read.status_code == 200, read.text
    assert read.json()["output"] == first.json()["output"]
    second = httpx.post(
        f"{c.url}/v1/responses",
        json={
            "model": "gptomni",
            "previous_response_id": response_id,
            "input": "<<<EMU_REPLY\nsecond answer\nEMU_REPLY>>>",
        },
        headers=headers,
        timeout=30,
    )
    assert second.status_code == 200, second.text
    assert second.json()["previous_response_id"] == response_id
    (sent,) = [r for r in emulator.last_requests() if r["cookie"] == account][-1:]
    assert "first answer" in sent["prompt"]  # C had A's answer to carry on from
    assert httpx.delete(f"{b.url}/v1/responses/{response_id}", headers=headers, timeout=10).status_code == 200
    assert httpx.get(f"{a.url}/v1/responses/{response_id}", headers=headers, timeout=10).status_code == 404


# --- stream slots are leases -----------------------------------------------------------------------


def test_kill_9_of_a_replica_mid_stream_frees_its_slot_within_the_lease(
    start_cluster: Callable[..., Cluster], emulator: Emulator
) -> None:
    only = cookie("lease")
    cluster = start_cluster(
        [only], MAX_STREAMS_PER_CREDENTIAL="1", STREAM_LEASE_SECONDS=str(LEASE), RATE_LIMIT_WAIT="0"
    )
    a, b, _ = cluster.replicas
    long_answer = "[[emu duration=30]]\n<<<EMU_REPLY\n" + "a long answer " * 200 + "\nEMU_REPLY>>>"
    body = {"model": "gptomni", "stream": True, "messages": [{"role": "user", "content": long_answer}]}
    headers = {"Authorization": f"Bearer {MASTER_KEY}"}
    with httpx.stream("POST", f"{a.url}{CHAT_PATH}", json=body, headers=headers, timeout=30) as stream:
        assert stream.status_code == 200
        lines = stream.iter_lines()  # held: a generator dropped would close the connection
        while '"content":"a long' not in next(lines):
            pass  # until the first piece of text: A holds the account's only slot
        time.sleep(LEASE)  # past the first lease: A must have renewed it to still hold it
        held = chat(b.url)
        assert held.status_code == 429, held.text
        assert held.json()["error"]["code"] == "rate_limit_exceeded"

        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(5)
        killed = time.monotonic()
        refused = chat(b.url)
        assert refused.status_code == 429, "the slot freed before its lease ran out"
        assert time.monotonic() - killed < 1.0  # refused at once, not after a wait

        def served() -> bool:
            answer = chat(b.url)
            assert answer.status_code in (200, 429), answer.text
            return answer.status_code == 200

        within(LEASE + 1, served, "B is served once A's lease ran out", pause=0.1)
    assert count(emulator, only) == 2


# --- Redis going away and coming back ----------------------------------------------------------------


class Load:
    """Chats through nginx in a loop from a few threads, each outcome recorded with its time."""

    def __init__(self, url: str, threads: int = 3) -> None:
        self.url = url
        self.results: list[tuple[float, int, str]] = []  # (time, status or 0 for no answer, detail)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client() as client:
            while not self._stop.is_set():
                try:
                    response = chat(self.url, client=client)
                    outcome = (time.monotonic(), response.status_code, response.text[:300])
                except httpx.HTTPError as exc:
                    outcome = (time.monotonic(), 0, repr(exc))
                self.results.append(outcome)

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)

    def between(self, start: float, end: float) -> list[tuple[float, int, str]]:
        return [r for r in self.results if start <= r[0] <= end]


def test_redis_stopped_and_restarted_under_load_costs_no_request_a_5xx(
    start_cluster: Callable[..., Cluster], emulator: Emulator
) -> None:
    first, second = cookie("outage-1"), cookie("outage-2")
    # Limits on, so every request goes through the shared (then per-replica) limits.
    cluster = start_cluster(
        [first, second], CREDENTIAL_RATE_LIMIT="10000/60", MAX_STREAMS_PER_CREDENTIAL="100"
    )
    for gw in cluster.replicas:
        body = ready(gw).json()
        assert body["status"] == "ready", body
        assert degraded_metric(gw) == 0
    with Load(cluster.url) as load:
        time.sleep(0.5)
        cluster.redis.stop()
        stopped = time.monotonic()
        for gw in cluster.replicas:
            within(5, lambda gw=gw: ready(gw).json()["status"] == "degraded", f"{gw.log_path.name} degraded")
            answer = ready(gw)
            assert answer.status_code == 200
            assert answer.json()["state"] == {"backend": "redis", "degraded": True}, answer.text
            assert degraded_metric(gw) == 1
        # An admin write cannot be stored: not acknowledged.
        refused = admin(cluster.replicas[0], "POST", "/credentials", json={"cookie": cookie("unsaved")})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["type"] == "server_error"
        time.sleep(0.5)  # served for a while without Redis
        cluster.redis.start()
        restarted = time.monotonic()
        for gw in cluster.replicas:
            within(3, lambda gw=gw: ready(gw).json()["status"] == "ready", f"{gw.log_path.name} ready again")
        # And it stays so, under load: no flap back to degraded (say, on a connection the old
        # server closed).
        steady_until = time.monotonic() + 1.5
        while time.monotonic() < steady_until:
            for gw in cluster.replicas:
                answer = ready(gw).json()
                assert answer["status"] == "ready", (gw.log_path.name, answer)
                assert answer["state"] == {"backend": "redis", "degraded": False}, (gw.log_path.name, answer)
            time.sleep(0.05)
        for gw in cluster.replicas:
            assert degraded_metric(gw) == 0
    failed = [r for r in load.results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(load.results)} failed, e.g. {failed[:3]}"
    assert len(load.between(stopped, restarted)) >= 5, "no load while Redis was away"
    for gw in cluster.replicas:
        warnings = [ln for ln in gw.log().splitlines() if "WARNING" in ln and "degraded" in ln]
        assert len(warnings) == 1, (
            f"{gw.log_path.name}: one outage, {len(warnings)} WARNING lines saying degraded"
        )

    # Resynchronised: a change on one replica reaches the others again.
    late = cookie("after-outage")
    assert admin(cluster.replicas[1], "POST", "/credentials", json={"cookie": late}).status_code == 201
    a, _, c = cluster.replicas
    within(
        PROPAGATION + 1, lambda: credential_id(late) in states(a) and credential_id(late) in states(c), "sync"
    )


# --- starting without a usable Redis ---------------------------------------------------------------


@pytest.mark.parametrize("case", ["unreachable", "wrong_password"])
def test_an_unusable_redis_url_stops_the_start_and_never_shows_the_password(
    case: str, emulator: Emulator, tmp_path: Path, start_redis: Callable[..., RedisServer]
) -> None:
    password = f"never-shown-{secrets.token_hex(8)}"
    if case == "unreachable":
        port = free_port()
    else:
        port = start_redis(password=f"the-right-one-{secrets.token_hex(8)}").port
    url = f"redis://:{password}@127.0.0.1:{port}/0"
    env = base_env() | gateway_settings(emulator, [cookie("start")], REDIS_URL=url)
    for code, output, seconds in refused_starts(env, tmp_path):
        assert code == 2, (code, output[-2000:])
        assert "REDIS_URL" in output
        assert f"127.0.0.1:{port}" in output  # says where it tried
        assert password not in output
        assert "Traceback" not in output
        assert seconds < 30


# --- migration and export ----------------------------------------------------------------------------


def test_a_credentials_file_is_imported_once_and_exported_whole(
    start_gateway: Callable[..., Gateway],
    start_redis: Callable[..., RedisServer],
    emulator: Emulator,
    tmp_path: Path,
) -> None:
    store = tmp_path / "credentials.json"
    ended, kept, dropped = cookie("mig-ended", status=401), cookie("mig-kept"), cookie("mig-dropped")
    ended_id, kept_id, dropped_id = map(credential_id, (ended, kept, dropped))

    # The embedded backend writes the file: an invalid credential, an active one, a removed one, a key.
    embedded = start_gateway(
        gateway_settings(emulator, [], ADMIN_KEY=ADMIN_KEY, CREDENTIALS_FILE=str(store)), name="embedded"
    )
    assert (
        admin(embedded, "POST", "/credentials", json={"cookies": [ended, kept, dropped]}).status_code == 201
    )
    assert admin(embedded, "DELETE", f"/credentials/{dropped_id}").status_code == 200
    made = admin(embedded, "POST", "/keys", json={"name": "migrated", "rpm": 100})
    assert made.status_code == 201, made.text
    key, key_id = made.json()["key"], made.json()["id"]
    for _ in range(3):
        assert chat(embedded.url, key=key).status_code == 200
        if count(emulator, ended):
            break
    before = states(embedded)
    assert before == {ended_id: "invalid", kept_id: "active"}
    embedded.stop()
    on_disk = json.loads(store.read_text())

    redis = start_redis()
    with_file = gateway_settings(
        emulator, [], ADMIN_KEY=ADMIN_KEY, REDIS_URL=redis.url, CREDENTIALS_FILE=str(store)
    )
    without_file = gateway_settings(emulator, [], ADMIN_KEY=ADMIN_KEY, REDIS_URL=redis.url)
    importer = start_gateway(with_file, name="import-1")
    assert states(importer) == before
    assert chat(importer.url, key=key).status_code == 200  # the key came along (its hash)
    other = start_gateway(without_file, name="import-peer")
    assert states(other) == before  # it is in Redis now, not only in that process

    # Once: a change made since is not undone by a start with the same file.
    assert admin(other, "DELETE", f"/credentials/{kept_id}").status_code == 200
    importer.stop()
    again = start_gateway(with_file, name="import-2")
    assert states(again) == {ended_id: "invalid"}

    # The export: the whole pool in the credentials-file format, cookies included, admin key only.
    for wrong in (None, MASTER_KEY):
        headers = {"Authorization": f"Bearer {wrong}"} if wrong else {}
        refused = httpx.get(f"{again.url}/admin/export", headers=headers, timeout=10)
        assert refused.status_code == 401
        assert ended not in refused.text
    response = admin(again, "GET", "/export")
    assert response.status_code == 200
    export = response.json()
    assert set(export) >= {"version", "credentials", "removed", "keys", "removed_keys"}
    assert export["version"] == on_disk["version"]
    assert [record["cookie"] for record in export["credentials"]] == [ended]
    assert {ended_id: "invalid"} == {credential_id(r["cookie"]): r["state"] for r in export["credentials"]}
    assert {kept_id, dropped_id} <= set(export["removed"])
    assert [k["id"] for k in export["keys"]] == [key_id]
    assert key not in response.text  # a key is kept as its hash, never itself

    # Round trip: the export is a credentials file the embedded backend starts from.
    restored_file = tmp_path / "restored.json"
    restored_file.write_text(response.text)
    restored = start_gateway(
        gateway_settings(emulator, [kept], ADMIN_KEY=ADMIN_KEY, CREDENTIALS_FILE=str(restored_file)),
        name="restored",
    )
    assert states(restored) == {ended_id: "invalid"}  # `kept` stays removed, the file's tombstone wins
    assert admin(restored, "POST", "/credentials", json={"cookie": cookie("fresh")}).status_code == 201
    assert chat(restored.url, key=key).status_code == 200
