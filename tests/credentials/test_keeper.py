"""PoolKeeper: start-up from the file and the settings, coalesced saves, durable commits for the admin
API (a group commit, off the event loop), and adopting other writers."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.credentials.keeper import NotSaved, PoolKeeper
from app.credentials.pool import CredentialPool, CredentialState, credential_id
from app.credentials.store import CredentialStore, StoreData, StoreError
from app.upstream.failures import FailureKind, UpstreamFailure
from tests.fakes import Clock

A = "session-token=AAAA-keeper-cookie-0001"
B = "session-token=BBBB-keeper-cookie-0002"
C = "session-token=CCCC-keeper-cookie-0003"
D = "session-token=DDDD-keeper-cookie-0004"
WALL = 1_700_000_000.0


def make_keeper(path: Path | None, wall: float | Clock = WALL) -> tuple[PoolKeeper, CredentialPool]:
    pool = CredentialPool(clock=Clock(500.0), wall_clock=wall if isinstance(wall, Clock) else Clock(wall))
    return PoolKeeper(pool, CredentialStore(path) if path is not None else None), pool


def count_saves(store: CredentialStore) -> list[StoreData]:
    """Wrap `store.save` so each call is recorded."""
    calls: list[StoreData] = []
    real: Callable[[StoreData], StoreData] = store.save

    def save(local: StoreData) -> StoreData:
        calls.append(local)
        return real(local)

    store.save = save  # type: ignore[method-assign]
    return calls


class GatedSave:
    """Wraps `store.save` (which runs in a worker thread): each call is recorded and waits for the
    gate to open; the next `failing` calls raise ENOSPC instead of writing."""

    def __init__(self, store: CredentialStore) -> None:
        self.real: Callable[[StoreData], StoreData] = store.save
        self.calls: list[StoreData] = []
        self.started = threading.Semaphore(0)
        self.gate = threading.Event()
        self.failing = 0
        store.save = self.save  # type: ignore[method-assign]

    def save(self, local: StoreData) -> StoreData:
        self.calls.append(local)
        self.started.release()
        assert self.gate.wait(10), "the gate was never opened"
        if self.failing:
            self.failing -= 1
            raise OSError(28, "No space left on device")
        return self.real(local)

    async def wait_started(self) -> None:
        """Until a save has reached the store (in its thread)."""
        assert await asyncio.to_thread(self.started.acquire, True, 5), "no save started"


def hold_the_loop(seconds: float) -> None:
    """Block the running event loop (called from a coroutine), as a long synchronous step would."""
    time.sleep(seconds)


async def settled(keeper: PoolKeeper) -> None:
    """Until the batched saves have written every change (nobody calling commit)."""
    async with asyncio.timeout(3):
        while keeper.unsaved:  # noqa: ASYNC110 - watching from outside, as a client would
            await asyncio.sleep(0.01)


def folder_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def file_cookies(path: Path) -> set[str]:
    return {r["cookie"] for r in json.loads(path.read_text())["credentials"]}


def states(pool: CredentialPool) -> dict[str, str]:
    return {c.cookie: c.state.value for c in pool.credentials}


def write_file(
    path: Path, credentials: list[dict[str, Any]], removed: dict[str, float] | None = None
) -> None:
    path.write_text(json.dumps({"version": 1, "credentials": credentials, "removed": removed or {}}))


# --- start ------------------------------------------------------------------------------------


def test_start_without_store_takes_configured_cookies(tmp_path: Path) -> None:
    keeper, pool = make_keeper(None)
    keeper.start([A, B, A])
    assert [c.cookie for c in pool.credentials] == [A, B]
    assert pool.on_change is None
    keeper.save()  # harmless without a file
    keeper.sync()
    assert list(tmp_path.iterdir()) == []


def test_start_without_file_writes_configured_cookies(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A, B])
    assert file_cookies(path) == {A, B}
    assert pool.on_change == keeper.schedule_save


def test_start_file_wins_states_and_configured_are_added(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_file(
        path,
        [
            {"cookie": A, "state": "invalid", "changed_at": WALL - 100, "last_error": "401"},
            {"cookie": B, "state": "cooling", "cooling_until": WALL + 40, "changed_at": WALL - 20},
        ],
    )
    keeper, pool = make_keeper(path)
    keeper.start([A, C])  # A is configured too, but the file's state for it stands
    assert states(pool) == {A: "invalid", B: "cooling", C: "active"}
    b = pool.get(credential_id(B))
    assert b is not None
    assert pool.next_recovery_in() == pytest.approx(40.0)
    a = pool.get(credential_id(A))
    assert a is not None and a.last_error == "401"
    assert file_cookies(path) == {A, B, C}


def test_start_does_not_resurrect_a_removed_configured_cookie(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_file(path, [{"cookie": B, "changed_at": WALL - 10}], {credential_id(A): WALL - 5})
    keeper, pool = make_keeper(path)
    keeper.start([A, B, C])
    assert {c.cookie for c in pool.credentials} == {B, C}
    assert credential_id(A) in pool.removed
    data = json.loads(path.read_text())
    assert {r["cookie"] for r in data["credentials"]} == {B, C}
    assert credential_id(A) in data["removed"]


def test_start_with_corrupt_file_raises_and_keeps_it(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"credentials": [')
    keeper, pool = make_keeper(path)
    with pytest.raises(StoreError, match=str(path)):
        keeper.start([A])
    assert path.read_text() == '{"credentials": ['  # not overwritten
    assert len(pool) == 0


# --- saving -----------------------------------------------------------------------------------


def test_schedule_save_without_loop_writes_at_once(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    saves = count_saves(keeper.store)  # type: ignore[arg-type]
    pool.add(B)
    assert len(saves) == 1
    assert file_cookies(path) == {A, B}


@pytest.mark.anyio
async def test_schedule_save_coalesces_a_burst(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    wall = Clock(WALL)
    keeper, pool = make_keeper(path, wall)
    keeper.start([A])
    saves = count_saves(keeper.store)  # type: ignore[arg-type]
    for cookie in (B, C, D):
        pool.add(cookie)
    pool.remove(credential_id(A))
    assert saves == []  # nothing written until the loop gets control
    await settled(keeper)
    assert len(saves) == 1
    assert file_cookies(path) == {B, C, D}
    wall.now += 1
    pool.add(A)  # a later change is written again, re-adding a removed cookie
    await settled(keeper)
    assert len(saves) == 2
    assert file_cookies(path) == {A, B, C, D}


@pytest.mark.anyio
async def test_state_change_is_saved(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    (credential,) = pool.credentials
    pool.record(credential, UpstreamFailure(FailureKind.AUTH, "401 from upstream", status=401))
    assert keeper.unsaved
    await settled(keeper)  # batched: written without anyone committing
    (stored,) = json.loads(path.read_text())["credentials"]
    assert stored["state"] == "invalid"


def test_save_logs_os_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "creds.json"
    keeper, _ = make_keeper(path)
    keeper.start([A])

    def broken(local: StoreData) -> StoreData:
        raise OSError(28, "No space left on device")

    keeper.store.save = broken  # type: ignore[method-assign,union-attr]
    with caplog.at_level(logging.ERROR, logger="gptomni2api.credentials"):
        keeper.save()  # must not raise
    assert "No space left on device" in caplog.text
    assert A not in caplog.text


# --- commit: durable acknowledgements for the admin API ------------------------------------------


@pytest.mark.anyio
async def test_commit_returns_once_the_change_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    pool.add(B)
    await keeper.commit()
    assert file_cookies(path) == {A, B}  # no waiting: on disk when commit returned
    assert not keeper.unsaved
    pool.remove(credential_id(A))
    await keeper.commit()
    assert file_cookies(path) == {B}
    assert credential_id(A) in json.loads(path.read_text())["removed"]


@pytest.mark.anyio
async def test_commit_without_changes_or_file_returns_at_once(tmp_path: Path) -> None:
    keeper, pool = make_keeper(None)
    keeper.start([A])
    pool.add(B)
    await keeper.commit()
    assert folder_names(tmp_path) == []
    keeper, pool = make_keeper(tmp_path / "creds.json")
    keeper.start([A])
    saves = count_saves(keeper.store)  # type: ignore[arg-type]
    await keeper.commit()
    assert saves == []


@pytest.mark.anyio
async def test_concurrent_commits_share_saves(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([])
    saves = count_saves(keeper.store)  # type: ignore[arg-type]

    async def admin_add(n: int) -> None:
        pool.add(f"session-token=concurrent-{n:04d}")
        await keeper.commit()
        assert f"session-token=concurrent-{n:04d}" in file_cookies(path)

    started = time.perf_counter()
    await asyncio.gather(*(admin_add(n) for n in range(100)))
    elapsed = time.perf_counter() - started
    assert len(file_cookies(path)) == 100
    assert len(saves) <= 3  # the first add's save, then one covering the other 99
    assert elapsed < 2.0


def test_a_commit_arriving_just_as_a_save_finished_does_not_freeze_the_loop(tmp_path: Path) -> None:
    # A commit that runs after a save's future is done but before its done-callback ran must not
    # await that finished save over and over (it never yields: the loop froze under concurrent
    # admin calls). Run on a loop in a thread of its own, so a frozen loop fails the test.
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    gated = GatedSave(keeper.store)  # type: ignore[arg-type]

    async def scenario() -> None:
        pool.add(B)
        first = asyncio.create_task(keeper.commit())
        await gated.wait_started()
        pool.add(C)
        gated.gate.set()
        hold_the_loop(0.2)  # meanwhile the save finishes and queues its completion
        await asyncio.sleep(0)  # the completion runs first, then this task, before the callbacks
        await keeper.commit()
        await first

    finished = threading.Event()

    def run() -> None:
        asyncio.run(scenario())
        finished.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    assert finished.is_set(), "commit froze the loop"
    assert file_cookies(path) == {A, B, C}


@pytest.mark.anyio
async def test_a_hundred_sequential_commits_are_cheap(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([])
    started = time.perf_counter()
    for n in range(100):
        pool.add(f"session-token=sequential-{n:04d}", user_agent="Mozilla/5.0 Test")
        await keeper.commit()
    elapsed = time.perf_counter() - started
    assert len(file_cookies(path)) == 100
    assert elapsed < 2.0, f"100 durable adds took {elapsed:.2f} s"


@pytest.mark.anyio
async def test_a_change_made_during_a_save_waits_for_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    gated = GatedSave(keeper.store)  # type: ignore[arg-type]
    pool.add(B)
    first = asyncio.create_task(keeper.commit())
    await gated.wait_started()  # the save for B runs (in a thread; the loop is free)
    pool.add(C)  # not in that save's snapshot
    second = asyncio.create_task(keeper.commit())
    await asyncio.sleep(0.05)
    assert not first.done() and not second.done()
    gated.gate.set()
    await first
    await second
    assert len(gated.calls) == 2
    assert {r["cookie"] for r in gated.calls[0].credentials} == {A, B}
    assert file_cookies(path) == {A, B, C}


@pytest.mark.anyio
async def test_a_failed_commit_raises_keeps_the_change_and_a_later_save_writes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    gated = GatedSave(keeper.store)  # type: ignore[arg-type]
    gated.gate.set()
    gated.failing = 2
    pool.add(B)
    with caplog.at_level(logging.ERROR, logger="gptomni2api.credentials"):
        with pytest.raises(NotSaved, match="No space left on device") as info:
            await keeper.commit()
        with pytest.raises(NotSaved):
            await keeper.commit()  # each commit tries again, and fails again
    assert str(path) in str(info.value)
    assert B not in str(info.value) and B not in caplog.text
    assert caplog.text.count("could not write the credentials file") == 1  # once per run of failures
    assert file_cookies(path) == {A}  # not in the file ...
    assert pool.get(credential_id(B)) is not None  # ... but in effect in memory, unsaved
    assert keeper.unsaved
    runner = asyncio.create_task(keeper.run(interval=0.02))  # the run loop retries by itself
    try:
        await settled(keeper)
    finally:
        runner.cancel()
    assert file_cookies(path) == {A, B}
    await keeper.commit()  # nothing left to write


@pytest.mark.anyio
async def test_a_failed_earlier_save_does_not_fail_a_later_change(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    gated = GatedSave(keeper.store)  # type: ignore[arg-type]
    gated.failing = 1
    pool.add(B)
    first = asyncio.create_task(keeper.commit())
    await gated.wait_started()
    pool.add(C)  # made after the failing save took its snapshot
    second = asyncio.create_task(keeper.commit())
    await asyncio.sleep(0.02)
    gated.gate.set()
    with pytest.raises(NotSaved):
        await first  # the save that covered B failed: B is not acknowledged
    await second  # C's commit did not rely on that save: its own (covering B and C) succeeds
    assert file_cookies(path) == {A, B, C}
    assert len(gated.calls) == 2


@pytest.mark.anyio
async def test_a_commit_whose_caller_goes_away_still_saves_for_the_others(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A])
    gated = GatedSave(keeper.store)  # type: ignore[arg-type]
    pool.add(B)
    gone = asyncio.create_task(keeper.commit())
    await gated.wait_started()
    waiting = asyncio.create_task(keeper.commit())
    gone.cancel()
    gated.gate.set()
    await waiting
    assert file_cookies(path) == {A, B}
    assert len(gated.calls) == 1


def test_start_removes_leftover_temporary_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "creds.json"
    keeper, _ = make_keeper(path)
    keeper.start([A])
    leftovers = [tmp_path / ".creds.json.k2j3h4g5.tmp", tmp_path / ".creds.json.abcdefgh.tmp"]
    for leftover in leftovers:
        leftover.write_text(json.dumps({"credentials": [{"cookie": B}]}))
    others = [tmp_path / ".other.json.abcdefgh.tmp", tmp_path / "creds.json.bak"]
    for other in others:
        other.write_text("keep me")
    keeper2, pool2 = make_keeper(path)
    with caplog.at_level(logging.WARNING, logger="gptomni2api.credentials"):
        keeper2.start([])
    assert not any(leftover.exists() for leftover in leftovers)
    assert all(other.exists() for other in others)
    assert "removed 2 temporary file(s)" in caplog.text and B not in caplog.text
    assert {c.cookie for c in pool2.credentials} == {A}  # a leftover's content is not taken in


def test_of_finds_the_keeper_of_a_pool(tmp_path: Path) -> None:
    keeper, pool = make_keeper(tmp_path / "creds.json")
    assert PoolKeeper.of(pool) is keeper
    assert PoolKeeper.of(CredentialPool()) is None


# --- sync: another process on the same file -----------------------------------------------------


def test_sync_adopts_another_process_writes(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path, wall=WALL)
    keeper.start([A, B])
    other_keeper, other = make_keeper(path, wall=WALL + 10)  # a later process
    other_keeper.start([])
    assert {c.cookie for c in other.credentials} == {A, B}
    other.add(C)
    other.remove(credential_id(A))
    b = other.get(credential_id(B))
    assert b is not None
    other.record(b, UpstreamFailure(FailureKind.AUTH, "401", status=401))
    assert keeper.store is not None and keeper.store.changed()
    keeper.sync()
    assert states(pool) == {B: "invalid", C: "active"}
    assert credential_id(A) in pool.removed
    assert not keeper.store.changed()


def test_sync_does_nothing_when_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, _ = make_keeper(path)
    keeper.start([A])

    def must_not_load() -> StoreData | None:
        raise AssertionError("loaded although nothing changed")

    keeper.store.load = must_not_load  # type: ignore[method-assign,union-attr]
    keeper.sync()


def test_sync_keeps_pool_when_file_turns_corrupt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A, B])
    path.write_text("{ broken")
    with caplog.at_level(logging.ERROR, logger="gptomni2api.credentials"):
        keeper.sync()
    assert {c.cookie for c in pool.credentials} == {A, B}
    assert "keeping the pool as it is" in caplog.text


def test_sync_does_not_override_a_newer_local_state(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path, wall=WALL + 100)  # our change is later
    keeper.start([A])
    other_keeper, other = make_keeper(path, wall=WALL)
    other_keeper.start([])
    a_other = other.get(credential_id(A))
    assert a_other is not None
    other.record(a_other, UpstreamFailure(FailureKind.AUTH, "401", status=401))  # at WALL
    a = pool.get(credential_id(A))
    assert a is not None
    pool.on_change = None  # keep our change in memory only
    pool.record(a, UpstreamFailure(FailureKind.CLOUDFLARE, "challenge"))  # at WALL + 100
    keeper.sync()
    assert a.state is CredentialState.COOLING


def test_sync_after_failed_save_keeps_a_removed_cookie_removed(tmp_path: Path) -> None:
    # BUG (CredentialPool.adopt ignores the pool's own tombstones): our removal of A could not be written,
    # another process then writes its (older) view with A, and sync brings A back into our pool.
    path = tmp_path / "creds.json"
    wall = Clock(WALL)
    keeper, pool = make_keeper(path, wall)
    keeper.start([A, B])  # A is added at WALL
    other_keeper, other = make_keeper(path, wall=WALL + 50)
    other_keeper.start([])

    def broken(local: StoreData) -> StoreData:
        raise OSError(28, "No space left on device")

    real_save = keeper.store.save  # type: ignore[union-attr]
    keeper.store.save = broken  # type: ignore[method-assign,union-attr]
    wall.now = WALL + 100
    pool.remove(credential_id(A))  # saved at once (no loop): fails, logged
    keeper.store.save = real_save  # type: ignore[method-assign,union-attr]
    other.add(C)  # the other process writes, still holding A
    keeper.sync()
    assert pool.get(credential_id(A)) is None
    assert {c.cookie for c in pool.credentials} == {B, C}


# --- renewed sessions and egress survive a restart ---------------------------------------------------


def test_a_renewed_cookie_and_its_egress_survive_a_restart_under_the_same_id(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    keeper, pool = make_keeper(path)
    keeper.start([A, B])
    a = pool.get(credential_id(A))
    assert a is not None
    pool.configure(a, proxy="http://u:secret-pw-1@127.0.0.1:3128", user_agent="Mozilla/5.0 Test")
    for n in range(50):
        assert pool.renew(a, [f"session-token=AAAA-renewed-{n:04d}"])
    assert pool.renew(a, ["__Secure-next-auth.session-token=nextauth-value-1; Max-Age=3600"])
    renewed = "session-token=AAAA-renewed-0049; __Secure-next-auth.session-token=nextauth-value-1"
    keeper.save()  # what the lifespan does at a stop
    stored = json.loads(path.read_text())["credentials"]
    assert [r["id"] for r in stored] == [credential_id(A), credential_id(B)]
    assert stored[0]["cookie"] == renewed

    # A restart, with the old cookie still in GPTOMNI_CREDENTIALS: the file wins, no duplicate.
    keeper2, pool2 = make_keeper(path)
    keeper2.start([A, B])
    assert len(pool2) == 2
    again = pool2.get(credential_id(A))
    assert again is not None
    assert again.cookie == renewed
    assert (again.proxy, again.user_agent) == ("http://u:secret-pw-1@127.0.0.1:3128", "Mozilla/5.0 Test")
    assert again.session_renewed_at == WALL and again.session_expires_at == WALL + 3600
    # and removing it by its id is final, renewed or not
    pool2.remove(credential_id(A))
    keeper2.save()
    keeper3, pool3 = make_keeper(path)
    keeper3.start([A, B])
    assert pool3.get(credential_id(A)) is None


def test_renewals_are_saved_together_soon_not_one_write_each(tmp_path: Path) -> None:
    async def scenario() -> int:
        keeper, pool = make_keeper(tmp_path / "creds.json")
        keeper.start([A])
        assert keeper.store is not None
        saves = count_saves(keeper.store)
        a = pool.credentials[0]
        for n in range(20):
            pool.renew(a, [f"session-token=AAAA-burst-{n:04d}"])
            await asyncio.sleep(0)
        assert saves == []  # batched
        await asyncio.sleep(1.3)
        assert saves[-1].credentials[0]["cookie"] == "session-token=AAAA-burst-0019"
        return len(saves)

    assert asyncio.run(scenario()) == 1


def test_another_process_renewal_is_adopted(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    one, pool_one = make_keeper(path, Clock(WALL))
    one.start([A])
    two, pool_two = make_keeper(path, Clock(WALL + 10))
    two.start([A])
    renewed = pool_two.credentials[0]
    pool_two.renew(renewed, ["session-token=AAAA-from-process-two"])
    two.save()
    one.sync()
    assert pool_one.credentials[0].cookie == "session-token=AAAA-from-process-two"
    assert pool_one.credentials[0].id == credential_id(A)


def test_a_save_takes_in_what_another_process_wrote_before_it(tmp_path: Path) -> None:
    # Process one adds a cookie; process two, which had not read the file since, saves a change of
    # its own. The save merges both into the file and marks it as seen, so process two must take
    # the merged result in then: no later write by anyone is needed for it to see the new cookie.
    path = tmp_path / "creds.json"
    one, pool_one = make_keeper(path, Clock(WALL))
    one.start([A])
    two, pool_two = make_keeper(path, Clock(WALL + 5))
    two.start([A])
    pool_one.add(B)
    one.save()
    pool_two.add(C)
    two.save()
    assert {c.id for c in pool_two.credentials} == {credential_id(A), credential_id(B), credential_id(C)}
    assert two.store is not None and not two.store.changed()
