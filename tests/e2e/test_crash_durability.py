"""Admin changes are durable: answered only once they are in CREDENTIALS_FILE on disk, so a `kill -9`
at any moment loses none of them, and leaves no temporary file (with cookies in it) behind.

Two writer threads add, change and remove credentials through the admin API while the gateway is
killed at a random (seeded) moment; after each restart on the same file, every acknowledged change
must be there. A change whose answer never came may have happened or not: either outcome is
accepted, and the writer then goes on from what the restarted gateway says.
"""

from __future__ import annotations

import json
import random
import signal
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.credentials.pool import credential_id
from tests.conftest import Emulator, Gateway, gateway_settings

ADMIN_KEY = "sk-admin-crash-durability-0123456789"
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}
SEED = 20_240_611
ROUNDS = 12
MAX_OWN = 30  # credentials a writer keeps at most; past that it removes

# A credential's state as the admin API and the file show it: absent, or present with this User-Agent.
ABSENT = ("absent",)
State = tuple[Any, ...]


def present(user_agent: str | None) -> State:
    return ("present", user_agent)


@dataclass
class Change:
    kind: str  # add, patch, remove
    id: str
    cookie: str
    user_agent: str | None = None

    @property
    def outcome(self) -> State:
        return ABSENT if self.kind == "remove" else present(self.user_agent)


@dataclass
class Writer:
    """One admin client. Its credentials are its own, so the order of its acknowledged changes is
    the order that must hold for them."""

    index: int
    model: dict[str, State] = field(default_factory=dict)  # id -> the state acknowledged last
    cookies: dict[str, str] = field(default_factory=dict)  # id -> cookie
    in_flight: Change | None = None  # sent, not answered when the gateway died
    acknowledged: int = 0
    errors: list[str] = field(default_factory=list)
    serial: int = 0

    def choose(self, rng: random.Random) -> Change:
        own = [id_ for id_, state in self.model.items() if state != ABSENT]
        gone = [id_ for id_, state in self.model.items() if state == ABSENT]
        roll = rng.random()
        agent = self._agent(rng)
        if len(own) >= MAX_OWN or (own and 0.70 <= roll < 0.92):
            id_ = rng.choice(own)
            return Change("remove", id_, self.cookies[id_])
        if own and 0.42 <= roll < 0.70:
            id_ = rng.choice(own)
            return Change("patch", id_, self.cookies[id_], agent)
        if gone and roll >= 0.92:  # bring back a removed one: a later add beats the tombstone
            id_ = rng.choice(gone)
            return Change("add", id_, self.cookies[id_], agent)
        self.serial += 1
        cookie = f"__Secure-next-auth.session-token=crash-w{self.index}-{self.serial}-{uuid.uuid4().hex}"
        id_ = credential_id(cookie)
        self.cookies[id_] = cookie
        return Change("add", id_, cookie, agent)

    def _agent(self, rng: random.Random) -> str | None:
        self.serial += 1
        return None if rng.random() < 0.2 else f"Mozilla/5.0 (crash-test; w{self.index}; {self.serial})"

    def run(self, url: str, rng: random.Random, store: Path) -> None:
        """Send changes until the gateway dies; each answered one is checked in the file at once."""
        with httpx.Client(base_url=url, headers=AUTH, timeout=10) as client:
            while True:
                change = self.choose(rng)
                self.in_flight = change
                try:
                    response = send(client, change)
                except httpx.TransportError:
                    return  # killed: this change may or may not have been saved
                if response.status_code != (201 if change.kind == "add" else 200):
                    self.errors.append(f"{change.kind} {change.id}: {response.status_code} {response.text}")
                    return
                self.in_flight = None
                self.model[change.id] = change.outcome
                self.acknowledged += 1
                on_disk = file_states(store).get(change.id, ABSENT)
                if on_disk != change.outcome:
                    self.errors.append(f"{change.kind} {change.id} answered but the file says {on_disk}")
                    return


def send(client: httpx.Client, change: Change) -> httpx.Response:
    if change.kind == "add":
        body: dict[str, Any] = {"cookie": change.cookie}
        if change.user_agent is not None:
            body["user_agent"] = change.user_agent
        return client.post("/admin/credentials", json=body)
    if change.kind == "patch":
        return client.patch(f"/admin/credentials/{change.id}", json={"user_agent": change.user_agent})
    return client.delete(f"/admin/credentials/{change.id}")


def file_states(store: Path) -> dict[str, State]:
    records = json.loads(store.read_text(encoding="utf-8"))["credentials"]
    return {r.get("id") or credential_id(r["cookie"]): present(r.get("user_agent")) for r in records}


