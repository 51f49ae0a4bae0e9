"""The credentials file: validation, the record-by-record merge, and atomic, merging, private writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.credentials.pool import CredentialPool, credential_id
from app.credentials.store import CredentialStore, StoreData, StoreError, merge, parse_store, pool_data

SECRET = "__Secure-next-auth.session-token=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..SECRETSECRET"
A = "session-token=AAAA-cookie-value-0001"
B = "session-token=BBBB-cookie-value-0002"
C = "session-token=CCCC-cookie-value-0003"


def record(cookie: str, changed_at: float, state: str = "active", **extra: Any) -> dict[str, Any]:
    return {"cookie": cookie, "state": state, "changed_at": changed_at, **extra}


def cookies_of(data: StoreData) -> set[str]:
    return {r["cookie"] for r in data.credentials}


def by_cookie(data: StoreData) -> dict[str, dict[str, Any]]:
    return {r["cookie"]: r for r in data.credentials}


def stray_files(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in (name, name + ".lock"))


# --- parse_store ------------------------------------------------------------------------------


def test_parse_valid_file() -> None:
    text = json.dumps(
        {
            "version": 1,
            "credentials": [record(A, 5.0), record(B, 6.0, "invalid", last_error="401")],
            "removed": {"abcdef0123": 7},
        }
    )
    data = parse_store(text, Path("/x/creds.json"))
    assert [r["cookie"] for r in data.credentials] == [A, B]
    assert data.credentials[1]["state"] == "invalid"
    assert data.removed == {"abcdef0123": 7.0}
    assert isinstance(data.removed["abcdef0123"], float)


def test_parse_without_removed_and_state_defaults() -> None:
    data = parse_store(json.dumps({"credentials": [{"cookie": A}]}), Path("f.json"))
    assert cookies_of(data) == {A}
    assert data.removed == {}


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        ('{"credentials": [{"cookie": "' + SECRET + '"', "not valid JSON"),
        (json.dumps([{"cookie": SECRET}]), "no 'credentials' list"),
        (json.dumps({"credentials": {"cookie": SECRET}}), "no 'credentials' list"),
        (json.dumps({"credentials": [{"cookie": SECRET}, {"cookie": "   "}]}), "entry 1 has no cookie"),
        (json.dumps({"credentials": [{"cookie": 42}]}), "entry 0 has no cookie"),
        (json.dumps({"credentials": ["just-a-string"]}), "entry 0 has no cookie"),
        (json.dumps({"credentials": [{"cookie": SECRET, "state": "banned"}]}), "unknown state"),
        (json.dumps({"credentials": [{"cookie": SECRET}], "removed": ["x"]}), "'removed' must map"),
        (json.dumps({"credentials": [{"cookie": SECRET}], "removed": {"x": "now"}}), "'removed' must map"),
    ],
)
def test_parse_errors_name_the_file_and_never_the_cookie(payload: str, why: str) -> None:
    path = Path("/srv/data/credentials.json")
    with pytest.raises(StoreError) as info:
        parse_store(payload, path)
    message = str(info.value)
    assert str(path) in message
    assert why in message
    assert SECRET not in message
    assert "SECRETSECRET" not in message


@pytest.mark.parametrize(
    "entry",
    [
        {"cookie": SECRET, "changed_at": "yesterday"},
        {"cookie": SECRET, "state": "cooling", "cooling_until": "soon", "changed_at": 5},
    ],
)
def test_parse_rejects_non_numeric_times(entry: dict[str, Any]) -> None:
    # BUG: parse_store accepts these; CredentialPool.adopt / merge later call float() on them and raise a
    # bare ValueError, which PoolKeeper.start passes on and create_app does not turn into a ConfigError.
    path = Path("/srv/data/credentials.json")
    with pytest.raises(StoreError) as info:
        parse_store(json.dumps({"credentials": [entry]}), path)
    assert str(path) in str(info.value)
    assert SECRET not in str(info.value)


# --- merge ------------------------------------------------------------------------------------


def test_merge_later_changed_at_wins_per_record() -> None:
    older = StoreData([record(A, 10.0, "invalid"), record(B, 30.0, "cooling")])
    newer = StoreData([record(A, 20.0, "active"), record(B, 25.0, "active")])
    merged = by_cookie(merge(older, newer))
    assert merged[A]["state"] == "active"  # newer side changed later
    assert merged[B]["state"] == "cooling"  # older side changed later


def test_merge_newer_wins_ties() -> None:
    merged = by_cookie(merge(StoreData([record(A, 10.0, "invalid")]), StoreData([record(A, 10.0, "active")])))
    assert merged[A]["state"] == "active"


def test_merge_keeps_records_from_both_sides() -> None:
    merged = merge(StoreData([record(A, 1.0)]), StoreData([record(B, 1.0)]))
    assert cookies_of(merged) == {A, B}
    assert len(merged.credentials) == 2


def test_merge_tombstone_drops_older_record_from_either_side() -> None:
    dropped_from_newer = merge(StoreData([], {credential_id(A): 50.0}), StoreData([record(A, 40.0)]))
    assert cookies_of(dropped_from_newer) == set()
    assert dropped_from_newer.removed == {credential_id(A): 50.0}
    dropped_from_older = merge(StoreData([record(A, 40.0)]), StoreData([], {credential_id(A): 50.0}))
    assert cookies_of(dropped_from_older) == set()


def test_merge_record_later_than_tombstone_survives() -> None:
    merged = merge(StoreData([], {credential_id(A): 50.0}), StoreData([record(A, 60.0)]))
    assert cookies_of(merged) == {A}
    assert merged.removed == {credential_id(A): 50.0}


def test_merge_keeps_the_latest_tombstone() -> None:
    merged = merge(StoreData([], {"x": 5.0, "y": 9.0}), StoreData([], {"x": 7.0, "y": 3.0, "z": 1.0}))
    assert merged.removed == {"x": 7.0, "y": 9.0, "z": 1.0}


records_st = st.lists(
    st.builds(
        record,
        st.sampled_from([A, B, C]),
        st.integers(0, 20).map(float),
        st.sampled_from(["active", "cooling", "invalid"]),
    ),
    max_size=6,
)
removed_st = st.dictionaries(
    st.sampled_from([credential_id(c) for c in (A, B, C)]), st.integers(0, 20).map(float)
)


@given(records_st, removed_st, records_st, removed_st)
def test_merge_properties(
    old_records: list[dict[str, Any]],
    old_removed: dict[str, float],
    new_records: list[dict[str, Any]],
    new_removed: dict[str, float],
) -> None:
    merged = merge(StoreData(old_records, old_removed), StoreData(new_records, new_removed))
    ids = [credential_id(r["cookie"]) for r in merged.credentials]
    assert len(ids) == len(set(ids))  # one record per cookie
    for id_ in set(old_removed) | set(new_removed):
        assert merged.removed[id_] == max(old_removed.get(id_, -1.0), new_removed.get(id_, -1.0))
    for cookie in (A, B, C):
        candidates = [r for r in [*old_records, *new_records] if r["cookie"] == cookie]
        latest = max((r["changed_at"] for r in candidates), default=None)
        tomb = merged.removed.get(credential_id(cookie))
        kept = by_cookie(merged).get(cookie)
        if latest is None or (tomb is not None and tomb >= latest):
            assert kept is None
        else:
            assert kept is not None
            assert kept["changed_at"] == latest
            # among the records at the latest time, the last one (newer side last) wins
            assert kept is [r for r in candidates if r["changed_at"] == latest][-1]


# --- CredentialStore --------------------------------------------------------------------------


def test_load_missing_file_is_none(tmp_path: Path) -> None:
    store = CredentialStore(tmp_path / "sub" / "creds.json")
    assert store.load() is None
    assert not store.changed()


def test_load_corrupt_file_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"credentials": [{"cookie": "' + SECRET + '", ')
    with pytest.raises(StoreError) as info:
        CredentialStore(path).load()
    assert str(path) in str(info.value)
    assert SECRET not in str(info.value)


def test_save_then_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    store = CredentialStore(path)
    written = store.save(StoreData([record(A, 1.0), record(B, 2.0, "invalid")], {"dead000000": 3.0}))
    assert by_cookie(written)[B]["state"] == "invalid"
    on_disk = json.loads(path.read_text())
    assert on_disk["version"] == 1
    loaded = CredentialStore(path).load()
    assert loaded is not None
    assert by_cookie(loaded) == by_cookie(written)
    assert loaded.removed == {"dead000000": 3.0}


def test_save_is_private_and_leaves_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    store = CredentialStore(path)
    for i in range(3):
        store.save(StoreData([record(A, float(i))]))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stray_files(tmp_path, path.name) == []


def test_save_merges_with_what_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    first, second = CredentialStore(path), CredentialStore(path)
    first.save(StoreData([record(A, 10.0, "invalid"), record(B, 10.0)]))
    # the second writer knows nothing of A, a newer state of B, and removed nothing
    written = second.save(StoreData([record(B, 20.0, "cooling"), record(C, 5.0)]))
    assert cookies_of(written) == {A, B, C}
    loaded = CredentialStore(path).load()
    assert loaded is not None
    states = {r["cookie"]: r["state"] for r in loaded.credentials}
    assert states == {A: "invalid", B: "cooling", C: "active"}


def test_save_keeps_tombstones_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    CredentialStore(path).save(StoreData([record(B, 1.0)], {credential_id(A): 100.0}))
    # a stale writer still holds A from before its removal
    written = CredentialStore(path).save(StoreData([record(A, 50.0), record(B, 1.0)]))
    assert cookies_of(written) == {B}
    assert written.removed == {credential_id(A): 100.0}


def test_save_replaces_a_file_broken_after_start(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    path.write_text("{ not json")
    written = CredentialStore(path).save(StoreData([record(A, 1.0)]))
    assert cookies_of(written) == {A}
    assert json.loads(path.read_text())["credentials"][0]["cookie"] == A


def test_failed_write_keeps_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "creds.json"
    store = CredentialStore(path)
    store.save(StoreData([record(A, 1.0)]))
    before = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        store.save(StoreData([record(B, 2.0)]))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert stray_files(tmp_path, path.name) == []


def test_changed_tracks_other_writers_only(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    mine, other = CredentialStore(path), CredentialStore(path)
    mine.save(StoreData([record(A, 1.0)]))
    assert not mine.changed()  # our own write
    other.save(StoreData([record(B, 2.0)]))
    assert mine.changed()
    assert not other.changed()
    mine.load()
    assert not mine.changed()  # seen now
    other.save(StoreData([record(C, 3.0)]))
    assert mine.changed()
    mine.save(StoreData([]))
    assert not mine.changed()


def test_changed_when_file_appears_or_vanishes(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    mine = CredentialStore(path)
    assert mine.load() is None
    CredentialStore(path).save(StoreData([record(A, 1.0)]))
    assert mine.changed()
    mine.load()
    path.unlink()
    assert mine.changed()


def test_pool_data_holds_snapshot_and_tombstones() -> None:
    pool = CredentialPool([A, B], wall_clock=lambda: 1234.0)
    pool.remove(credential_id(A))
    data = pool_data(pool)
    assert cookies_of(data) == {B}
    assert data.removed == {credential_id(A): 1234.0}
    data.removed.clear()
    assert pool.removed  # a copy, not the pool's own dict


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("proxy", "ftp://host:21", "use one of http"),
        ("user_agent", "two\nlines", "printable"),
        ("id", 5, "not text"),
    ],
)
def test_a_hand_edited_egress_that_cannot_work_stops_the_start(
    tmp_path: Path, field: str, value: object, words: str
) -> None:
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"version": 1, "credentials": [{"cookie": "a=1", field: value}]}))
    with pytest.raises(StoreError, match=words) as info:
        CredentialStore(path).load()
    assert "entry 0" in str(info.value)


# --- durability -------------------------------------------------------------------------------


def test_save_flushes_the_file_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "creds.json"
    store = CredentialStore(path)
    store.save(StoreData([record(A, 1.0)]))
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        mode = os.fstat(fd).st_mode
        events.append("fsync folder" if stat.S_ISDIR(mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str | Path) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store.save(StoreData([record(B, 2.0)]))
    assert events == ["fsync file", "rename", "fsync folder"]


def test_remove_leftovers_deletes_only_this_files_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    store = CredentialStore(path)
    store.save(StoreData([record(A, 1.0)]))
    ours = [tmp_path / ".creds.json.a1b2c3d4.tmp", tmp_path / ".creds.json.zzzzzzzz.tmp"]
    theirs = [tmp_path / name for name in (".creds.json2.a1b2c3d4.tmp", ".creds.json.a1b2.bak", "x.tmp")]
    for file in [*ours, *theirs]:
        file.write_text(json.dumps({"credentials": [{"cookie": SECRET}]}))
    assert store.remove_leftovers() == 2
    assert stray_files(tmp_path, path.name) == sorted(p.name for p in theirs)
    assert store.remove_leftovers() == 0
    assert CredentialStore(tmp_path / "missing" / "creds.json").remove_leftovers() == 0


def test_file_format_is_indented_json_and_huge_numbers_still_write(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    store = CredentialStore(path)
    store.save(StoreData([record(A, 1.5, note="é")], {"dead000000": 3.0}))
    text = path.read_text(encoding="utf-8")
    assert text.startswith('{\n  "version": 1,\n  "credentials": [\n')
    assert "é" in text  # UTF-8, not escaped
    # a hand edit put an integer orjson cannot write into a record: the save still works
    store.save(StoreData([record(A, 2.0, note=10**30)]))
    assert json.loads(path.read_text())["credentials"][0]["note"] == 10**30


@pytest.mark.parametrize("value", ["NaN", "Infinity", "1e308", "-1"])
@pytest.mark.parametrize("field", ["changed_at", "cooling_until", "session_expires_at"])
def test_times_a_date_cannot_say_stop_the_start(tmp_path: Path, field: str, value: str) -> None:
    path = tmp_path / "creds.json"
    path.write_text('{"version": 1, "credentials": [{"cookie": "a=1", "' + field + '": ' + value + "}]}")
    with pytest.raises(StoreError, match=field):
        CredentialStore(path).load()