def listed_states(gateway: Gateway) -> dict[str, State]:
    response = httpx.get(f"{gateway.url}/admin/credentials", headers=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return {c["id"]: present(c["user_agent"]) for c in response.json()["data"]}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_acknowledged_admin_changes_survive_kill_9(
    start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    store = folder / "credentials.json"
    settings = gateway_settings(emulator, [], ADMIN_KEY=ADMIN_KEY, CREDENTIALS_FILE=str(store))
    rng = random.Random(SEED)
    writers = [Writer(0), Writer(1)]
    started = time.monotonic()
    gateway: Gateway = start_gateway(settings, name="crash-0")
    uncertain = 0
    for round_ in range(1, ROUNDS + 1):
        threads = [
            threading.Thread(
                target=writer.run, args=(gateway.url, random.Random(rng.random()), store), daemon=True
            )
            for writer in writers
        ]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.03, 0.4))
        gateway.stop(signal.SIGKILL)
        for thread in threads:
            thread.join(15)
            assert not thread.is_alive(), "a writer hung after the kill"
        for writer in writers:
            assert writer.errors == [], writer.errors
        if round_ == 1:  # a write cut off between its temporary file and the rename
            (folder / ".credentials.json.cutoff1.tmp").write_text('{"credentials": [{"cookie": "x=1"}]}')

        gateway = start_gateway(settings, name=f"crash-{round_}")
        assert leftovers(folder) == [], f"round {round_}: temporary files left after the restart"
        listed, on_disk = listed_states(gateway), file_states(store)
        assert listed == on_disk  # the restarted pool is the file
        known: set[str] = set()
        for writer in writers:
            change, writer.in_flight = writer.in_flight, None
            for id_, expected in writer.model.items():
                actual = listed.get(id_, ABSENT)
                if change is not None and change.id == id_:
                    assert actual in (expected, change.outcome), f"round {round_}: {id_} is {actual}"
                    writer.model[id_] = actual  # the unanswered change happened or not: go on from here
                else:
                    assert actual == expected, (
                        f"round {round_}: writer {writer.index}'s acknowledged {id_} = {expected}, "
                        f"after the restart {actual}"
                    )
            if change is not None and change.id not in writer.model:  # an unanswered first add
                writer.model[change.id] = listed.get(change.id, ABSENT)
                uncertain += 1
            known |= set(writer.model)
        assert set(listed) <= known, "a credential nobody added"

    total = sum(writer.acknowledged for writer in writers)
    removed = sum(state == ABSENT for writer in writers for state in writer.model.values())
    elapsed = time.monotonic() - started
    print(f"{ROUNDS} kills, {total} acknowledged changes, {removed} removed, in {elapsed:.1f} s")
    assert total >= 5 * ROUNDS  # the writers did get work done between the kills
    assert removed > 0


def test_a_hundred_admin_adds_are_durable_and_quick(
    start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    store = tmp_path / "data" / "credentials.json"
    gateway = start_gateway(gateway_settings(emulator, [], ADMIN_KEY=ADMIN_KEY, CREDENTIALS_FILE=str(store)))
    cookies = [f"session-token=hundred-{n:03d}-{uuid.uuid4().hex}" for n in range(200)]

    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) as client:
        client.get("/admin/credentials")  # connected
        started = time.perf_counter()
        for value in cookies[:100]:
            assert client.post("/admin/credentials", json={"cookie": value}).status_code == 201
        sequential = time.perf_counter() - started
    assert set(file_states(store)) == {credential_id(c) for c in cookies[:100]}

    clients = [httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) for _ in range(100)]
    barrier = threading.Barrier(101)
    statuses: list[int] = []

    def add(client: httpx.Client, value: str) -> None:
        client.get("/admin/credentials")  # connected before the clock starts
        barrier.wait()
        statuses.append(client.post("/admin/credentials", json={"cookie": value}).status_code)

    threads = [
        threading.Thread(target=add, args=(client, value))
        for client, value in zip(clients, cookies[100:], strict=True)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(30)
    concurrent = time.perf_counter() - started
    for client in clients:
        client.close()
    assert statuses == [201] * 100
    assert set(file_states(store)) == {credential_id(c) for c in cookies}
    print(f"100 durable admin adds: sequential {sequential:.3f} s, concurrent {concurrent:.3f} s")
    assert sequential < 2.0, f"100 sequential adds took {sequential:.2f} s"
    assert concurrent < 2.0, f"100 concurrent adds took {concurrent:.2f} s"


def test_a_change_that_cannot_be_saved_is_a_503_and_is_written_later(
    start_gateway: Any, emulator: Emulator, tmp_path: Path
) -> None:
    folder = tmp_path / "data"
    store = folder / "credentials.json"
    settings = gateway_settings(emulator, [], ADMIN_KEY=ADMIN_KEY, CREDENTIALS_FILE=str(store))
    gateway: Gateway = start_gateway(settings, name="unsaved-1")
    value = f"session-token=unsaved-{uuid.uuid4().hex}"
    id_ = credential_id(value)
    folder.rename(tmp_path / "away")
    folder.write_text("not a folder")  # no write can land (as root, permissions would not stop it)
    with httpx.Client(base_url=gateway.url, headers=AUTH, timeout=10) as client:
        response = client.post("/admin/credentials", json={"cookie": value})
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["code"] == "credentials_not_saved" and error["type"] == "server_error"
        assert "not saved" in error["message"] and value not in response.text
        assert id_ in listed_states(gateway)  # in effect in memory, unsaved
        folder.unlink()
        (tmp_path / "away").rename(folder)
        deadline = time.monotonic() + 5  # the gateway retries on its own, within a second or so
        while id_ not in file_states(store):
            assert time.monotonic() < deadline, "the unsaved change was never written"
            time.sleep(0.05)
        again = client.post("/admin/credentials", json={"cookie": value})  # a retry: durable now
        assert again.status_code == 200 and again.json()["existing"][0]["id"] == id_
    gateway.stop(signal.SIGKILL)
    log = gateway.log_path.read_text(errors="replace")
    assert log.count("could not write the credentials file") == 1
    assert "is written again" in log
    assert value not in log
    restarted = start_gateway(settings, name="unsaved-2")
    assert id_ in listed_states(restarted)
